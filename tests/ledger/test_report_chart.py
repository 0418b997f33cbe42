"""The transparency report's chart and its "made" line (#13 item 9): empty weeks stay in as
zeros, the legend is beside the bars (never over them), and the report says when, by whom
and at which ledger head (entry and hash) it was made."""

from __future__ import annotations

import base64
import io
import re
from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from faceledger.core import Faceledger
from faceledger.ledger import audit, reports

PW = "correct horse battery"
# searches in ISO weeks 2026-W02 and 2026-W05: W03 and W04 have none
SEARCH_TIMES = [
    ("2026-01-06T09:00:00+00:00", "violent-crime"),
    ("2026-01-07T10:00:00+00:00", "missing-person"),
    ("2026-01-27T11:00:00+00:00", "violent-crime"),
    ("2026-01-28T12:00:00+00:00", "violent-crime"),
]


@pytest.fixture
def fl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Faceledger:
    """A ledger holding four search entries written at the times above (the clock is the
    only thing set; the entries are chained and hashed as any other)."""
    f = Faceledger(tmp_path / "data")
    root = f.init_admin("root", PW)
    f.add_user(root, "ada", PW, "auditor")
    for ts, purpose in SEARCH_TIMES:
        monkeypatch.setattr(audit, "now_iso", lambda ts=ts: ts)
        with f.store.writer.begin() as conn:
            audit.append(conn, "root", "search", "C-1", {"case_number": "C-1", "purpose": purpose})
    monkeypatch.undo()
    assert f.audit_verify(f.login("ada", PW)).ok
    return f


def test_report_keeps_the_empty_weeks_as_zeros(fl: Faceledger) -> None:
    """#13 item 9: the weeks without searches between the first and the last are in the
    report (as zero), not skipped; a short period shows all its weeks."""
    ada = fl.login("ada", PW)
    rep = fl.audit_report(ada, date(2026, 1, 5), date(2026, 2, 1))
    assert list(rep["searches_per_week"]) == ["2026-W02", "2026-W03", "2026-W04", "2026-W05"]
    assert rep["searches_per_week"]["2026-W03"] == {}
    assert rep["searches_per_week"]["2026-W04"] == {}
    assert rep["searches_per_week"]["2026-W02"] == {"violent-crime": 1, "missing-person": 1}
    assert rep["searches_per_week"]["2026-W05"] == {"violent-crime": 2}
    # the period's own weeks, searched or not
    month = fl.audit_report(ada, date(2025, 12, 22), date(2026, 2, 15))
    assert list(month["searches_per_week"])[:3] == ["2025-W52", "2026-W01", "2026-W02"]
    assert list(month["searches_per_week"])[-1] == "2026-W07"
    assert len(month["searches_per_week"]) == 8
    # a period of years: from the first search's week to the last's, none skipped
    years = fl.audit_report(ada, date(2020, 1, 1), date(2026, 12, 31))
    assert list(years["searches_per_week"]) == list(rep["searches_per_week"])


@pytest.mark.nodb
def test_weeks_between_crosses_the_iso_year() -> None:
    """#13 item 9: week 53 and the turn of the ISO year are not skipped."""
    weeks = reports.weeks_between(date(2020, 12, 20), date(2021, 1, 12))
    assert weeks == ["2020-W51", "2020-W52", "2020-W53", "2021-W01", "2021-W02"]


def test_chart_has_a_bar_slot_per_week_and_its_legend_beside_the_bars(fl: Faceledger) -> None:
    """#13 item 9: the chart has a place for every week (zero weeks included, labelled),
    its legend does not overlap the plotting area (so no bar is under it), and it names
    when, by whom and at which ledger head the report was made."""
    import matplotlib.pyplot as plt

    ada = fl.login("ada", PW)
    rep = fl.audit_report(ada, date(2026, 1, 5), date(2026, 2, 1))
    fig = reports.chart_figure(rep)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["2026-W02", "2026-W03", "2026-W04", "2026-W05"]
        legend = ax.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == ["missing-person", "violent-crime"]
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        box, plot = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert not box.overlaps(plot), (box, plot)
        for bar in ax.patches:  # and no bar lies under the legend
            assert not box.overlaps(bar.get_window_extent(renderer))
        fig_box = fig.bbox
        assert box.x1 <= fig_box.x1 and box.y1 <= fig_box.y1  # the legend is on the image
        made = fig._supxlabel.get_text()  # type: ignore[attr-defined]
        seq, digest = rep["ledger_head"].split(":")
        assert f"entry {seq}, hash {digest}" in made and "by ada" in made
        assert rep["generated_at"][:10] in made
    finally:
        plt.close(fig)


def test_html_report_says_when_by_whom_and_at_which_head(fl: Faceledger) -> None:
    """#13 item 9: the HTML report names the time (UTC), the user and the ledger head as
    entry and hash; its chart is a whole PNG."""
    ada = fl.login("ada", PW)
    rep = fl.audit_report(ada, date(2026, 1, 5), date(2026, 2, 1))
    page = reports.to_html(rep)
    seq, digest = rep["ledger_head"].split(":")
    assert audit.head(fl.store)[0] >= int(seq)
    made = re.search(r"<p class=made>(.*?)</p>", page)
    assert made is not None
    text = re.sub(r"<[^>]+>", "", made.group(1))
    when = rep["generated_at"][:19].replace("T", " ")
    assert text == f"Made {when} UTC by ada at ledger head: entry {seq}, hash {digest}."
    assert text == reports.made_line(rep) + "."
    png = re.search(r"src='data:image/png;base64,([^']+)'", page)
    assert png is not None
    image = Image.open(io.BytesIO(base64.b64decode(png.group(1))))
    assert image.size == (900, 400)
    assert reports.ledger_head_of(page) == rep["ledger_head"]
