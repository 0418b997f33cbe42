"""The lead report (#13 item 7): per case or per search, as PDF (WeasyPrint) and HTML, from
the core and the CLI. The PDF's text is read back with poppler's ``pdftotext`` and its first
page rendered with ``pdftoppm`` (saved as test-artifacts/screenshots/13-report-page1.png).

Real LFW photos, a real SQLite data dir, the real core and CLI."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import need
from conftest_api import PW, entries
from conftest_cases import WorkedCase, worked_case
from faceledger.accounts.auth import PermissionDenied
from faceledger.cli import app as cli_app
from faceledger.errors import RefusedError

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def wc(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkedCase]:
    case = worked_case(lfw, tmp_path_factory.mktemp("report"), analyzer)
    yield case
    case.fl.close()


def poppler(tool: str) -> str:
    path = shutil.which(tool)
    need(path, f"{tool} not found: apt-get install poppler-utils")
    assert path is not None
    return path


def pdf_text(pdf: bytes, tmp: Path) -> str:
    (tmp / "r.pdf").write_bytes(pdf)
    return subprocess.run(
        [poppler("pdftotext"), "-layout", str(tmp / "r.pdf"), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def squeeze(text: str) -> str:
    """The text without white space: hashes wrapped over lines read as one."""
    return "".join(text.split())


def entry_ref(wc: WorkedCase, action: str, **details: Any) -> str:
    e = next(
        e for e in entries(wc.fl, action) if all(e.details.get(k) == v for k, v in details.items())
    )
    return f"{e.seq}:{e.hash}"


def test_the_pdf_report_states_the_leads_notice_and_what_is_behind_each_lead(
    wc: WorkedCase, tmp_path: Path
) -> None:
    """#13 item 7: the PDF says at the top that the results are leads, not identifications
    and not probable cause; the lead shows its score and the ledger entries (seq:hash) of
    its search, approval and both reviews; NOT-leads are labelled as such; it says when, by
    whom and at which ledger head it was made; its first page is rendered to PNG."""
    fl = wc.fl
    ivy = fl.login("ivy", PW)
    pdf = fl.case_report(ivy, wc.case, "pdf")
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf, tmp_path)
    flat = " ".join(text.split())
    first_page = " ".join(text.split("\f")[0].split())
    assert "investigative leads, not identifications" in first_page
    assert "not probable cause for an arrest" in first_page
    assert "line-up" in first_page

    rec = fl.get_search(ivy, wc.lead_search)
    lead = next(c for c in rec["shown"]["faces"][0]["candidates"] if c["face_id"] == wc.lead_face)
    assert f"{lead['score']:.4f}" in flat
    for ref in (
        entry_ref(wc, "search", search_id=wc.lead_search),
        entry_ref(wc, "case.approve", request_id=wc.request_id),
        entry_ref(wc, "candidate.review", search_id=wc.lead_search, face_id=wc.lead_face),
    ):
        assert ref in squeeze(text), ref
    # both examiners' reasons
    assert "same hairline, nose and brow" in flat and "ear shape and eyebrows agree" in flat
    assert "NOT A LEAD (awaiting-second)" in flat and "NOT A LEAD (disagreement)" in flat

    made = entries(fl, "case.report", "ivy")[-1]
    head_seq, head_hash = made.details["ledger_head"].split(":")
    assert re.search(rf"Made .* by ivy at ledger head: entry {head_seq}, hash", flat)
    assert head_hash in squeeze(text)
    assert made.details["sha256"] == hashlib.sha256(pdf).hexdigest()
    assert made.details["format"] == "pdf" and made.target == wc.case

    SHOTS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            poppler("pdftoppm"),
            "-png",
            "-r",
            "80",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(tmp_path / "r.pdf"),
            str(SHOTS / "13-report-page1"),
        ],
        check=True,
    )
    png = (SHOTS / "13-report-page1.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_on_paper_the_report_has_no_navigation(wc: WorkedCase, tmp_path: Path) -> None:
    """#13 item 7: the HTML has a print stylesheet: its navigation bar (back to the case,
    download) is in the page but not on paper (WeasyPrint prints with it)."""
    ivy = wc.fl.login("ivy", PW)
    html = wc.fl.case_report(ivy, wc.case, "html").decode()
    assert "@media print" in html and re.search(r"@media print \{\s*nav,", html)
    assert '<nav class="report-nav"' in html and "Print with your browser" in html
    assert "data:image/jpeg;base64," in html  # pictures inside the page
    text = " ".join(pdf_text(wc.fl.case_report(ivy, wc.case, "pdf"), tmp_path).split())
    assert "Print with your browser" not in text and "Download as PDF" not in text
    assert "Lead report: case" in text


def test_pictures_follow_the_search_rules(wc: WorkedCase) -> None:
    """#13 item 7: the probe face is shown where retention keeps the probe, else the report
    says it is not kept; the candidate crops come through the search."""
    ivy = wc.fl.login("ivy", PW)
    html = wc.fl.case_report(ivy, wc.case, "html").decode()
    lead = re.search(
        rf'<article class="lead" data-status="lead" data-search="{wc.lead_search}"'
        rf' data-face="{wc.lead_face}">(.*?)</article>',
        html,
        re.S,
    )
    assert lead, "the lead's section"
    assert lead.group(1).count("data:image/jpeg;base64,") == 2  # probe face and candidate
    quiet = re.search(
        rf'data-search="{wc.quiet_search}" data-face="{wc.quiet_awaiting_face}">(.*?)</article>',
        html,
        re.S,
    )
    assert quiet, "the possible lead of the search whose probe is not kept"
    assert "Probe photo not kept (retention policy)" in quiet.group(1)
    assert quiet.group(1).count("data:image/jpeg;base64,") == 1  # the candidate only


def test_a_report_of_one_search(wc: WorkedCase) -> None:
    """#13 item 7: --search limits the report to one search of the case; a search of
    another case is refused."""
    ivy = wc.fl.login("ivy", PW)
    html = wc.fl.case_report(ivy, wc.case, "html", wc.quiet_search).decode()
    assert f"Lead report: case {wc.case}, search {wc.quiet_search}" in html
    assert f'data-search="{wc.lead_search}"' not in html
    assert f'data-search="{wc.quiet_search}"' in html
    with pytest.raises(RefusedError) as err:
        wc.fl.case_report(ivy, wc.case, "html", 9999)
    assert err.value.code == "no-such-search"
    assert entries(wc.fl, "case.report", "ivy")[-1].details["search_id"] == wc.quiet_search


def test_who_may_make_a_report(wc: WorkedCase) -> None:
    """#13 item 7: the report follows the case file's visibility: an investigator of another
    unit sees no such case, an admin may not read case files, the unit's supervisor and the
    auditor may."""
    fl = wc.fl
    with pytest.raises(RefusedError) as err:
        fl.case_report(fl.login("ian", PW), wc.case, "html")
    assert err.value.code == "no-such-case"
    with pytest.raises(PermissionDenied):
        fl.case_report(fl.login("root", PW), wc.case, "html")
    for user in ("sam", "ada"):
        html = fl.case_report(fl.login(user, PW), wc.case, "html").decode()
        assert f'data-face="{wc.lead_face}"' in html and f"by {user} at ledger head" in html
    with pytest.raises(RefusedError) as err:
        fl.case_report(fl.login("ivy", PW), wc.case, "docx")
    assert err.value.code == "bad-format"


def test_the_cli_writes_the_report(wc: WorkedCase, tmp_path: Path, monkeypatch: Any) -> None:
    """#13 item 7: `faceledger cases report CASE --format pdf|html --out FILE [--search ID]`."""
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    runner = CliRunner()
    base = ["--data-dir", str(wc.fl.data_dir), "--as", "ivy"]
    out = tmp_path / "report.pdf"
    r = runner.invoke(cli_app, ["cases", "report", wc.case, "--out", str(out), *base])
    assert r.exit_code == 0, r.output
    assert out.read_bytes().startswith(b"%PDF-")
    assert hashlib.sha256(out.read_bytes()).hexdigest() in " ".join(r.output.split())
    html = tmp_path / "one.html"
    r = runner.invoke(
        cli_app,
        [
            *("cases", "report", wc.case, "--format", "html", "--out", str(html)),
            *("--search", str(wc.lead_search), *base),
        ],
    )
    assert r.exit_code == 0, r.output
    assert f"search {wc.lead_search}" in html.read_text()
    r = runner.invoke(
        cli_app, ["cases", "report", "NO-SUCH-CASE", "--out", str(tmp_path / "x"), *base]
    )
    assert r.exit_code == 4 and "no-such-case" in r.output
    assert not (tmp_path / "x").exists()


def test_making_a_pdf_leaves_truncated_photos_refused(wc: WorkedCase, lfw: Path) -> None:
    """#13 item 7: WeasyPrint turns on Pillow's process-wide LOAD_TRUNCATED_IMAGES when it
    is imported; after a PDF report a half-written photo must still be refused, as a probe
    and at ingest, not padded out with grey."""
    from conftest import lfw_image
    from faceledger.vision.decode import DecodeError, decode_image

    fl = wc.fl
    fl.case_report(fl.login("ivy", PW), wc.case, "pdf")
    data = lfw_image(lfw, "Al_Gore", 2).read_bytes()
    with pytest.raises(DecodeError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.reason == "corrupt-image"
