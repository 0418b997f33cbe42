"""The lead report and the disclosure export over HTTP and in the browser (#13 items 7 and
8): the API's report (PDF, HTML) and export routes, and in a real headless Chromium (Debian's
package) against a live uvicorn server: the report page styled under its own content
policy, its navigation gone on paper, the PDF and the export downloaded and the export
verified offline.

Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest_api import entries, live_server, own_token
from conftest_cases import WorkedCase, worked_case
from faceledger.cases import export
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from webkit import (
    SHOTS,
    browser_fixture,  # noqa: F401 (the browser fixture)
    open_as,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


@dataclass
class Site:
    wc: WorkedCase
    url: str
    client: Any


@pytest.fixture(scope="module")
def site(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    wc = worked_case(lfw, tmp_path_factory.mktemp("web-case-files"), analyzer)
    app = create_app(wc.fl.data_dir, faceledger=wc.fl, settings=NO_LIMITS)
    with TestClient(app) as client, live_server(app) as url:
        yield Site(wc, url, client)
    wc.fl.close()


def bearer(site: Site, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {own_token(site.wc.fl, user)[1]}"}


def test_the_api_serves_the_report_and_the_export(site: Site) -> None:
    """#13 items 7-8: GET /api/v1/cases/{case}/report?format=pdf|html[&search_id=] and
    GET /api/v1/cases/{case}/export, for those who may read the case file."""
    wc, client = site.wc, site.client
    h = bearer(site, "ivy")
    base = f"/api/v1/cases/{wc.case}"
    r = client.get(f"{base}/report", headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    assert r.headers["content-disposition"].startswith("attachment;")
    r = client.get(f"{base}/report?format=html&search_id={wc.lead_search}", headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]  # none at all
    assert "not identifications" in r.text and f"search {wc.lead_search}" in r.text
    assert entries(wc.fl, "case.report", "ivy")[-1].details["format"] == "html"

    r = client.get(f"{base}/export", headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    anchor = r.headers["x-faceledger-export-entry"]
    e = entries(wc.fl, "case.export", "ivy")[-1]
    assert anchor == f"{e.seq}:{e.hash}"
    assert export.verify(r.content, anchor).anchored

    r = client.get(f"{base}/export", headers=bearer(site, "ian"))  # another unit
    assert r.status_code == 404 and r.json()["code"] == "no-such-case"
    r = client.get(f"{base}/report?search_id=9999", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "no-such-search"
    r = client.get(f"{base}/report?format=docx", headers=h)
    assert r.status_code == 422
    spec = client.get("/openapi.json").json()["paths"]
    assert (
        "application/pdf"
        in spec["/api/v1/cases/{case_number}/report"]["get"]["responses"]["200"]["content"]
    )
    assert "/api/v1/cases/{case_number}/export" in spec


def test_report_page_prints_without_navigation_and_downloads(
    browser: Any, site: Site, tmp_path: Path
) -> None:
    """#13 item 7: in Chromium the report page is styled (its own styles pass its content
    policy), shows the pictures, has a navigation bar on screen that print media hides, and
    its "Download as PDF" link downloads the PDF."""
    wc = site.wc
    page = open_as(browser, site, "ivy")
    page.goto(f"/api/v1/cases/{wc.case}/report?format=html")
    statement = page.locator("#leads-statement")
    assert "not identifications" in statement.inner_text()
    assert statement.evaluate("n => getComputedStyle(n).borderTopStyle") == "solid"
    nav = page.locator("nav.report-nav")
    assert nav.is_visible()
    loaded = page.evaluate(
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert loaded >= 2
    page.screenshot(path=str(SHOTS / "13-report-html.png"), full_page=False)
    page.emulate_media(media="print")
    assert not nav.is_visible()
    assert statement.is_visible()
    page.emulate_media(media="screen")

    with page.expect_download() as info:
        page.get_by_role("link", name="Download as PDF").click()
    path = tmp_path / "report.pdf"
    info.value.save_as(path)
    assert path.read_bytes().startswith(b"%PDF-")
    assert info.value.suggested_filename == f"lead-report-{wc.case}.pdf"
    # and from the case file's button
    page.goto(f"/cases/{wc.case}")
    with page.expect_download() as info:
        page.locator("#report-pdf").click()
    info.value.save_as(path)
    assert path.read_bytes().startswith(b"%PDF-")
    page.context.close()


def test_export_downloads_in_the_browser_and_verifies(
    browser: Any, site: Site, tmp_path: Path
) -> None:
    """#13 item 8: the auditor downloads the case's export in the browser; it verifies
    offline against its ledger entry."""
    wc = site.wc
    page = open_as(browser, site, "ada")
    page.goto(f"/cases/{wc.case}")
    with page.expect_download() as info:
        page.locator("#case-export").click()
    path = tmp_path / "case.zip"
    info.value.save_as(path)
    e = entries(wc.fl, "case.export", "ada")[-1]
    assert info.value.suggested_filename == f"case-{wc.case}-export-{e.seq}.zip"
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zf:
        assert "export-entry.json" in zf.namelist()
    assert export.verify(path, f"{e.seq}:{e.hash}").anchored
    page.context.close()
