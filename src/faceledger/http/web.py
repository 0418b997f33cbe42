"""The web UI: server-rendered pages (Jinja2) with a little vanilla JavaScript.

Pages call the same core (:class:`faceledger.core.Faceledger`) and the same shared helpers as
the API (the modules of :mod:`faceledger.http`, never its routes); the search page's JavaScript
calls the API itself with the session cookie and the CSRF header. Every form that changes
something carries the session's CSRF token. Pages a role may not use answer 403, and the core
records the denial.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from faceledger import __version__
from faceledger.accounts.auth import (
    PERMISSIONS,
    ROLES,
    Actor,
    AuthError,
    LoginThrottled,
    PermissionDenied,
    parse_ts,
    utcnow,
)
from faceledger.cases.policy import Policy
from faceledger.core import PolicyTamperedError, RefusedError
from faceledger.http.context import AppContext, ctx_of
from faceledger.http.erasure import erase_request, erasure_preview_request, preview_out
from faceledger.http.errors import KNOWN_ERRORS, ApiError, error_for
from faceledger.http.ingest import start_ingest
from faceledger.http.ledger_query import ledger_page
from faceledger.http.parsing import parse_day
from faceledger.http.policy import current_policy_for_edit, policy_dict
from faceledger.http.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, WebSession
from faceledger.http.uploads import read_upload
from faceledger.ledger import reports
from faceledger.search.searcher import LEADS_NOTICE

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def _when(ts: str | None, empty: str = "—") -> str:
    """'2026-01-02T10:11:12+00:00' -> '2026-01-02 10:11 UTC' (the ledger keeps UTC)."""
    if not ts:
        return empty
    text = str(ts).replace("T", " ")
    return f"{text[:16]} UTC" if len(text) >= 16 and text[10] == " " else text


templates.env.filters["when"] = _when
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


class LoginRequired(AuthError):
    """No valid session: the page sends the browser to the login form."""


@dataclass
class WebUser:
    ctx: AppContext
    sess: WebSession
    actor: Actor


def _web_user(request: Request) -> WebUser:
    ctx = ctx_of(request)
    sess = ctx.session_for(request.cookies.get(SESSION_COOKIE))
    if sess is None:
        raise LoginRequired()
    try:
        actor = ctx.session_actor(sess)
    except AuthError as exc:
        raise LoginRequired() from exc
    ctx.limit_user(actor)
    return WebUser(ctx, sess, actor)


def web_user(request: Request) -> WebUser:
    return _web_user(request)


def web_user_csrf(request: Request, csrf_token: Annotated[str, Form()] = "") -> WebUser:
    ctx = ctx_of(request)
    sess = ctx.session_for(request.cookies.get(SESSION_COOKIE))
    if sess is None:
        raise LoginRequired()
    ctx.check_csrf(sess, csrf_token, request.url.path)
    return _web_user(request)


User = Annotated[WebUser, Depends(web_user)]
PostUser = Annotated[WebUser, Depends(web_user_csrf)]


# -- rendering --------------------------------------------------------------------------------


def nav_for(actor: Actor | None) -> list[tuple[str, str]]:
    if actor is None:
        return []
    items = [("/", "Overview")]
    if actor.can("search"):
        items.append(("/search", "Search"))
    items.append(("/cases", "Cases"))
    if actor.can("read_ledger") or actor.can("report") or actor.can("verify_ledger"):
        items.append(("/audit", "Audit"))
    if actor.can("manage_users"):
        items.append(("/admin", "Admin"))
    items.append(("/account", "Account"))
    return items


def render(
    request: Request,
    name: str,
    user: WebUser | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    flashes: list[tuple[str, str]] = []
    if user is not None:
        flashes, user.sess.flashes = user.sess.flashes, []
    actor = user.actor if user else None
    base = {
        "actor": actor,
        "roles": sorted(actor.roles) if actor else [],
        "csrf": user.sess.csrf if user else "",
        "flashes": flashes,
        "nav": nav_for(actor),
        "path": request.url.path,
        "notice": LEADS_NOTICE,
        "version": __version__,
    }
    return templates.TemplateResponse(request, name, base | context, status_code=status)


def flash(user: WebUser, kind: str, message: str) -> None:
    user.sess.flashes.append((kind, message))


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def local_url(url: str | None, default: str = "/") -> str:
    """Only same-site paths: never an open redirect."""
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return default


def error_page(request: Request, exc: Exception, status: int, code: str, message: str) -> Response:
    """How the exception handlers answer a page request."""
    if isinstance(exc, LoginRequired) or status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/"
        return redirect("/login?" + urlencode({"next": target}))
    user = None
    try:
        user = _web_user(request)
    except Exception:
        user = None
    return render(
        request,
        "error.html",
        user,
        status=status,
        status_code=status,
        code=code,
        message=message,
        title={403: "Not permitted", 404: "Not found"}.get(status, "Something went wrong"),
    )


def attempt(user: WebUser, back: str, fn: Any, success: str | None = None) -> RedirectResponse:
    """Run a core call for a form; refusals become a message on the page it came from."""
    try:
        result = fn()
    except PermissionDenied:
        raise
    except (*KNOWN_ERRORS, ValueError) as exc:
        if isinstance(exc, ValueError):
            code, message = "invalid", str(exc)
        else:
            _status, code, message, _headers = error_for(exc)
        flash(user, "error", f"{message} ({code})")
        return redirect(back)
    if success:
        flash(user, "ok", success.format(result=result))
    return redirect(back)


# -- login ------------------------------------------------------------------------------------


def landing(actor: Actor) -> str:
    if actor.can("search"):
        return "/search"
    if actor.can("decide_case"):
        return "/cases"
    if actor.can("read_ledger"):
        return "/audit"
    if actor.can("manage_users"):
        return "/admin"
    return "/"


def _login_page(
    request: Request, error: str = "", status: int = 200, retry_after: int | None = None
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(
        request,
        "login.html",
        None,
        status=status,
        login_csrf=token,
        error=error,
        next=local_url(request.query_params.get("next"), ""),
        bye=request.query_params.get("bye") == "1",
        uninitialised=not ctx_of(request).fl.has_users(),
    )
    resp.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=ctx_of(request).cookie_secure(request),
        path="/login",
        max_age=3600,
    )
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


@router.get("/login")
def login_form(request: Request) -> Response:
    ctx = ctx_of(request)
    if ctx.session_for(request.cookies.get(SESSION_COOKIE)) is not None:
        return redirect(local_url(request.query_params.get("next")))
    return _login_page(request)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    ctx = ctx_of(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, csrf_token):
        return _login_page(request, "The form expired; please try again.", 400)
    address = ctx.client_address(request)
    try:
        ctx.limit_login(address)
    except ApiError as exc:
        return _login_page(request, exc.message, 429, int(exc.headers["Retry-After"]))
    try:
        actor, sess = ctx.start_session(username.strip(), password, address)
    except LoginThrottled as exc:  # reads the same for every name, user or not
        return _login_page(request, _sentence(str(exc)), 429, exc.retry_after)
    except AuthError as exc:  # one message for unknown user, wrong password, disabled
        return _login_page(request, _sentence(str(exc).split(": ", 1)[-1]), 401)
    except RefusedError as exc:  # a name longer than any user's: nothing recorded
        return _login_page(request, _sentence(str(exc)), 400)
    resp = redirect(local_url(next, landing(actor)))
    resp.set_cookie(
        SESSION_COOKIE,
        sess.sid,
        httponly=True,
        samesite="strict",
        secure=ctx.cookie_secure(request),
        path="/",
    )
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return resp


@router.post("/logout")
def logout(request: Request, user: PostUser) -> Response:
    user.ctx.sessions.pop(user.sess.sid)
    user.ctx.end_session(user.sess)
    resp = redirect("/login?bye=1")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# -- pages ------------------------------------------------------------------------------------


@router.get("/")
def home(request: Request, user: User) -> Response:
    stats = user.ctx.fl.stats(user.actor)
    return render(request, "home.html", user, stats=stats, permissions=PERMISSIONS)


@router.get("/search")
def search_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    fl.require(actor, "search", "search page")
    try:
        pol = fl.policy()
        policy_problem = ""
    except PolicyTamperedError as exc:
        pol, policy_problem = Policy(), str(exc)
    approved = [
        r for r in fl.list_case_requests(actor, "approved") if r["requested_by"] == actor.user_id
    ]
    return render(
        request,
        "search.html",
        user,
        policy=pol,
        policy_problem=policy_problem,
        approved=approved,
        max_upload_mb=round(user.ctx.settings.max_upload_bytes / (1024 * 1024)),
        gallery_faces=fl.store.face_count(),
    )


@router.get("/searches/{search_id}")
def search_record(request: Request, user: User, search_id: int) -> Response:
    fl = user.ctx.fl
    rec = fl.get_search(user.actor, search_id)
    try:
        view_days = fl.policy().result_view_days
    except PolicyTamperedError:
        view_days = Policy().result_view_days
    ends = parse_ts(rec["created_at"]) + timedelta(days=view_days)
    return render(
        request,
        "search_record.html",
        user,
        rec=rec,
        can_view_candidates=utcnow() < ends,
        view_days=view_days,
    )


@router.get("/cases")
def cases_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    rows = fl.list_case_requests(actor)
    try:
        pol = fl.policy()
    except PolicyTamperedError:
        pol = Policy()
    pending = [r for r in rows if r["status"] == "pending"]
    return render(
        request,
        "cases.html",
        user,
        rows=list(reversed(rows)),
        pending=pending,
        policy=pol,
        can_request=actor.can("request_case"),
        can_decide=actor.can("decide_case"),
    )


@router.post("/cases")
def cases_request(
    request: Request,
    user: PostUser,
    case_number: Annotated[str, Form()] = "",
    purpose: Annotated[str, Form()] = "",
    justification: Annotated[str, Form()] = "",
) -> Response:
    return attempt(
        user,
        "/cases",
        lambda: user.ctx.fl.request_case(user.actor, case_number, purpose, justification),
        "Request {result} sent; it is pending a supervisor's decision.",
    )


@router.post("/cases/{request_id}/decide")
def cases_decide(
    request: Request,
    user: PostUser,
    request_id: int,
    decision: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    search_limit: Annotated[str, Form()] = "",
) -> Response:
    if decision not in ("approve", "deny"):
        flash(user, "error", "Choose approve or deny.")
        return redirect("/cases")
    limit = search_limit.strip()
    if limit and not (limit.isascii() and limit.isdigit()):
        flash(user, "error", "The search limit is a whole number of searches.")
        return redirect("/cases")
    approve = decision == "approve"
    return attempt(
        user,
        "/cases",
        lambda: user.ctx.fl.decide_case(
            user.actor, request_id, approve, note.strip(), int(limit) if limit else None
        ),
        f"Request {request_id} {'approved' if approve else 'denied'}.",
    )


@router.post("/cases/{request_id}/withdraw")
def cases_withdraw(
    request: Request, user: PostUser, request_id: int, note: Annotated[str, Form()] = ""
) -> Response:
    return attempt(
        user,
        "/cases",
        lambda: user.ctx.fl.withdraw_case(user.actor, request_id, note),
        f"The approval of request {request_id} is withdrawn.",
    )


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


@router.get("/admin")
def admin_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    users = fl.list_users(actor)  # admins only: the core refuses (and records) the rest
    tokens_for = request.query_params.get("tokens_for", "").strip()
    tokens = fl.list_tokens(actor, tokens_for) if tokens_for else []
    pol = current_policy_for_edit(fl)
    try:
        fl.policy()
        policy_problem = ""
    except PolicyTamperedError as exc:
        policy_problem = str(exc)
    return render(
        request,
        "admin.html",
        user,
        users=users,
        all_roles=ROLES,
        tokens_for=tokens_for,
        tokens=tokens,
        policy=policy_dict(pol),
        policy_problem=policy_problem,
        jobs=[j.as_dict() for j in user.ctx.jobs.list()],
        ingest_roots=[str(r) for r in user.ctx.settings.ingest_roots],
        max_ingest_mb=round(user.ctx.settings.max_ingest_upload_bytes / (1024 * 1024)),
        stats=fl.stats(actor),
    )


@router.post("/admin/users")
def admin_add_user(
    request: Request,
    user: PostUser,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    roles: Annotated[list[str] | None, Form()] = None,
    unit: Annotated[str, Form()] = "",
) -> Response:
    return attempt(
        user,
        "/admin#users",
        lambda: user.ctx.fl.add_user(
            user.actor, username.strip(), password, roles or [], unit.strip() or None
        ),
        f"User {username.strip()} added.",
    )


@router.post("/admin/users/{username}")
def admin_change_user(
    request: Request,
    user: PostUser,
    username: str,
    action: Annotated[str, Form()] = "",
    roles: Annotated[list[str] | None, Form()] = None,
    unit: Annotated[str, Form()] = "",
) -> Response:
    fl, actor = user.ctx.fl, user.actor
    changes: dict[str, tuple[Any, str]] = {
        "unlock": (
            lambda: fl.unlock_user(actor, username),
            f"{username}'s login back-off is cleared.",
        ),
        "unit": (
            lambda: fl.set_unit(actor, username, unit),
            f"{username} is now in unit {unit.strip() or '(none)'}.",
        ),
        "disable": (lambda: fl.set_disabled(actor, username, True), f"{username} disabled."),
        "enable": (lambda: fl.set_disabled(actor, username, False), f"{username} enabled."),
        "roles": (
            lambda: fl.set_roles(actor, username, roles or []),
            f"{username} now has roles {', '.join(sorted(roles or []))}.",
        ),
    }
    if action in changes:
        call, message = changes[action]
        return attempt(user, "/admin#users", call, message)
    flash(user, "error", "Unknown action.")
    return redirect("/admin#users")


@router.post("/tokens")
def tokens_create(
    request: Request,
    user: PostUser,
    username: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "api",
    days: Annotated[str, Form()] = "90",
) -> Response:
    """A token for yourself (a ``username`` naming someone else is refused by the core)."""
    back = "/account"
    target = username.strip() or user.actor.username
    if not days.strip().isdigit():
        flash(user, "error", "Lifetime is a number of days (1-366).")
        return redirect(back)

    def create() -> str:
        tid, secret = user.ctx.fl.create_token(user.actor, target, name.strip() or "api", int(days))
        flash(
            user,
            "secret",
            f"Token {tid} for {target} (shown once, store it now): {secret}",
        )
        return str(tid)

    return attempt(user, back, create)


@router.post("/tokens/{token_id}/revoke")
def tokens_revoke(
    request: Request,
    user: PostUser,
    token_id: int,
    back: Annotated[str, Form()] = "/account",
) -> Response:
    return attempt(
        user,
        local_url(back, "/account"),
        lambda: user.ctx.fl.revoke_token(user.actor, token_id),
        f"Token {token_id} revoked.",
    )


def _policy_from_form(current: Policy, form: dict[str, str]) -> Policy:
    doc = policy_dict(current)
    for key, value in doc.items():
        if key not in form:
            continue
        raw = form[key].strip()
        if isinstance(value, list):
            doc[key] = [v.strip() for v in raw.replace("\n", ",").split(",") if v.strip()]
        elif isinstance(value, bool):
            doc[key] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(value, int):
            doc[key] = int(raw)
        elif isinstance(value, float):
            doc[key] = float(raw)
        else:
            doc[key] = raw
    return Policy(**doc)


@router.post("/admin/policy")
async def admin_policy(request: Request) -> Response:
    form = await request.form()
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    from starlette.concurrency import run_in_threadpool

    user = await run_in_threadpool(web_user_csrf, request, fields.get("csrf_token", ""))

    def save() -> None:
        fl = user.ctx.fl
        fl.require(user.actor, "manage_policy")
        new = _policy_from_form(current_policy_for_edit(fl), fields)
        fl.save_policy(user.actor, new)

    return await run_in_threadpool(attempt, user, "/admin#policy", save, "Policy saved.")


@router.post("/admin/ingest")
def admin_ingest(
    request: Request,
    user: PostUser,
    source: Annotated[str, Form()] = "",
    legal_basis: Annotated[str, Form()] = "",
    expires_at: Annotated[str, Form()] = "",
    path: Annotated[str, Form()] = "",
    files: Annotated[list[UploadFile] | None, File()] = None,
) -> Response:
    return attempt(
        user,
        "/admin#jobs",
        lambda: start_ingest(
            user.ctx, user.actor, source, legal_basis, expires_at, path, files or []
        )["id"],
        "Ingest job {result} queued.",
    )


@router.post("/admin/jobs/{job_id}/cancel")
def admin_cancel_job(request: Request, user: PostUser, job_id: str) -> Response:
    def cancel() -> None:
        user.ctx.fl.require(user.actor, "ingest", f"job {job_id}")
        user.ctx.jobs.cancel(job_id)
        user.ctx.fl.record(user.actor, "ingest.cancel_requested", f"job {job_id}")

    return attempt(user, "/admin#jobs", cancel, f"Job {job_id} will stop after its current image.")


def _erased_message(rep: dict[str, Any]) -> str:
    return (
        f"Erased {rep['faces_erased']} face(s); {len(rep['images_deleted'])} image(s) "
        f"deleted, {len(rep['images_blurred'])} blurred; {rep['blocklisted']} opt-out "
        "embedding(s) added."
    )


@router.post("/admin/erase")
def admin_erase(
    request: Request,
    user: PostUser,
    face_ids: Annotated[str, Form()] = "",
    image_sha: Annotated[str, Form()] = "",
    source: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    """Erasure by face ids, image or source (by photo: the preview below)."""

    def erase() -> str:
        user.ctx.fl.require(user.actor, "erase")
        rep = erase_request(user.ctx, user.actor, face_ids, image_sha, source, "", "", reason)
        return _erased_message(rep)

    return attempt(user, "/admin#erase", erase, "{result}")


@router.post("/admin/erase/preview")
def admin_erase_preview(
    request: Request,
    user: PostUser,
    threshold: Annotated[str, Form()] = "",
    probe: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """Erasure by photo, step 1: make the preview, then show it."""
    made: dict[str, Any] = {}

    def preview() -> None:
        user.ctx.fl.require(user.actor, "erase")
        try:
            thr = float(threshold) if threshold.strip() else None
        except ValueError as exc:
            raise ApiError(400, "bad-threshold", "threshold is a cosine score") from exc
        photo = read_upload(probe, "probe")
        made.update(erasure_preview_request(user.ctx, user.actor, photo, thr))

    back = attempt(user, "/admin#erase", preview)
    if made:
        return redirect(f"/admin/erasures/previews/{made['preview_id']}")
    return back


@router.get("/admin/erasures/previews/{preview_id}")
def admin_erase_preview_page(request: Request, user: User, preview_id: int) -> Response:
    """The preview: crops, scores, estimated FMRs, and a checkbox per face."""
    preview = preview_out(user.ctx.fl.get_erase_preview(user.actor, preview_id))
    return render(request, "erase_preview.html", user, preview=preview)


@router.post("/admin/erasures/previews/{preview_id}/confirm")
def admin_erase_confirm(
    request: Request,
    user: PostUser,
    preview_id: int,
    face_ids: Annotated[list[str] | None, Form()] = None,
    optout_reference: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    """Erasure by photo, step 2: erase only the faces ticked in the preview."""

    done: list[bool] = []

    def confirm() -> str:
        user.ctx.fl.require(user.actor, "erase")
        faces = ",".join(face_ids or [])
        rep = erase_request(
            user.ctx, user.actor, faces, "", "", str(preview_id), optout_reference, reason
        )
        done.append(True)
        return _erased_message(rep)

    back = attempt(user, f"/admin/erasures/previews/{preview_id}", confirm, "{result}")
    return redirect("/admin#erase") if done else back


@router.post("/admin/purge")
def admin_purge(request: Request, user: PostUser) -> Response:
    return attempt(
        user,
        "/admin#erase",
        lambda: user.ctx.fl.purge(user.actor),
        "Retention purge done: {result}.",
    )


@router.get("/account")
def account_page(request: Request, user: User) -> Response:
    tokens = user.ctx.fl.list_tokens(user.actor)
    return render(request, "account.html", user, tokens=tokens)


@router.post("/account/password")
def account_password(
    request: Request,
    user: PostUser,
    current: Annotated[str, Form()] = "",
    new: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """Change one's own password (any role), given the current one."""
    if new != confirm:
        flash(user, "error", "The new password and its confirmation differ.")
        return redirect("/account#password")
    address = user.ctx.client_address(request)

    def change() -> str:
        ended = user.ctx.fl.change_password(user.actor, current, new, address)
        return f" {len(ended)} other web session(s) ended." if ended else ""

    return attempt(user, "/account#password", change, "Password changed.{result}")
