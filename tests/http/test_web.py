"""The web UI in a real headless Chromium (Debian's package) against a live uvicorn server.

Screenshots of the main pages go to test-artifacts/screenshots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import lfw_image, side_by_side
from conftest_api import PW, entries, live_server, seed
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
def site(lfw: Path, analyzer, tmp_path_factory) -> Any:
    fl = seed(lfw, tmp_path_factory.mktemp("web"), analyzer)
    app = create_app(fl.data_dir, faceledger=fl, settings=ApiSettings(search_rate_per_minute=0))
    with live_server(app) as url:
        yield Site(fl, url, lfw)


def test_login_page(browser: Any, site: Site) -> None:
    page = browser.new_page(base_url=site.url)
    page.goto("/login")
    assert page.get_by_label("User name").is_visible()
    shot(page, "01-login")
    page.get_by_label("User name").fill("ivy")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    assert "wrong user name or password" in page.locator("#login-error").inner_text().lower()
    page.close()


def test_search_a_group_photo_pick_the_second_face_and_open_a_candidate(
    browser: Any, site: Site
) -> None:
    page = open_as(browser, site, "ivy")
    assert page.url.endswith("/search")
    assert "not identifications" in page.locator("#leads-notice").inner_text()
    group = side_by_side(
        [lfw_image(site.lfw, "Al_Gore", 2), lfw_image(site.lfw, "Adrien_Brody", 2)]
    )
    page.set_input_files(
        "#probe", files=[{"name": "group.jpg", "mimeType": "image/jpeg", "buffer": group}]
    )
    boxes = page.locator("#boxes .box")
    boxes.nth(1).wait_for()
    assert boxes.count() >= 2
    assert "faces found" in page.locator("#detect-status").inner_text()
    # keyboard: a face box is a button
    boxes.nth(0).focus()
    page.keyboard.press("Enter")
    assert boxes.nth(0).get_attribute("aria-pressed") == "true"
    # the second face from the left
    boxes.nth(1).click()
    assert boxes.nth(1).get_attribute("aria-pressed") == "true"
    assert boxes.nth(0).get_attribute("aria-pressed") == "false"
    assert page.locator("#face-1").is_checked()
    shot(page, "02-search-faces")

    page.get_by_label("Case number").fill("CASE-42")
    page.get_by_label("Purpose").select_option("violent-crime")
    page.get_by_label("Justification").fill("Suspect in the bank robbery of 3 March")
    page.get_by_role("button", name="Search this face").click()
    cards = page.locator("#candidates .candidate")
    cards.first.wait_for()
    assert "Adrien_Brody" in cards.first.locator(".prov").inner_text()
    first = cards.first.inner_text()
    assert "Est. false match rate" in first and "Expected false candidates" in first
    assert "Candidates for face 2" in page.locator("#results-title").inner_text()
    crops = "[...document.querySelectorAll('#candidates img')]"
    wait_until(page, f"{crops}.every(i => i.complete && i.naturalWidth > 0)")
    shot(page, "03-search-results")

    cards.first.get_by_role("button", name="Open").click()
    dialog = page.locator("#candidate-dialog")
    dialog.wait_for(state="visible")
    page.locator("#dialog-box").wait_for(state="visible")  # drawn once the image loaded
    box = page.locator("#dialog-box").bounding_box()
    img = page.locator("#dialog-img").bounding_box()
    assert box and img and box["width"] > 20
    assert img["x"] <= box["x"] and box["x"] + box["width"] <= img["x"] + img["width"] + 2
    assert "test fixture" in page.locator("#dialog-details").inner_text()  # legal basis
    shot(page, "04-candidate", full=False)
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")

    # #13 item 1: the results are the search's record page, so refresh and Back work
    sid = entries(site.fl, "search", "ivy")[-1].details["search_id"]
    assert page.url.endswith(f"/searches/{sid}")
    page.reload()
    assert "Adrien_Brody" in page.locator("#candidates .candidate").first.inner_text()
    assert "face 2 of" in page.locator(".kv").first.inner_text()  # the face picked
    page.go_back()
    page.wait_for_url("**/search")
    page.go_forward()
    page.wait_for_url(f"**/searches/{sid}")
    page.locator("#candidates .candidate").first.wait_for()
    page.goto("/searches")
    assert f"#{sid}" in page.locator("table.searches").inner_text()
    page.get_by_role("link", name=f"#{sid}").click()
    page.wait_for_url(f"**/searches/{sid}")

    search = entries(site.fl, "search", "ivy")[-1]
    assert search.target == "CASE-42"
    assert search.details["probe_region"]  # the picked face's region, in the one entry
    assert entries(site.fl, "image.view", "ivy")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    shot(page, "05-search-phone")
    page.context.close()


def test_supervisor_approves_a_request(browser: Any, site: Site) -> None:
    ivy = open_as(browser, site, "ivy")
    ivy.goto("/cases")
    ivy.get_by_label("Case number").fill("FRAUD-7")
    ivy.get_by_label("Purpose").select_option("identity-fraud")
    ivy.get_by_label("Justification").fill("Passport photo does not match the applicant")
    ivy.get_by_role("button", name="Send request").click()
    assert "pending a supervisor" in ivy.locator(".flash-ok").inner_text()
    ivy.context.close()

    sam = open_as(browser, site, "sam")
    assert sam.url.endswith("/cases")
    assert "FRAUD-7" in sam.locator(".approvals").inner_text()
    shot(sam, "06-approvals")
    rid = next(r["id"] for r in site.fl.list_case_requests(site.fl.login("sam", PW), "pending"))
    sam.get_by_label("Note").first.fill("grounds documented")
    sam.get_by_role("button", name=f"Approve #{rid}").click()
    assert f"Request {rid} approved" in sam.locator(".flash-ok").inner_text()
    assert "Nothing waits for your decision" in sam.content()
    sam.context.close()
    assert entries(site.fl, "case.approve", "sam")[-1].details["request_id"] == rid

    # ivy searches under the approved request: picking it fills in case and purpose
    ivy = open_as(browser, site, "ivy")
    ivy.get_by_label("Approved request").select_option(str(rid))
    assert ivy.get_by_label("Case number").input_value() == "FRAUD-7"
    assert ivy.get_by_label("Purpose").input_value() == "identity-fraud"
    photo = lfw_image(site.lfw, "Aaron_Peirsol", 2).read_bytes()
    ivy.set_input_files(
        "#probe", files=[{"name": "p.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    ivy.locator("#boxes .box").first.wait_for()
    assert ivy.locator("#boxes .box").first.get_attribute("aria-pressed") == "true"  # the only one
    ivy.get_by_label("Justification").fill("Passport photo does not match the applicant")
    ivy.get_by_role("button", name="Search this face").click()
    ivy.locator("#candidates .candidate").first.wait_for()
    assert "Aaron_Peirsol" in ivy.locator("#candidates .candidate .prov").first.inner_text()
    search = entries(site.fl, "search", "ivy")[-1]
    assert search.details["request_id"] == rid and search.details["purpose"] == "identity-fraud"
    ivy.context.close()


def test_auditor_verifies_the_ledger_and_builds_a_report(browser: Any, site: Site) -> None:
    page = open_as(browser, site, "ada")
    assert page.url.endswith("/audit")
    page.get_by_role("button", name="Verify ledger").click()
    ok = page.locator(".flash-ok").inner_text()
    assert "Ledger verified" in ok and "intact" in ok
    page.get_by_role("button", name="Build report").click()
    chart = page.get_by_role("img", name="Bar chart: searches per week by purpose", exact=False)
    chart.wait_for()
    assert page.evaluate("document.querySelector('.chart').naturalWidth") > 300
    page.get_by_label("Action").fill("search")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.ledger tbody tr")
    assert rows.count() >= 1 and "search" in rows.first.inner_text()
    rows.first.get_by_role("link").click()  # the recorded search
    assert page.get_by_role("heading", name="Search").first.inner_text().startswith("Search ")
    assert entries(site.fl, "search")[-1].target in page.locator("main").inner_text()
    assert entries(site.fl, "search.view", "ada")
    page.goto("/audit?report=1")
    shot(page, "07-audit")
    assert entries(site.fl, "audit.verify", "ada")[-1].details["ok"] is True
    page.context.close()


def test_investigator_is_refused_the_admin_page(browser: Any, site: Site) -> None:
    page = open_as(browser, site, "ivy")
    assert page.get_by_role("link", name="Admin").count() == 0  # not offered
    before = len(entries(site.fl, "authz.denied", "ivy"))
    response = page.goto("/admin")
    assert response.status == 403
    assert "may not manage users" in page.locator("main").inner_text()
    assert len(entries(site.fl, "authz.denied", "ivy")) == before + 1
    shot(page, "08-admin-refused")
    page.context.close()


def test_admin_ingests_uploads_with_progress_and_creates_a_token(browser: Any, site: Site) -> None:
    page = open_as(browser, site, "root")
    assert page.url.endswith("/admin")
    page.goto("/")
    assert page.get_by_role("heading", name="Overview").is_visible()
    shot(page, "00-overview")
    page.goto("/admin")
    page.get_by_label("Source name").fill("press-archive")
    page.get_by_label("Legal basis").fill("press archive licence 17/2019")
    photos = [
        {
            "name": f"{n}.jpg",
            "mimeType": "image/jpeg",
            "buffer": lfw_image(site.lfw, n, 1).read_bytes(),
        }
        for n in ("Colin_Powell", "George_W_Bush")
    ]
    page.get_by_label("Photos or zip/tar archives").set_input_files(photos)
    page.get_by_role("button", name="Start ingest").click()
    assert "queued" in page.locator(".flash-ok").inner_text()
    job = page.locator(".job").first
    job.locator('[data-field="status"]', has_text="done").wait_for(timeout=60_000)
    assert "2 new" in job.inner_text()
    assert page.get_by_label("For").count() == 0  # no tokens for other users (#11 item 2)
    shot(page, "09-admin")
    page.goto("/account")
    page.get_by_label("Name", exact=True).fill("case-tool")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator(".flash-secret code").inner_text()
    assert secret.startswith("flt_")
    assert site.fl.authenticate_token(secret).username == "root"
    page.context.close()
