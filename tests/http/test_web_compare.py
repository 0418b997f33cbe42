"""The side-by-side comparison pages (#13 item 4) in a real headless Chromium (Debian's
package) against a live uvicorn server: search -> record page -> Compare, the probe supplied
again once retention no longer keeps it, and the 1:1 verify page.

The screenshot test-artifacts/screenshots/13-compare.png is the comparison page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import lfw_image
from conftest_api import PW, entries, live_server, seed
from faceledger.core import SearchRequest
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from webkit import (
    Site,
    browser_fixture,  # noqa: F401 (the browser fixture)
    open_as,
    shot,
    wait_until,
)

CHIPS_LOADED = (
    "['chip-a', 'chip-b', 'full-a', 'full-b'].every(id => {"
    " const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })"
    " && !document.getElementById('full-box-b').hidden"
)


@pytest.fixture(scope="module")
def site(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    fl = seed(lfw, tmp_path_factory.mktemp("web-compare"), analyzer)
    root = fl.login("root", PW)
    fl.save_policy(root, fl.policy().with_value("daily_quota", "0"))
    app = create_app(fl.data_dir, faceledger=fl, settings=ApiSettings(search_rate_per_minute=0))
    with live_server(app) as url:
        yield Site(fl, url, lfw)


def set_retention(site: Site, days: int) -> None:
    root = site.fl.login("root", PW)
    site.fl.save_policy(root, site.fl.policy().with_value("retain_probes_days", str(days)))


def chip_boxes(page: Any) -> list[dict[str, float]]:
    boxes = [page.locator(f"#chip-frame-{s}").bounding_box() for s in "ab"]
    assert all(boxes)
    return boxes


def test_search_record_compare_zoom_and_landmarks(browser: Any, site: Site) -> None:
    """#13 item 4: search -> record page -> Compare: both aligned chips visible at the same
    size, the landmark toggle draws five points on each, zoom scales both together, both
    full images with their boxes below, the score line and the leads notice."""
    set_retention(site, 30)
    try:
        page = open_as(browser, site, "ivy")
        photo = lfw_image(site.lfw, "Adrien_Brody", 2).read_bytes()
        page.set_input_files(
            "#probe", files=[{"name": "probe.jpg", "mimeType": "image/jpeg", "buffer": photo}]
        )
        page.locator("#boxes .box").first.click()
        page.get_by_label("Case number").fill("CASE-77")
        page.get_by_label("Purpose").select_option("violent-crime")
        page.get_by_label("Justification").fill("Suspect in the bank robbery of 3 March")
        page.get_by_role("button", name="Search this face").click()
        card = page.locator("#candidates .candidate").first
        card.wait_for()
        sid = entries(site.fl, "search", "ivy")[-1].details["search_id"]
        assert page.url.endswith(f"/searches/{sid}")

        card.get_by_role("link", name="Compare").click()
        page.wait_for_url(f"**/searches/{sid}/compare/*")
        page.locator("#compare").wait_for(state="visible")
        wait_until(page, CHIPS_LOADED)
        assert "not identifications" in page.locator("#leads-notice").inner_text()
        a, b = chip_boxes(page)
        assert a["width"] == b["width"] == a["height"] == b["height"] == 300  # 150 px at 2x
        assert abs(a["y"] - b["y"]) < 1 and b["x"] > a["x"] + a["width"]  # side by side
        score = page.locator("#score-line").inner_text()
        assert "Score" in score and "Est. false match rate" in score
        assert "Expected false candidates" in score and "4 faces" in score
        for side in "ab":  # the full images, each with its face boxed inside it
            img = page.locator(f"#full-{side}").bounding_box()
            box = page.locator(f"#full-box-{side}").bounding_box()
            assert img and box and box["width"] > 10
            assert img["x"] <= box["x"] and box["x"] + box["width"] <= img["x"] + img["width"] + 2

        marks = page.locator("#marks-a circle")
        assert marks.count() == 5 and page.locator("#marks-b circle").count() == 5
        assert not page.locator("#marks-a").is_visible()
        page.get_by_label("Show landmarks").check()
        assert page.locator("#marks-a").is_visible() and page.locator("#marks-b").is_visible()
        for side in "ab":  # each point on its chip
            frame = page.locator(f"#chip-frame-{side}").bounding_box()
            for i in range(5):
                dot = page.locator(f"#marks-{side} circle").nth(i).bounding_box()
                assert dot and frame
                assert frame["x"] < dot["x"] < frame["x"] + frame["width"]
                assert frame["y"] < dot["y"] < frame["y"] + frame["height"]
        shot(page, "13-compare")

        page.get_by_role("button", name="zoom in").click()
        a, b = chip_boxes(page)
        assert a["width"] == b["width"] == 375
        page.locator("#zoom").fill("4")
        a, b = chip_boxes(page)
        assert a["width"] == b["width"] == a["height"] == 600
        assert page.locator("#zoom-value").inner_text() == "4×"
        page.get_by_role("button", name="zoom out").click()
        assert chip_boxes(page)[1]["width"] == 525
        page.get_by_label("Show landmarks").uncheck()
        assert not page.locator("#marks-b").is_visible()

        compare = entries(site.fl, "candidate.compare", "ivy")[-1]
        assert compare.details["search_id"] == sid and compare.details["probe"] == "kept"
        page.context.close()
    finally:
        set_retention(site, 0)


def test_compare_asks_for_the_probe_once_it_is_not_kept(browser: Any, site: Site) -> None:
    """#13 item 4: where retention no longer keeps the probe, the page asks for the photo
    searched; another photo is refused, the very photo shows the comparison."""
    fl = site.fl
    photo = lfw_image(site.lfw, "Al_Gore", 2).read_bytes()
    result = fl.search(
        fl.login("ivy", PW),
        photo,
        SearchRequest("CASE-78", "violent-crime", "CCTV still of the robbery", top_k=2),
    )
    sid, fid = result["search_id"], result["faces"][0]["candidates"][0]["face_id"]
    page = open_as(browser, site, "ivy")
    page.goto(f"/searches/{sid}/compare/{fid}")
    assert page.locator("#probe-form").is_visible()
    assert not page.locator("#compare").is_visible()
    wrong = lfw_image(site.lfw, "Al_Gore", 3).read_bytes()
    page.set_input_files(
        "#probe", files=[{"name": "p.jpg", "mimeType": "image/jpeg", "buffer": wrong}]
    )
    page.get_by_role("button", name="Compare", exact=True).click()
    wait_until(page, "document.getElementById('compare-status').classList.contains('error')")
    assert "not the photo" in page.locator("#compare-status").inner_text()
    assert not page.locator("#compare").is_visible()
    page.set_input_files(
        "#probe", files=[{"name": "p.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    page.get_by_role("button", name="Compare", exact=True).click()
    page.locator("#compare").wait_for(state="visible")
    wait_until(page, CHIPS_LOADED)
    a, b = chip_boxes(page)
    assert a["width"] == b["width"] > 0
    assert "not kept" in page.locator("#full-caption-a").inner_text()
    assert entries(fl, "candidate.compare", "ivy")[-1].details["probe"] == "supplied"
    page.context.close()


def test_verify_page_shows_the_two_faces_side_by_side(browser: Any, site: Site) -> None:
    """#13 item 4: the 1:1 verify gets the same page: two photos and the case fields, then
    both faces side by side with the score."""
    page = open_as(browser, site, "ivy")
    page.get_by_role("link", name="Verify").click()
    page.wait_for_url("**/verify")
    a = lfw_image(site.lfw, "Al_Gore", 2).read_bytes()
    b = lfw_image(site.lfw, "Al_Gore", 3).read_bytes()
    page.get_by_role("button", name="Compare the two faces").click()
    assert page.locator("#photo_a").get_attribute("aria-invalid") == "true"  # nothing chosen
    page.set_input_files(
        "#photo_a", files=[{"name": "a.jpg", "mimeType": "image/jpeg", "buffer": a}]
    )
    page.set_input_files(
        "#photo_b", files=[{"name": "b.jpg", "mimeType": "image/jpeg", "buffer": b}]
    )
    page.get_by_label("Case number").fill("CASE-79")
    page.get_by_label("Purpose").select_option("violent-crime")
    page.get_by_label("Justification").fill("Is the man in both CCTV stills the same")
    page.get_by_role("button", name="Compare the two faces").click()
    page.locator("#compare").wait_for(state="visible")
    wait_until(page, CHIPS_LOADED)
    ca, cb = chip_boxes(page)
    assert ca["width"] == cb["width"] == 300 and abs(ca["y"] - cb["y"]) < 1
    score = page.locator("#score-line").inner_text()
    vid = entries(site.fl, "verify", "ivy")[-1].details["verify_id"]
    assert "Score" in score and f"verification {vid}" in score
    assert f"Verification {vid} recorded" in page.locator("#verify-status").inner_text()
    page.get_by_label("Show landmarks").check()
    assert page.locator("#marks-b circle").count() == 5
    page.get_by_role("button", name="zoom in").click()
    assert chip_boxes(page)[0]["width"] == chip_boxes(page)[1]["width"] == 375
    shot(page, "13-verify")
    page.context.close()
