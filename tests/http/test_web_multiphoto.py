"""Several photos of one person in the web UI (#14 item 2), in a real headless Chromium
(Debian's package) against a live uvicorn server: the search page takes two photos at once,
finds the faces in each, the user picks Al Gore's face in the photo that also shows Adrien
Brody, states that the photos show the same person, searches, and lands on the record page,
which lists both photos and the faces fused.

Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import lfw_image, side_by_side
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


@pytest.fixture(scope="module")
def site(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    fl = seed(lfw, tmp_path_factory.mktemp("web-multiphoto"), analyzer)
    app = create_app(fl.data_dir, faceledger=fl, settings=ApiSettings(search_rate_per_minute=0))
    with live_server(app) as url:
        yield Site(fl, url, lfw)


def test_pick_the_face_in_each_photo_and_search_them_as_one_person(
    browser: Any, site: Site
) -> None:
    """#14 item 2: two photos dropped at once; the one with one face has it picked, the one
    with several waits for a pick; the search stays disabled until every photo has a face
    and the user states that the photos show the same person; the record page lists both
    photos (SHA-256) and the faces fused, Al Gore is candidate 1, and the ledger entry lists
    both photos."""
    alone = lfw_image(site.lfw, "Al_Gore", 2).read_bytes()
    pair = side_by_side([lfw_image(site.lfw, "Adrien_Brody", 2), lfw_image(site.lfw, "Al_Gore", 3)])
    page = open_as(browser, site, "ivy")
    page.goto("/search")
    files = [
        {"name": "still-1.jpg", "mimeType": "image/jpeg", "buffer": alone},
        {"name": "still-2.jpg", "mimeType": "image/jpeg", "buffer": pair},
    ]
    page.set_input_files("#probe", files=files)
    wait_until(page, "document.getElementById('detect-status').textContent.includes('same person')")
    assert page.locator("#photos .photo-item").count() == 2
    assert page.get_by_label("Photo 1, face 1").is_checked()  # its only face
    options = page.locator("#photo-2 .face-option")
    assert options.count() >= 2
    button = page.get_by_role("button", name="Search 2 photos as one person")
    assert button.is_disabled()
    assert "photo 2" in page.locator("#picked").inner_text()

    # Al Gore is on the right: the face whose box starts furthest right (faces are numbered
    # left to right)
    page.locator("#photo-2 .face-option").last.click()
    assert button.is_disabled()  # not yet stated to be one person
    page.get_by_label("These photos show the same person").check()
    assert button.is_enabled()
    page.get_by_label("Case number").fill("CASE-14P")
    page.get_by_label("Purpose").select_option("violent-crime")
    page.get_by_label("Justification").fill("two stills of the suspect from the station")
    shot(page, "14-2-multi-photo-picker")
    button.click()
    page.wait_for_url(re.compile(r".*/searches/\d+$"))

    described = page.locator("#probe-photos").inner_text()
    assert "2 photos" in described and "2 faces fused" in described
    for data in (alone, pair):
        assert hashlib.sha256(data).hexdigest() in described
    first = page.locator("#candidates .candidate").first
    assert "Al_Gore" in first.locator(".prov").inner_text()
    shot(page, "14-2-multi-photo-record")
    sid = int(page.url.rsplit("/", 1)[1])
    entry = entries(site.fl, "search")[-1]
    assert entry.details["search_id"] == sid
    assert [p["sha256"] for p in entry.details["photos"]] == [
        hashlib.sha256(d).hexdigest() for d in (alone, pair)
    ]
    page.context.close()
