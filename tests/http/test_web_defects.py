"""The UI defects found in the walk-through, fixed (#13 item 9), in a real headless Chromium
(Debian's package) against a live uvicorn server, and the API and CLI sides of the same:
results in view after a redirect, a user-name pattern Chromium accepts, messages in the
web's language that mark the field at fault, a code of its own for a too-short
justification, whole faces on a phone, and the cases table's decider and pending count.

Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import lfw_image
from conftest_api import PW, entries, live_server, own_token, seed
from faceledger.cli import app as cli_app
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from webkit import (
    Site,
    browser_fixture,  # noqa: F401 (the browser fixture)
    open_as,
    shot,
)

CASE = {"case_number": "CASE-13", "purpose": "violent-crime"}


@pytest.fixture(scope="module")
def site(lfw: Path, analyzer, tmp_path_factory) -> Any:
    fl = seed(lfw, tmp_path_factory.mktemp("web-defects"), analyzer)
    app = create_app(fl.data_dir, faceledger=fl, settings=ApiSettings(search_rate_per_minute=0))
    with live_server(app) as url:
        yield Site(fl, url, lfw)


def in_view(page: Any, selector: str) -> bool:
    """Whether the element is wholly inside the window as it is now (no scrolling)."""
    return bool(
        page.evaluate(
            """(sel) => {
                const node = document.querySelector(sel);
                if (!node) return false;
                const r = node.getBoundingClientRect();
                return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight
                    && r.left >= 0 && r.right <= window.innerWidth;
            }""",
            selector,
        )
    )


def photo(site: Site, name: str = "Aaron_Peirsol", n: int = 2) -> dict[str, Any]:
    data = lfw_image(site.lfw, name, n).read_bytes()
    return {"name": "p.jpg", "mimeType": "image/jpeg", "buffer": data}


# -- a) results where the user is -------------------------------------------------------------


def test_admin_results_appear_in_the_section_the_redirect_shows(browser: Any, site: Site) -> None:
    """#13 item 9 (a): after adding a user, a refused user and revoking a token on the
    admin page, the message is inside the section the redirect scrolls to, in view
    without scrolling (it used to be at the top of the page, ~1,000 px above)."""
    page = open_as(browser, site, "root", height=720)
    page.goto("/admin")
    page.get_by_label("User name", exact=True).fill("nora")
    page.get_by_label("Password", exact=True).fill("a long enough password")
    page.get_by_role("button", name="Add user").click()
    page.wait_for_load_state()
    assert page.url.endswith("/admin#users")
    ok = page.locator("#users .flash-ok")
    assert "User nora added." in ok.inner_text()
    assert page.evaluate("window.scrollY") > 0  # the page did scroll to the section
    assert in_view(page, "#users .flash-ok")
    shot(page, "13-admin-user-added", full=False)

    # a refusal: back at the form, the message next to the field at fault, the input kept
    page.get_by_label("User name", exact=True).fill("ivy")
    page.get_by_label("Password", exact=True).fill("a long enough password")
    page.get_by_label("Unit", exact=True).fill("north")
    page.get_by_role("button", name="Add user").click()
    page.wait_for_load_state()
    assert page.url.endswith("/admin#add-user")
    name = page.locator("#new-username")
    assert name.get_attribute("aria-invalid") == "true"
    assert name.input_value() == "ivy" and page.locator("#new-unit").input_value() == "north"
    error = page.locator("#add-user-error")
    assert "already exists" in error.inner_text() and "(user-exists)" in error.inner_text()
    assert "add-user-error" in (name.get_attribute("aria-describedby") or "").split()
    assert page.locator("#new-password").get_attribute("aria-invalid") is None
    assert in_view(page, "#add-user-error") and in_view(page, "#new-username")
    shot(page, "13-admin-user-refused", full=False)

    # a too-short password: the password field is the one marked
    page.get_by_label("User name", exact=True).fill("olga")
    page.locator("#new-password").evaluate("(i) => i.removeAttribute('minlength')")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_role("button", name="Add user").click()
    page.wait_for_load_state()
    assert page.locator("#new-password").get_attribute("aria-invalid") == "true"
    assert page.locator("#new-username").get_attribute("aria-invalid") is None
    assert "at least 10 characters" in page.locator("#add-user-error").inner_text()

    # a token revoked from the admin page's token list: the message is in that section
    tid, _secret = own_token(site.fl, "root", "to-revoke")
    page.goto("/admin?tokens_for=root#tokens")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=f"Revoke token {tid}", exact=True).click()
    page.wait_for_load_state()
    assert f"Token {tid} revoked." in page.locator("#tokens .flash-ok").inner_text()
    assert in_view(page, "#tokens .flash-ok")
    page.context.close()


def test_once_shown_token_appears_in_the_tokens_section(browser: Any, site: Site) -> None:
    """#13 item 9 (a): the once-shown API token is shown in the tokens section, in view
    after the redirect, and it works."""
    page = open_as(browser, site, "ada", height=600)
    page.goto("/account")
    page.get_by_label("Name", exact=True).fill("report-tool")
    page.get_by_role("button", name="Create token").click()
    page.wait_for_load_state()
    assert page.url.endswith("/account#tokens")
    secret = page.locator("#tokens .flash-secret code")
    assert secret.inner_text().startswith("flt_")
    assert in_view(page, "#tokens .flash-secret")
    assert site.fl.authenticate_token(secret.inner_text()).username == "ada"
    shot(page, "13-token-shown-once", full=False)
    page.context.close()


# -- b) the user-name pattern -----------------------------------------------------------------


def test_user_name_pattern_compiles_under_the_v_flag(browser: Any, site: Site) -> None:
    """#13 item 9 (b): Chromium compiles `pattern` with the `v` flag; the user-name field's
    pattern is valid there (no console error), so the browser checks names: a name with a
    space, a slash or a symbol is flagged, names the server accepts (letters of any script,
    digits, '.', '-', '_') are not."""
    page = open_as(browser, site, "root")
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if "attern" in m.text else None)
    page.goto("/admin")
    check = """([value]) => {
        const i = document.getElementById('new-username');
        i.value = value;
        return i.validity.patternMismatch;
    }"""
    for bad in ("bad name", "a/b", "x$y", "semi;colon", "[x]"):
        assert page.evaluate(check, [bad]) is True, bad
    for good in ("ivy", "nora.k-1", "o_b", "Zoë", "Łukasz", "иван"):
        assert page.evaluate(check, [good]) is False, good
    page.evaluate("document.getElementById('new-username').value = 'ivy'")
    assert page.evaluate("document.getElementById('new-username').checkValidity()") is True
    assert not problems, problems
    page.context.close()


# -- d, e) messages in the web's language, the field at fault -----------------------------------


def test_search_form_marks_a_too_short_justification(browser: Any, site: Site) -> None:
    """#13 item 9 (d, e): a justification the server finds too short is refused with its
    own code; the search form marks the justification (aria-invalid, the message next to
    it) and the message names no command-line option."""
    page = open_as(browser, site, "ivy")
    page.goto("/search")
    page.set_input_files("#probe", files=[photo(site)])
    page.locator("#boxes .box").first.wait_for()
    page.get_by_label("Case number").fill(CASE["case_number"])
    page.get_by_label("Purpose").select_option(CASE["purpose"])
    page.get_by_label("Justification").fill("too short")
    page.get_by_role("button", name="Search this face").click()
    error = page.locator("#case-error")
    error.wait_for()
    text = error.inner_text()
    assert "justification-too-short" in text and "at least 10 characters" in text
    assert "--" not in text
    just = page.locator("#justification")
    assert just.get_attribute("aria-invalid") == "true"
    assert "case-error" in (just.get_attribute("aria-describedby") or "").split()
    assert page.locator("#case_number").get_attribute("aria-invalid") is None
    assert page.evaluate("document.activeElement.id") == "justification"
    shot(page, "13-search-justification-too-short", full=False)
    refused = entries(site.fl, "search.refused", "ivy")[-1]
    assert refused.details["reason"] == "justification-too-short"

    # fixed: the mark goes (the search itself is not this test's business)
    just.fill("Suspect seen on the platform camera")
    page.get_by_label("Case number").fill("")
    page.get_by_role("button", name="Search this face").click()
    assert page.locator("#case_number").get_attribute("aria-invalid") == "true"
    assert page.locator("#justification").get_attribute("aria-invalid") is None
    page.context.close()


def test_api_and_cli_name_the_fields_at_fault(site: Site, tmp_path: Path) -> None:
    """#13 item 9 (d, e): over the API a too-short justification is
    `justification-too-short` (400) with `fields: ["justification"]`; missing fields stay
    `missing-case-fields` and name each field; no message names a command-line option.
    The CLI points at its own options instead."""
    _tid, token = own_token(site.fl, "ivy", "fields")
    auth = {"Authorization": f"Bearer {token}"}
    probe = lfw_image(site.lfw, "Aaron_Peirsol", 2).read_bytes()

    def search(**form: str) -> httpx.Response:
        return httpx.post(
            f"{site.url}/api/v1/searches",
            headers=auth,
            data=CASE | form,
            files={"probe": ("p.jpg", probe, "image/jpeg")},
            timeout=60,
        )

    n = len(entries(site.fl, "search"))
    r = search(justification="short")
    body = r.json()
    assert r.status_code == 400 and body["code"] == "justification-too-short", body
    assert body["fields"] == ["justification"]
    assert "at least 10 characters" in body["message"] and "(this one has 5)" in body["message"]
    r = search(case_number="", justification="short")
    body = r.json()
    assert r.status_code == 400 and body["code"] == "missing-case-fields"
    assert body["fields"] == ["case_number", "justification"]
    assert "--" not in body["message"] and "case number" in body["message"]
    r = search(justification="   ")
    assert r.json()["code"] == "missing-case-fields" and r.json()["fields"] == ["justification"]
    assert len(entries(site.fl, "search")) == n  # nothing was compared
    # the error body's schema documents the fields, and the examples show the new code
    schema = httpx.get(f"{site.url}/openapi.json").json()["components"]["schemas"]["ErrorOut"]
    assert "fields" in schema["properties"]
    assert "justification-too-short" in str(schema.get("examples"))

    runner = CliRunner()
    result = runner.invoke(
        cli_app,
        [
            "cases",
            "request",
            "--case",
            "CASE-14",
            "--purpose",
            "violent-crime",
            "--justification",
            "short",
            "--data-dir",
            str(site.fl.data_dir),
            "--as",
            "ivy",
        ],
        env={"FACELEDGER_PASSWORD": PW},
    )
    assert result.exit_code != 0
    assert "justification-too-short" in result.output and "[--justification]" in result.output


# -- f) whole faces on a phone ----------------------------------------------------------------

WHOLE = """(img) => {
    const r = img.getBoundingClientRect();
    const fit = getComputedStyle(img).objectFit;
    const boxRatio = r.width / r.height;
    const natural = img.naturalWidth / img.naturalHeight;
    return {
        left: r.left, right: r.right, width: r.width, height: r.height, inner: window.innerWidth,
        fit, kept: fit === "contain" || fit === "scale-down" || Math.abs(boxRatio - natural) < 0.02,
        loaded: img.complete && img.naturalWidth > 0,
    };
}"""


def _check_whole(page: Any, selector: str) -> int:
    crops = page.locator(selector)
    crops.first.wait_for()
    n = crops.count()
    for i in range(n):
        crops.nth(i).scroll_into_view_if_needed()
        for _ in range(100):
            info = crops.nth(i).evaluate(WHOLE)
            if info["loaded"]:
                break
            page.wait_for_timeout(100)
        assert info["loaded"], info
        assert info["width"] > 40 and info["height"] > 40, info
        assert info["left"] >= 0 and info["right"] <= info["inner"], info  # not cut at the edge
        assert info["kept"], info  # shown whole: not cropped to fill a box of another shape
    return n


def test_phone_layout_shows_whole_faces(browser: Any, site: Site) -> None:
    """#13 item 9 (f): at 390x844 the face crops of search results and of an erasure
    preview are inside the screen's width and keep their aspect ratio (object-fit:
    contain, never cover), so no face is cut off."""
    page = open_as(browser, site, "ivy", width=390, height=844)
    page.goto("/search")
    page.set_input_files("#probe", files=[photo(site)])
    page.locator("#boxes .box").first.wait_for()
    page.get_by_label("Case number").fill(CASE["case_number"])
    page.get_by_label("Purpose").select_option(CASE["purpose"])
    page.get_by_label("Justification").fill("Suspect seen on the platform camera")
    page.get_by_role("button", name="Search this face").click()
    # the candidates above chance level (those at chance level are collapsed apart, #13 item 6)
    assert _check_whole(page, "#candidates img.crop") >= 1
    shot(page, "13-phone-search-results")
    page.context.close()

    page = open_as(browser, site, "root", width=390, height=844)
    page.goto("/admin#erase")
    page.set_input_files("#e-probe", files=[photo(site)])
    page.get_by_label("Score threshold").fill("-1")
    page.get_by_role("button", name="Preview the matching faces").click()
    page.wait_for_load_state()
    assert "/admin/erasures/previews/" in page.url
    assert _check_whole(page, "img.crop") >= 2
    shot(page, "13-phone-erase-preview")
    page.context.close()


# -- h) the cases table -------------------------------------------------------------------------


def test_cases_table_shows_who_decided_and_how_many_are_pending(browser: Any, site: Site) -> None:
    """#13 item 9 (h): the cases table names who approved or denied each request (and who
    withdrew an approval), and says how many requests are pending; the API lists the
    decider's name too."""
    fl = site.fl
    ivy, sam = fl.login("ivy", PW), fl.login("sam", PW)
    approved = fl.request_case(ivy, "CASE-H1", "identity-fraud", "passport photo mismatch")
    denied = fl.request_case(ivy, "CASE-H2", "identity-fraud", "passport photo mismatch")
    fl.request_case(ivy, "CASE-H3", "identity-fraud", "passport photo mismatch")
    fl.decide_case(sam, approved, True, "grounds documented")
    fl.decide_case(sam, denied, False, "not enough grounds")
    pending = len(fl.list_case_requests(sam, "pending"))

    page = open_as(browser, site, "sam")
    page.goto("/cases")
    assert page.locator("#pending-count").inner_text().strip() == str(pending)
    assert f"{pending} pending" in page.locator("#requests-summary").inner_text()
    headers = page.locator("#all-title ~ .table-wrap thead th").all_inner_texts()
    assert any(h.strip().lower() == "decided by" for h in headers), headers
    for case in ("CASE-H1", "CASE-H2"):
        row = page.locator("table tbody tr", has=page.locator(f"td:text-is('{case}')"))
        assert row.locator(".decided-by").inner_text().strip() == "sam"
    waiting = page.locator("table tbody tr", has=page.locator("td:text-is('CASE-H3')"))
    assert "awaiting" in waiting.locator(".decided-by").inner_text()
    shot(page, "13-cases-table")
    page.context.close()

    _tid, token = own_token(fl, "sam", "cases")
    rows = httpx.get(
        f"{site.url}/api/v1/cases", headers={"Authorization": f"Bearer {token}"}
    ).json()
    by_id = {r["id"]: r for r in rows}
    assert by_id[approved]["decided_by_name"] == "sam"
    assert by_id[denied]["decided_by_name"] == "sam"
