"""The audit page: ledger entries, verification, checkpoints, transparency reports."""

from __future__ import annotations

import base64
from datetime import date, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from faceledger.http.errors import ApiError
from faceledger.http.ledger_query import ledger_page
from faceledger.http.parsing import parse_day
from faceledger.http.web.deps import PostUser, User
from faceledger.http.web.render import flash, redirect, render
from faceledger.ledger import reports

router = APIRouter(include_in_schema=False)

LEDGER_PAGE = 50
COMMON_ACTIONS = [
    "search",
    "search.refused",
    "search.quota_refused",
    "search.bad_probe",
    "search.view",
    "verify",
    "probe.detect",
    "search.video_tracks",
    "authz.denied",
    "login",
    "login.failed",
    "token.create",
    "token.revoke",
    "token.rejected",
    "case.request",
    "case.approve",
    "case.deny",
    "image.view",
    "case.withdraw",
    "ingest",
    "erase",
    "purge",
    "policy.set",
    "user.add",
    "audit.verify",
    "audit.report",
    "csrf.rejected",
    "erase.preview",
    "user.set_roles",
    "user.set_unit",
    "user.unlock",
    "user.password_change",
    "audit.export",
    "ledger.guard_restored",
]


@router.get("/audit")
def audit_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    can_read = actor.can("read_ledger")
    can_verify = actor.can("verify_ledger")
    can_report = actor.can("report")
    if not (can_read or can_verify or can_report):
        fl.require(actor, "read_ledger", "audit page")
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("actor", "action", "from", "to", "case")}
    page = max(1, int(q.get("page", "1"))) if q.get("page", "1").isdigit() else 1
    entries: list[Any] = []
    total = 0
    filter_error = ""
    if can_read:
        try:
            found = ledger_page(
                fl,
                actor,
                filters["actor"],
                filters["action"],
                filters["from"],
                filters["to"],
                filters["case"],
            )
        except ApiError as exc:
            found, filter_error = [], exc.message
        total = len(found)
        found.reverse()
        entries = found[(page - 1) * LEDGER_PAGE : page * LEDGER_PAGE]
    today = date.today()
    rfrom = q.get("report_from") or (today - timedelta(days=29)).isoformat()
    rto = q.get("report_to") or today.isoformat()
    report = None
    chart = ""
    report_error = ""
    if can_report and q.get("report") == "1":
        try:
            start, end = parse_day(rfrom, "from"), parse_day(rto, "to")
            if end < start:
                raise ApiError(400, "bad-date", "the report ends before it starts")
            report = fl.audit_report(actor, start, end)
            chart = base64.b64encode(reports.chart_png(report)).decode()
        except ApiError as exc:
            report_error = exc.message
    base_q = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "audit.html",
        user,
        can_read=can_read,
        can_verify=can_verify,
        can_report=can_report,
        filters=filters,
        filter_error=filter_error,
        entries=entries,
        total=total,
        page=page,
        pages=max(1, -(-total // LEDGER_PAGE)),
        page_query=lambda p: "?" + urlencode(base_q | {"page": p}),
        export_query=urlencode(base_q),
        actions=COMMON_ACTIONS,
        report=report,
        report_error=report_error,
        chart=chart,
        report_from=rfrom,
        report_to=rto,
        report_query=urlencode({"from": rfrom, "to": rto}),
        report_sections=reports.COUNTER_SECTIONS,
        report_made=reports.made_line(report) if report else "",
    )


@router.post("/audit/verify")
def audit_verify(
    request: Request, user: PostUser, checkpoint: Annotated[str, Form()] = ""
) -> Response:
    res = user.ctx.fl.audit_verify(user.actor, checkpoint.strip() or None)
    if res.ok:
        flash(
            user,
            "ok",
            f"Ledger verified: {res.entries} entries, the hash chain is intact"
            + (" and matches the checkpoint" if checkpoint.strip() else "")
            + f"; {res.records_checked} searches, verifications and case requests agree "
            f"with it. Head {res.head_seq}:{res.head_hash[:16]}…",
        )
    else:
        at = f" at entry {res.first_bad_seq}" if res.first_bad_seq is not None else ""
        flash(user, "error", f"Ledger verification FAILED{at}: {res.problem}")
        for m in res.mismatches[:10]:
            flash(user, "error", m["problem"])
        if res.mismatch_count > 10:
            flash(user, "error", f"… and {res.mismatch_count - 10} more (see the API or CLI)")
    for warning in res.warnings:
        flash(user, "error", f"Warning: {warning}")
    return redirect("/audit")


@router.post("/audit/checkpoint")
def audit_checkpoint(request: Request, user: PostUser) -> Response:
    cp = user.ctx.fl.audit_checkpoint(user.actor)
    flash(user, "secret", f"Checkpoint (keep it outside this machine): {cp}")
    return redirect("/audit")


# -- admin ------------------------------------------------------------------------------------
