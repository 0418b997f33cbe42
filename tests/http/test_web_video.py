"""Video probes in the web UI (#14 item 3), in a real headless Chromium (Debian's package)
against a live uvicorn server: the search page takes a clip (made from LFW photos with PyAV:
Al Gore and Adrien Brody panned across the frames), the first search answers with one
thumbnail per person (track), the user picks one, and the search's record page names the
video, the track and the frames used. A clip of one person is searched at once.

Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conftest import lfw_image, need_module
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

need_module("av", "pip install av (a faceledger dependency)")
from videoclips import clip  # noqa: E402  (needs av)

GORE, BRODY = ("Al_Gore", 3), ("Adrien_Brody", 4)  # the gallery holds their photos _0001


@pytest.fixture(scope="module")
def site(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    fl = seed(lfw, tmp_path_factory.mktemp("web-video"), analyzer)
    app = create_app(fl.data_dir, faceledger=fl, settings=ApiSettings(search_rate_per_minute=0))
    with live_server(app) as url:
        yield Site(fl, url, lfw)


def fill_case(page: Any) -> None:
    page.get_by_label("Case number").fill("CASE-14")
    page.get_by_label("Purpose").select_option("violent-crime")
    page.get_by_label("Justification").fill("CCTV clip from the robbery at the station")


def test_pick_a_person_in_a_clip_by_thumbnail_and_search_them(browser: Any, site: Site) -> None:
    """#14 item 3: a clip of two people (sent with a photo's name: the bytes decide) is
    searched; the page shows one thumbnail per person instead of results, the user picks
    person 2, searches, and lands on the record page: Adrien Brody is candidate 1 and the
    record names the video, the track and the frames used; the ledger lists the tracks
    (search.video_tracks) and the search with the track."""
    data = clip([lfw_image(site.lfw, *GORE), lfw_image(site.lfw, *BRODY)], seconds=3, fps=10)
    page = open_as(browser, site, "ivy")
    page.goto("/search")
    upload = {"name": "cctv.bin", "mimeType": "application/octet-stream", "buffer": data}
    page.set_input_files("#probe", files=[upload])
    wait_until(page, "document.getElementById('detect-status').textContent.includes('Video clip')")
    assert page.locator("#probe-video").is_visible()
    fill_case(page)
    page.get_by_role("button", name="Search this clip").click()
    wait_until(page, "!document.getElementById('tracks-fieldset').hidden")
    options = page.locator("#tracks .face-option")
    assert options.count() == 2
    assert "2 people" in page.locator("#search-status").inner_text()
    search_btn = page.get_by_role("button", name="Search this person")
    assert search_btn.is_disabled()  # nobody picked yet
    for n in (1, 2):  # each thumbnail is the JPEG the server cut, decoded by the browser
        thumb = page.get_by_role("img", name=re.compile(f"^Person {n}: the best face"))
        assert thumb.evaluate("img => img.complete && img.naturalWidth > 40")
    assert len(entries(site.fl, "search")) == 0  # nothing compared yet
    assert entries(site.fl, "search.video_tracks")[-1].details["tracks"][1]["track"] == 2
    shot(page, "14-3-video-track-picker")

    page.get_by_label(re.compile("^Person 2")).check()
    assert page.locator("#picked").inner_text() == "Person 2 picked."
    page.get_by_role("button", name="Search person 2").click()
    page.wait_for_url(re.compile(r".*/searches/\d+$"))
    described = page.locator("#video-probe").inner_text()
    assert "person (track) 2 of 2" in described and "fused into the probe" in described
    first = page.locator("#candidates .candidate").first
    assert "Adrien_Brody" in first.locator(".prov").inner_text()
    shot(page, "14-3-video-record")
    sid = int(page.url.rsplit("/", 1)[1])
    entry = entries(site.fl, "search")[-1]
    assert entry.details["search_id"] == sid and entry.details["track"] == 2
    page.context.close()


def test_a_clip_of_one_person_is_searched_at_once(browser: Any, site: Site) -> None:
    """#14 item 3: with one person in the clip there is nothing to pick: the search lands
    on the record page with the person as candidate 1 and track 1 of 1."""
    data = clip([lfw_image(site.lfw, *GORE)], seconds=2, fps=10)
    page = open_as(browser, site, "ivy")
    page.goto("/search")
    page.set_input_files(
        "#probe", files=[{"name": "gore.mp4", "mimeType": "video/mp4", "buffer": data}]
    )
    wait_until(page, "document.getElementById('detect-status').textContent.includes('Video clip')")
    fill_case(page)
    page.get_by_role("button", name="Search this clip").click()
    page.wait_for_url(re.compile(r".*/searches/\d+$"))
    assert "person (track) 1 of 1" in page.locator("#video-probe").inner_text()
    first = page.locator("#candidates .candidate").first
    assert "Al_Gore" in first.locator(".prov").inner_text()
    page.context.close()
