"""Transparency reports from the ledger: who searched, for what, under which case.

The ledger is the record, so reports are computed from it alone: searches per user, per
purpose and per case; 1:1 verifications likewise; probe detections per user; approvals and
denials; refusals (quota, missing case fields, not approved); account changes (roles, units,
disable/enable, unlock, passwords, tokens: who changed what for whom, when); erasures and
purges. Each report carries the ledger head (``seq:hash``) it was computed to, when and by
whom it was made, so a published report is a checkpoint (``faceledger audit verify
--report FILE``). Formats: JSON, CSV (one section per table; cells that a spreadsheet would
run as a formula are neutralised) and a self-contained HTML page with a chart of searches
per ISO week by purpose: every week of the period is there, a week without searches as a
zero (a gap in the bars is a quiet week, not a missing one). The ledger's own export (CSV or
JSON lines) is written here too.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from faceledger.db.schema import tokens
from faceledger.db.store import Store, now_iso
from faceledger.ledger import audit

# Who changed what for whom: listed in the report's "Account changes" section.
ACCOUNT_ACTIONS = frozenset(
    {
        "user.init_admin",
        "user.add",
        "user.set_roles",
        "user.set_unit",
        "user.disable",
        "user.enable",
        "user.unlock",
        "user.password_change",
        "token.create",
        "token.revoke",
    }
)
WEB_SESSION = "web-session"  # the web UI's own per-login tokens: not listed
DECISION_KEYS = {"case.approve": "approved", "case.deny": "denied", "case.withdraw": "withdrawn"}
COUNTER_SECTIONS = (
    ("searches_per_user", "Searches per user"),
    ("searches_per_purpose", "Searches per purpose"),
    ("searches_per_case", "Searches per case"),
    ("verifications_per_user", "1:1 verifications per user"),
    ("verifications_per_purpose", "1:1 verifications per purpose"),
    ("verifications_per_case", "1:1 verifications per case"),
    ("verifications_per_outcome", "1:1 verifications by outcome"),
    ("detections_per_user", "Probe detections per user"),
    ("case_requests", "Case requests"),
    ("refusals", "Refusals"),
    ("erasure", "Erasure and retention"),
)
ACCOUNT_COLUMNS = ("when", "by", "action", "user", "change")

# OWASP CSV injection: a cell a spreadsheet would run as a formula gets a leading quote.
# A leading quote is itself quoted, so that read_ledger_export can undo it exactly.
FORMULA_START = frozenset("=+-@\t\r\n'\uff1d\uff0b\uff0d\uff20")


def csv_cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: text beginning with =, +, -, @, a tab, CR, LF (or
    their full-width forms, or a quote) gets a leading single quote; other values as they
    are (the csv module quotes text with line breaks, quotes or commas)."""
    if isinstance(value, str) and value and value[0] in FORMULA_START:
        return "'" + value
    return value


def csv_uncell(value: str) -> str:
    """The text :func:`csv_cell` was given."""
    if len(value) > 1 and value[0] == "'" and value[1] in FORMULA_START:
        return value[1:]
    return value


def _safe_row(row: Iterable[Any]) -> list[Any]:
    return [csv_cell(v) for v in row]


def _week(ts: str) -> str:
    y, w, _ = datetime.fromisoformat(ts).isocalendar()
    return f"{y}-W{w:02d}"


# A period longer than this charts only the weeks from its first search to its last.
MAX_CHART_DAYS = 2 * 366


def weeks_between(first: date, last: date) -> list[str]:
    """Every ISO week (``2026-W02``) from the one holding ``first`` to the one holding
    ``last``, in order, none skipped."""
    monday = first - timedelta(days=first.weekday())
    weeks = []
    while monday <= last:
        y, w, _ = monday.isocalendar()
        weeks.append(f"{y}-W{w:02d}")
        monday += timedelta(days=7)
    return weeks


def _weekly(
    per_week: dict[str, Counter[str]], start: date, end: date, days: list[date]
) -> dict[str, dict[str, int]]:
    """Searches per week by purpose over the report's period, weeks without searches as
    empty (zero); a very long period from its first search's week to its last's."""
    if (end - start).days <= MAX_CHART_DAYS:
        weeks = weeks_between(start, end)
    elif days:
        weeks = weeks_between(min(days), max(days))
    else:
        weeks = []
    return {w: dict(per_week.get(w, {})) for w in sorted(set(weeks) | set(per_week))}


def _describe(e: audit.Entry) -> str:
    """An account change in words."""
    d = e.details

    def names(v: Any) -> str:
        if isinstance(v, list):
            return ", ".join(map(str, v)) or "none"
        return "none" if v in (None, "") else str(v)

    if e.action == "user.init_admin":
        return "first admin created"
    if e.action == "user.add":
        unit = d.get("unit")
        return f"added with roles {names(d.get('roles'))}" + (f", unit {unit}" if unit else "")
    if e.action == "user.set_roles":
        return f"roles {names(d.get('old'))} -> {names(d.get('new'))}"
    if e.action == "user.set_unit":
        return f"unit {names(d.get('old'))} -> {names(d.get('new'))}"
    if e.action == "token.create":
        return (
            f"token {d.get('token_id')} {d.get('name', '')!r} created, "
            f"expires {d.get('expires_at', '?')}"
        )
    if e.action == "token.revoke":
        return f"token {d.get('token_id')} revoked"
    return {
        "user.disable": "disabled",
        "user.enable": "enabled",
        "user.unlock": "unlocked",
        "user.password_change": "password changed",
    }.get(e.action, e.action)


def build(
    store: Store,
    start: date,
    end: date,
    unit_users: set[str] | None = None,
    generated_by: str | None = None,
) -> dict[str, Any]:
    """Report over [start, end] inclusive; ``unit_users`` restricts to a supervisor's unit
    (their actions, and account changes made by or for them). Computed up to the ledger's
    head at the time, which the report names (``ledger_head``, ``seq:hash``)."""
    since = start.isoformat()
    # the day after ``end``; none after the last representable day
    until = None if end == date.max else date.fromordinal(end.toordinal() + 1).isoformat()
    head_seq, head_hash = audit.head(store)
    generated_at = now_iso()
    per_user: Counter[str] = Counter()
    per_purpose: Counter[str] = Counter()
    per_case: Counter[str] = Counter()
    per_week: dict[str, Counter[str]] = defaultdict(Counter)
    v_user: Counter[str] = Counter()
    v_purpose: Counter[str] = Counter()
    v_case: Counter[str] = Counter()
    v_outcome: Counter[str] = Counter()
    detections: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    erasures = {"erasures": 0, "faces_erased": 0, "images_deleted": 0, "purges": 0}
    changes: list[tuple[audit.Entry, Any]] = []  # (entry, token id of a revocation)
    session_tokens: set[Any] = set()
    searches = verifications = 0
    search_days: list[date] = []
    for e in audit.iter_entries(store, since=since, until=until, through_seq=head_seq):
        if e.action in ACCOUNT_ACTIONS:
            if unit_users is not None and not ({e.actor, e.target} & unit_users):
                continue
            if e.action == "token.create" and e.details.get("name") == WEB_SESSION:
                session_tokens.add(e.details.get("token_id"))
            elif e.action == "token.revoke" and e.details.get("name") == WEB_SESSION:
                pass
            else:
                tid = e.details.get("token_id") if e.action == "token.revoke" else None
                changes.append((e, tid))
            continue
        if unit_users is not None and e.actor not in unit_users:
            continue
        if e.action == "search":
            searches += 1
            purpose = e.details.get("purpose", "?")
            per_user[e.actor] += 1
            per_purpose[purpose] += 1
            per_case[str(e.details.get("case_number", e.target))] += 1
            per_week[_week(e.ts)][purpose] += 1
            search_days.append(datetime.fromisoformat(e.ts).date())
        elif e.action == "verify":
            verifications += 1
            v_user[e.actor] += 1
            v_purpose[str(e.details.get("purpose", "?"))] += 1
            v_case[str(e.details.get("case_number", e.target))] += 1
            v_outcome[str(e.details.get("outcome", "?"))] += 1
        elif e.action == "probe.detect":
            detections[e.actor] += 1
        elif e.action in DECISION_KEYS:
            decisions[DECISION_KEYS[e.action]] += 1
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
    # revocations name only the token's id: the web UI's session tokens made before the
    # period are known by their name in the tokens table
    unknown = [t for _, t in changes if t is not None and t not in session_tokens]
    if unknown:
        with store.engine.connect() as conn:
            session_tokens |= {
                r[0]
                for r in conn.execute(
                    select(tokens.c.id).where(
                        tokens.c.id.in_(unknown), tokens.c.name == WEB_SESSION
                    )
                )
            }
    account_changes = [
        {
            "when": e.ts,
            "by": e.actor,
            "action": e.action,
            "user": e.target,
            "change": _describe(e),
        }
        for e, tid in changes
        if tid is None or tid not in session_tokens
    ]
    return {
        "from": since,
        "to": end.isoformat(),
        "ledger_head": f"{head_seq}:{head_hash}",
        "generated_at": generated_at,
        "generated_by": generated_by,
        "searches": searches,
        "searches_per_user": dict(per_user.most_common()),
        "searches_per_purpose": dict(per_purpose.most_common()),
        "searches_per_case": dict(per_case.most_common()),
        "searches_per_week": _weekly(per_week, start, end, search_days),
        "verifications": verifications,
        "verifications_per_user": dict(v_user.most_common()),
        "verifications_per_purpose": dict(v_purpose.most_common()),
        "verifications_per_case": dict(v_case.most_common()),
        "verifications_per_outcome": dict(v_outcome.most_common()),
        "detections_per_user": dict(detections.most_common()),
        "case_requests": dict(decisions),
        "refusals": dict(refusals),
        "erasure": erasures,
        "account_changes": account_changes,
    }


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "key", "value"])
    for key in ("ledger_head", "generated_at", "generated_by"):
        w.writerow(_safe_row(["report", key, report.get(key) or ""]))
    w.writerow(["period", "from", report["from"]])
    w.writerow(["period", "to", report["to"]])
    w.writerow(["total", "searches", report["searches"]])
    w.writerow(["total", "verifications", report.get("verifications", 0)])
    for section, _title in COUNTER_SECTIONS:
        for k, v in report.get(section, {}).items():
            w.writerow(_safe_row([section, k, v]))
    for week, by_purpose in report["searches_per_week"].items():
        for purpose, n in by_purpose.items():
            w.writerow(_safe_row(["searches_per_week", f"{week} {purpose}", n]))
    changes = report.get("account_changes", [])
    if changes:
        w.writerow(["section", *ACCOUNT_COLUMNS])
        for c in changes:
            w.writerow(_safe_row(["account_changes", *(c[k] for k in ACCOUNT_COLUMNS)]))
    return buf.getvalue()


def _utc(ts: Any) -> str:
    """'2026-01-02T10:11:12+00:00' -> '2026-01-02 10:11:12 UTC' (the ledger keeps UTC)."""
    text = str(ts or "?").replace("T", " ")
    return text[: -len("+00:00")] + " UTC" if text.endswith("+00:00") else text


def made_line(report: dict[str, Any]) -> str:
    """When, by whom and at which ledger head (entry and hash) a report was made."""
    head = audit.parse_checkpoint(str(report.get("ledger_head") or ""))
    at = f"ledger head: entry {head[0]}, hash {head[1]}" if head else "ledger head unknown"
    when = _utc(report.get("generated_at"))
    return f"Made {when} by {report.get('generated_by') or 'unknown'} at {at}"


def chart_figure(report: dict[str, Any]) -> Any:
    """The chart as a matplotlib figure: stacked bars of searches per ISO week by purpose,
    every week of the period (zero bars included), the legend beside the bars (never over
    them), and under them when, by whom and at which ledger head the report was made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    per_week = report["searches_per_week"]
    weeks = list(per_week)
    purposes = sorted({p for c in per_week.values() for p in c})
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100, layout="constrained")
    x = list(range(len(weeks)))
    bottom = [0] * len(weeks)
    for p in purposes:
        vals = [per_week[w].get(p, 0) for w in weeks]
        ax.bar(x, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    step = max(1, -(-len(weeks) // 16))  # at most 16 week labels
    ax.set_xticks(x[::step], weeks[::step])
    if weeks:
        ax.set_xlim(-0.6, len(weeks) - 0.4)
    ax.set_ylabel("searches")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Searches per week by purpose")
    if purposes:
        # outside the axes, to their right: the bars are never under it
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no searches in this period", ha="center", transform=ax.transAxes)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.supxlabel(made_line(report), fontsize=7, color="#444444")
    return fig


def chart_png(report: dict[str, Any]) -> bytes:
    """:func:`chart_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = chart_figure(report)
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

    def changes_table(changes: list[dict[str, Any]]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ACCOUNT_COLUMNS)
        rows = (
            "".join(
                "<tr>"
                + "".join(f"<td>{html.escape(str(c[k]))}</td>" for k in ACCOUNT_COLUMNS)
                + "</tr>"
                for c in changes
            )
            or f"<tr><td colspan={len(ACCOUNT_COLUMNS)}>none</td></tr>"
        )
        return (
            "<h2>Account changes</h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        )

    png = base64.b64encode(chart_png(report)).decode()
    head = html.escape(str(report.get("ledger_head", "")), quote=True)
    parsed = audit.parse_checkpoint(str(report.get("ledger_head") or ""))
    when = _utc(report.get("generated_at"))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name='faceledger-ledger-head' content='{head}'>"
        "<title>faceledger transparency report</title><style>"
        "body{font-family:sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .6rem}"
        "code{word-break:break-all}img{max-width:100%;height:auto}"
        ".made{font-weight:bold}"
        "</style></head><body>"
        f"<h1>Transparency report {html.escape(report['from'])} to {html.escape(report['to'])}</h1>"
        f"<p>{report['searches']} searches, {report.get('verifications', 0)} 1:1 verifications. "
        "Computed from the tamper-evident ledger up to its head "
        f"<code class=ledger-head>{head}</code>.</p>"
        f"<p class=made>Made <time>{html.escape(when)}</time> by "
        f"{html.escape(str(report.get('generated_by') or 'unknown'))}"
        " at ledger head: "
        + (
            f"entry <span class=head-seq>{parsed[0]}</span>, hash "
            f"<code class=head-hash>{html.escape(parsed[1])}</code>"
            if parsed
            else "unknown"
        )
        + ".</p>"
        "<p>Keep this report: <code>faceledger audit verify --report FILE</code> checks the "
        "ledger against it (it must still hold that entry with that hash).</p>"
        f"<img alt='Searches per week by purpose' src='data:image/png;base64,{png}'>"
        + "".join(table(title, report.get(key, {})) for key, title in COUNTER_SECTIONS)
        + changes_table(report.get("account_changes", []))
        + "</body></html>"
    )


_HTML_HEAD = re.compile(r"<meta name='faceledger-ledger-head' content='([0-9]+:[0-9a-f]+)'>")


def ledger_head_of(text: str) -> str | None:
    """The ledger head (``seq:hash``) a report in any of its formats carries, else None."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            head = json.loads(stripped).get("ledger_head")
        except (ValueError, AttributeError):
            return None
        return head if isinstance(head, str) and audit.parse_checkpoint(head) else None
    if stripped.lower().startswith(("<!doctype", "<html")):
        m = _HTML_HEAD.search(text)
        return m.group(1) if m else None
    for row in csv.reader(io.StringIO(text)):
        if row[:2] == ["report", "ledger_head"] and len(row) > 2:
            head = csv_uncell(row[2])
            return head if audit.parse_checkpoint(head) else None
    return None


# -- the ledger's export ------------------------------------------------------------------------

LEDGER_COLUMNS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash")


def ledger_csv(entries: Iterable[audit.Entry]) -> Iterator[str]:
    """The entries as CSV, a line at a time: ``details`` is the canonical JSON the entry's
    hash covers, so the export can be re-verified (:func:`read_ledger_export`)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(LEDGER_COLUMNS)
    for e in entries:
        details = audit.canonical(e.details)
        w.writerow(
            _safe_row([e.seq, e.ts, e.actor, e.action, e.target, details, e.prev_hash, e.hash])
        )
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()


def ledger_jsonl(entries: Iterable[audit.Entry]) -> Iterator[str]:
    """The entries as JSON lines (``details`` as an object)."""
    for e in entries:
        yield json.dumps(e.__dict__, sort_keys=True) + "\n"


def read_ledger_export(text: str, fmt: str) -> Iterator[dict[str, Any]]:
    """The entries of an export written by :func:`ledger_csv` or :func:`ledger_jsonl`,
    for :func:`faceledger.ledger.audit.check_export`."""
    if fmt == "jsonl":
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)
        return
    for row in csv.DictReader(io.StringIO(text, newline="")):
        entry: dict[str, Any] = {k: csv_uncell(v) for k, v in row.items()}
        entry["seq"] = int(entry["seq"])
        yield entry
