"""Transparency reports from the ledger: who searched, for what, under which case.

The ledger is the record, so reports are computed from it alone: searches per user, per
purpose and per case; approvals and denials; refusals (quota, missing case fields, not
approved); erasures and purges. Formats: JSON, CSV (one section per table) and a
self-contained HTML page with a chart of searches per ISO week by purpose.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections import Counter, defaultdict
from datetime import date, datetime
from typing import Any

from faceledger import audit
from faceledger.store import Store


def _week(ts: str) -> str:
    y, w, _ = datetime.fromisoformat(ts).isocalendar()
    return f"{y}-W{w:02d}"


def build(
    store: Store, start: date, end: date, unit_users: set[str] | None = None
) -> dict[str, Any]:
    """Report over [start, end] inclusive; ``unit_users`` restricts to a supervisor's unit."""
    since = start.isoformat()
    # the day after ``end``; none after the last representable day
    until = None if end == date.max else date.fromordinal(end.toordinal() + 1).isoformat()
    per_user: Counter[str] = Counter()
    per_purpose: Counter[str] = Counter()
    per_case: Counter[str] = Counter()
    per_week: dict[str, Counter[str]] = defaultdict(Counter)
    decisions: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    erasures = {"erasures": 0, "faces_erased": 0, "images_deleted": 0, "purges": 0}
    searches = 0
    for e in audit.iter_entries(store, since=since, until=until):
        if unit_users is not None and e.actor not in unit_users:
            continue
        if e.action == "search":
            searches += 1
            purpose = e.details.get("purpose", "?")
            per_user[e.actor] += 1
            per_purpose[purpose] += 1
            per_case[e.target] += 1
            per_week[_week(e.ts)][purpose] += 1
        elif e.action in ("case.approve", "case.deny"):
            decisions["approved" if e.action == "case.approve" else "denied"] += 1
        elif e.action == "case.request":
            decisions["requested"] += 1
        elif e.action == "search.quota_refused":
            refusals["quota"] += 1
        elif e.action == "search.refused":
            refusals[e.details.get("reason", "refused")] += 1
        elif e.action == "authz.denied":
            refusals["permission-denied"] += 1
        elif e.action == "erase":
            erasures["erasures"] += 1
            erasures["faces_erased"] += int(e.details.get("faces_erased", 0))
            erasures["images_deleted"] += len(e.details.get("images_deleted", []))
        elif e.action == "purge":
            erasures["purges"] += 1
    return {
        "from": since,
        "to": end.isoformat(),
        "searches": searches,
        "searches_per_user": dict(per_user.most_common()),
        "searches_per_purpose": dict(per_purpose.most_common()),
        "searches_per_case": dict(per_case.most_common()),
        "searches_per_week": {w: dict(c) for w, c in sorted(per_week.items())},
        "case_requests": dict(decisions),
        "refusals": dict(refusals),
        "erasure": erasures,
    }


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "key", "value"])
    w.writerow(["period", "from", report["from"]])
    w.writerow(["period", "to", report["to"]])
    w.writerow(["total", "searches", report["searches"]])
    for section in (
        "searches_per_user",
        "searches_per_purpose",
        "searches_per_case",
        "case_requests",
        "refusals",
        "erasure",
    ):
        for k, v in report[section].items():
            w.writerow([section, k, v])
    for week, by_purpose in report["searches_per_week"].items():
        for purpose, n in by_purpose.items():
            w.writerow(["searches_per_week", f"{week} {purpose}", n])
    return buf.getvalue()


def chart_png(report: dict[str, Any]) -> bytes:
    """Stacked bars: searches per ISO week, by purpose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weeks = list(report["searches_per_week"])
    purposes = sorted({p for c in report["searches_per_week"].values() for p in c})
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    bottom = [0] * len(weeks)
    for p in purposes:
        vals = [report["searches_per_week"][w].get(p, 0) for w in weeks]
        ax.bar(weeks, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("searches")
    ax.set_title("Searches per week by purpose")
    if purposes:
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no searches in this period", ha="center", transform=ax.transAxes)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def to_html(report: dict[str, Any]) -> str:
    def table(title: str, data: dict[str, Any]) -> str:
        rows = (
            "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                for k, v in data.items()
            )
            or "<tr><td colspan=2>none</td></tr>"
        )
        return f"<h2>{html.escape(title)}</h2><table><tbody>{rows}</tbody></table>"

    png = base64.b64encode(chart_png(report)).decode()
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>faceledger transparency report</title><style>"
        "body{font-family:sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:.2rem .6rem}"
        "</style></head><body>"
        f"<h1>Transparency report {html.escape(report['from'])} to {html.escape(report['to'])}</h1>"
        f"<p>{report['searches']} searches. Computed from the tamper-evident ledger.</p>"
        f"<img alt='Searches per week by purpose' src='data:image/png;base64,{png}'>"
        + table("Searches per user", report["searches_per_user"])
        + table("Searches per purpose", report["searches_per_purpose"])
        + table("Searches per case", report["searches_per_case"])
        + table("Case requests", report["case_requests"])
        + table("Refusals", report["refusals"])
        + table("Erasure and retention", report["erasure"])
        + "</body></html>"
    )
