"""The admin page: users, tokens, the policy, ingest jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from faceledger.accounts.auth import ROLES
from faceledger.cases.policy import Policy
from faceledger.core import PolicyTamperedError
from faceledger.http.ingest import start_ingest
from faceledger.http.policy import policy_dict
from faceledger.http.web.deps import PostUser, User, web_user_csrf
from faceledger.http.web.render import flash, local_url, redirect, render
from faceledger.http.web.responses import attempt

router = APIRouter(include_in_schema=False)


@router.get("/admin")
def admin_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    users = fl.list_users(actor)  # admins only: the core refuses (and records) the rest
    tokens_for = request.query_params.get("tokens_for", "").strip()
    tokens = fl.list_tokens(actor, tokens_for) if tokens_for else []
    pol = fl.policy_for_edit()
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
        jobs=[j.as_dict() for j in user.ctx.jobs.list(actor)],
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
        "/admin#add-user",
        lambda: user.ctx.fl.add_user(
            user.actor, username.strip(), password, roles or [], unit.strip() or None
        ),
        f"User {username.strip()} added.",
        done="/admin#users",
        values={"username": username, "unit": unit, "roles": ",".join(roles or [])},
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
    flash(user, "error", "Unknown action.", "users")
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
    back = "/account#tokens"
    target = username.strip() or user.actor.username
    if not days.strip().isdigit():
        flash(user, "error", "Lifetime is a number of days (1-366).", "tokens", ("days",))
        return redirect(back)

    def create() -> str:
        tid, secret = user.ctx.fl.create_token(user.actor, target, name.strip() or "api", int(days))
        flash(
            user,
            "secret",
            f"Token {tid} for {target} (shown once, store it now): {secret}",
            "tokens",
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


@router.post("/admin/policy")
async def admin_policy(request: Request) -> Response:
    form = await request.form()
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    user = await run_in_threadpool(web_user_csrf, request, fields.get("csrf_token", ""))

    def save() -> None:
        typed = {k: v for k, v in fields.items() if k in Policy.field_names()}
        user.ctx.fl.update_policy(user.actor, typed, as_text=True)

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
    return attempt(
        user,
        "/admin#jobs",
        lambda: user.ctx.jobs.cancel(user.actor, job_id),
        f"Job {job_id} will stop after its current image.",
    )
