"""A face the detector missed, marked by hand in the web UI (#13 item 5), in a real headless
Chromium (Debian's package) against a live uvicorn server: the search page says no face was
found, the user draws a box on the probe (mouse drag, or a finger on a touch screen, or the
box typed in pixels), searches, and the search's record page says "face marked by hand".

Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import TURNED_FACE_BOX, turned_face
from conftest_api import entries, live_server, seed
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from webkit import (
    Site,
    browser_fixture,  # noqa: F401 (the browser fixture)
    open_as,
    shot,
    wait_until,
)

HAND_BOX = TURNED_FACE_BOX


@pytest.fixture(scope="module")
def site(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    fl = seed(lfw, tmp_path_factory.mktemp("web-handbox"), analyzer)
    app = create_app(fl.data_dir, faceledger=fl, settings=ApiSettings(search_rate_per_minute=0))
    with live_server(app) as url:
        yield Site(fl, url, lfw)


def load_photo_with_no_face_found(page: Any, site: Site) -> bytes:
    photo = turned_face(site.lfw)
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    assert site.fl.searcher().analyzer.detector.detect(pixels) == []  # the detector misses it
    page.set_input_files(
        "#probe", files=[{"name": "turned.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    wait_until(page, "document.getElementById('detect-status').textContent.includes('No face')")
    assert page.locator("#boxes .box").count() == 0
    assert "draw a box around it" in page.locator("#detect-status").inner_text()
    assert page.get_by_role("button", name="Search this face").is_disabled()
    return photo


def on_screen(page: Any, x: float, y: float) -> tuple[float, float]:
    """Where photo pixel (x, y) of the 500 x 500 probe is on the screen."""
    r = page.locator("#probe-img").bounding_box()
    return r["x"] + x / 500 * r["width"], r["y"] + y / 500 * r["height"]


def face_box(page: Any) -> list[int]:
    return [int(v) for v in page.locator("#face_box").input_value().split(",")]


def test_draw_a_box_where_no_face_was_found_and_search_it(browser: Any, site: Site) -> None:
    """#13 item 5: the page says no face was found; the user drags a box around the face on
    the probe, searches, and lands on the record page, which says "face marked by hand"
    (also after a refresh) with the person as candidate 1; the ledger entry says so."""
    page = open_as(browser, site, "ivy")
    load_photo_with_no_face_found(page, site)
    shot(page, "13-5-no-face-found")

    page.mouse.move(*on_screen(page, HAND_BOX[0], HAND_BOX[1]))
    page.mouse.down()
    page.mouse.move(*on_screen(page, HAND_BOX[2], HAND_BOX[3]), steps=8)
    page.mouse.up()
    assert page.locator("#hand-box").is_visible()
    drawn = face_box(page)
    assert all(abs(a - b) <= 3 for a, b in zip(drawn, HAND_BOX, strict=True)), drawn
    assert "marked by hand" in page.locator("#picked").inner_text()
    # the typed fallback shows the same box
    assert page.locator("#hand-left").input_value() == str(drawn[0])
    shot(page, "13-5-face-marked-by-hand")

    page.get_by_label("Case number").fill("CASE-55")
    page.get_by_label("Purpose").select_option("violent-crime")
    page.get_by_label("Justification").fill("CCTV still, the suspect's head is turned")
    page.get_by_role("button", name="Search this face").click()
    page.wait_for_url(re.compile(r".*/searches/\d+$"))
    for _ in range(2):  # the record page, and again after a refresh
        assert "face marked by hand" in page.locator("#marked-by-hand").inner_text()
        heading = page.locator("#results-title").inner_text()
        assert "face marked by hand" in heading
        cards = page.locator("#candidates .candidate")
        assert "Adrien_Brody" in cards.first.locator(".prov").inner_text()
        page.reload()
    shot(page, "13-5-record-face-marked-by-hand")
    sid = int(page.url.rsplit("/", 1)[1])
    entry = entries(site.fl, "search")[-1]
    assert entry.details["search_id"] == sid and entry.details["marked_by_hand"] is True
    page.context.close()


def test_mark_a_face_by_typing_its_box_or_with_a_finger(browser: Any, site: Site) -> None:
    """#13 item 5: without a mouse: the box typed in pixels (keyboard only; a box under
    20 px a side is refused on the page), and drawn with a finger on a 390 px touch
    screen."""
    page = open_as(browser, site, "ivy", 390, 844, has_touch=True, is_mobile=True)
    load_photo_with_no_face_found(page, site)

    page.locator("#hand-details summary").focus()
    page.keyboard.press("Enter")  # opens the details
    for field, value in zip(("left", "top", "right", "bottom"), (10, 10, 25, 25), strict=True):
        page.locator(f"#hand-{field}").fill(str(value))
    page.locator("#hand-use").focus()
    page.keyboard.press("Enter")
    assert "at least 20 pixels" in page.locator("#detect-status").inner_text()
    assert page.locator("#hand-left").get_attribute("aria-invalid") == "true"
    assert page.get_by_role("button", name="Search this face").is_disabled()
    for field, value in zip(("left", "top", "right", "bottom"), HAND_BOX, strict=True):
        page.locator(f"#hand-{field}").fill(str(value))
    page.locator("#hand-use").focus()
    page.keyboard.press("Enter")
    assert face_box(page) == HAND_BOX
    assert page.locator("#hand-box").is_visible()
    assert page.get_by_role("button", name="Search this face").is_enabled()

    # a finger: real touch events through the DevTools protocol
    page.locator("#probe-img").scroll_into_view_if_needed()
    cdp = page.context.new_cdp_session(page)
    start, end = on_screen(page, 100, 120), on_screen(page, 300, 330)

    def touch(kind: str, points: list[tuple[float, float]]) -> None:
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": kind, "touchPoints": [{"x": x, "y": y} for x, y in points]},
        )

    touch("touchStart", [start])
    for k in range(1, 9):
        touch(
            "touchMove",
            [(start[0] + (end[0] - start[0]) * k / 8, start[1] + (end[1] - start[1]) * k / 8)],
        )
    touch("touchEnd", [])
    wait_until(page, "document.getElementById('face_box').value.startsWith('10')")
    drawn = face_box(page)
    assert all(abs(a - b) <= 4 for a, b in zip(drawn, [100, 120, 300, 330], strict=True)), drawn
    assert "marked by hand" in page.locator("#picked").inner_text()
    shot(page, "13-5-mobile-face-marked-by-hand")
    page.context.close()
