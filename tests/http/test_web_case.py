"""The case workflow in a real headless Chromium against a live uvicorn server (#13 items
2, 3 and 6): two investigators review a candidate (the second blind), chance-level
candidates sit apart, and the case file shows who did what.

Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import lfw_image
from conftest_api import PW, live_server, seed
from faceledger.core import SearchRequest
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from webkit import (
    Site,
    browser_fixture,  # noqa: F401 (the browser fixture)
    open_as,
    shot,
)

CASE = "CR/2026/114"  # a case number with slashes, as many forces write them


@pytest.fixture(scope="module")
def site(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    fl = seed(lfw, tmp_path_factory.mktemp("webcase"), analyzer)
    root = fl.login("root", PW)
    fl.add_user(root, "ivo", PW, "investigator", "north")
    fl.save_policy(root, fl.policy().with_value("daily_quota", "0"))
    app = create_app(fl.data_dir, faceledger=fl, settings=ApiSettings(search_rate_per_minute=0))
    with live_server(app) as url:
        yield Site(fl, url, lfw)


def test_two_investigators_review_a_candidate(browser: Any, site: Site) -> None:
    """#13 items 3 and 6 in the browser: ivy marks the top candidate a possible lead; the
    chance-level candidates are apart and collapsed; ivo finds it in Reviews, sees no first
    decision, records his own; the candidate becomes a lead; the supervisor's case file
    shows the lead and the ledger entries."""
    fl = site.fl
    photo = lfw_image(site.lfw, "Al_Gore", 2).read_bytes()
    req = SearchRequest(CASE, "violent-crime", "CCTV still from the robbery", top_k=4)
    sid = fl.search(fl.login("ivy", PW), photo, req)["search_id"]

    page = open_as(browser, site, "ivy")
    page.goto(f"/searches/{sid}")
    top = page.locator("#candidates .candidate").first
    assert top.locator(".badge").inner_text() == "unreviewed"
    # the subjects beside the faces (#14 item 1): here every face is a subject of one
    subjects = page.locator("#subjects-0 tbody tr")
    assert subjects.count() >= 1 and "unlabelled face" in subjects.first.inner_text()
    chance = page.locator("details.chance")
    assert chance.count() == 1 and chance.get_attribute("open") is None
    assert "chance matches are expected" in chance.locator(".chance-note").text_content()
    assert not chance.locator(".candidate").first.is_visible()  # collapsed
    chance.locator("summary").click()
    assert chance.locator(".candidate").first.is_visible()
    assert chance.locator(".review-form").count() >= 1  # they can still be reviewed

    top.get_by_label("Possible lead").check()
    top.get_by_label("Reason").fill("Same scar over the left eyebrow and ear shape")
    top.get_by_role("button", name="Record decision").click()
    page.wait_for_load_state()
    top = page.locator("#candidates .candidate").first
    assert top.locator(".badge").inner_text() == "awaiting second"
    assert "Same scar over the left eyebrow" in top.locator(".review").inner_text()
    assert "Decision recorded" in top.locator(".review").inner_text()
    assert top.locator(".review-form").count() == 0  # never the second examiner too
    shot(page, "13-review-first")
    page.context.close()

    page = open_as(browser, site, "ivo")
    page.get_by_role("link", name="Reviews").click()
    page.wait_for_load_state()
    page.get_by_role("link", name=f"#{sid}").click()
    page.wait_for_load_state()
    top = page.locator("#candidates .candidate").first
    review = top.locator(".review")
    assert "Blind second examination" in review.inner_text()
    assert "scar" not in page.content()  # the first decision and reason are not on the page
    top.get_by_label("Possible lead").check()
    top.get_by_label("Reason").fill("Hairline and nose bridge agree")
    top.get_by_role("button", name="Record decision").click()
    page.wait_for_load_state()
    top = page.locator("#candidates .candidate").first
    assert top.locator(".badge").inner_text() == "lead"
    text = top.locator(".review").inner_text()
    assert "First examiner" in text and "ivy" in text and "Hairline" in text
    page.context.close()

    page = open_as(browser, site, "sam")
    page.goto("/cases")
    page.get_by_label("Case to open").fill(CASE)
    page.get_by_role("button", name="Open the case file").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == f"Case {CASE}"
    reviewed = page.locator("#reviewed tbody tr")
    assert reviewed.count() == 1 and "lead" in reviewed.first.inner_text()
    timeline = page.locator("#timeline").inner_text()
    assert "candidate.review" in timeline and "search" in timeline
    page.get_by_label("Add a note").fill("Lead passed to DC Smith; not probable cause")
    page.get_by_role("button", name="Add note").click()
    page.wait_for_load_state()
    assert "Lead passed to DC Smith" in page.locator("#notes").inner_text()
    shot(page, "13-case-file")
    page.context.close()
