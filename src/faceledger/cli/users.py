"""People and their credentials: ``init`` (the first admin; registered at the top level by
:mod:`faceledger.cli`), the ``users``, ``account`` and ``tokens`` groups."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from faceledger.cli.common import AsUser, DataDir, JsonOut, dump, err, fail, out
from faceledger.cli.session import open_data_dir, session
from faceledger.errors import RefusedError

users_app = typer.Typer(help="Manage users and roles (admin).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
account_app = typer.Typer(help="Your own account (any role).", no_args_is_help=True)


def init(
    admin: Annotated[str, typer.Option("--admin", help="User name of the first admin.")],
    data_dir: DataDir = None,
) -> None:
    """Create the data dir's first admin (password from $FACELEDGER_PASSWORD or a prompt)."""
    password = os.environ.get("FACELEDGER_PASSWORD") or typer.prompt(
        f"new password for {admin}", hide_input=True, confirmation_prompt=True, err=True
    )
    fl = open_data_dir(data_dir)
    try:
        fl.init_admin(admin, password)
    except (RefusedError, ValueError) as exc:
        fail(str(exc))
    out.print(f"initialised {fl.data_dir}: admin {admin!r}, default policy written")


def _new_password(username: str) -> str:
    return os.environ.get("FACELEDGER_NEW_PASSWORD") or typer.prompt(
        f"password for new user {username}", hide_input=True, confirmation_prompt=True, err=True
    )


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument()],
    roles: Annotated[
        str, typer.Option(help="Comma-separated: admin, investigator, supervisor, auditor.")
    ],
    unit: Annotated[str | None, typer.Option(help="Unit (supervisors see their unit).")] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Add a user (password from $FACELEDGER_NEW_PASSWORD or a prompt)."""
    with session(data_dir, as_user) as (fl, actor):
        fl.add_user(actor, username, _new_password(username), roles, unit)
    out.print(f"user {username} added with roles {roles}")


@users_app.command("list")
def users_list(data_dir: DataDir = None, as_user: AsUser = None, as_json: JsonOut = False) -> None:
    with session(data_dir, as_user) as (fl, actor):
        rows = fl.list_users(actor)
    if as_json:
        dump(rows)
        return
    t = Table("user", "roles", "unit", "disabled", "created")
    for r in rows:
        t.add_row(
            r["username"],
            ",".join(r["roles"]),
            r["unit"] or "",
            str(r["disabled"]),
            r["created_at"],
        )
    out.print(t)


@users_app.command("disable")
def users_disable(username: str, data_dir: DataDir = None, as_user: AsUser = None) -> None:
    with session(data_dir, as_user) as (fl, actor):
        fl.set_disabled(actor, username, True)
    out.print(f"user {username} disabled")


@users_app.command("enable")
def users_enable(username: str, data_dir: DataDir = None, as_user: AsUser = None) -> None:
    with session(data_dir, as_user) as (fl, actor):
        fl.set_disabled(actor, username, False)
    out.print(f"user {username} enabled")


@users_app.command("unlock")
def users_unlock(username: str, data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Clear USERNAME's login back-off (failed logins) from every address."""
    with session(data_dir, as_user) as (fl, actor):
        cleared = fl.unlock_user(actor, username)
    out.print(f"user {username} unlocked ({cleared} address(es) cleared)")


@users_app.command("set-roles")
def users_set_roles(
    username: str,
    roles: Annotated[str, typer.Option(help="Comma-separated roles.")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    with session(data_dir, as_user) as (fl, actor):
        fl.set_roles(actor, username, roles)
    out.print(f"user {username} now has roles {roles}")


@users_app.command("set-unit")
def users_set_unit(
    username: str,
    unit: Annotated[str, typer.Option(help="The unit ('' to clear it).")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Move a user to another unit (admin; not yourself)."""
    with session(data_dir, as_user) as (fl, actor):
        fl.set_unit(actor, username, unit)
    out.print(f"user {username} is now in unit {unit or '(none)'}")


@account_app.command("password")
def account_password(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Change your own password: asks for the current one and the new one (or reads
    $FACELEDGER_PASSWORD and $FACELEDGER_NEW_PASSWORD)."""
    current = os.environ.get("FACELEDGER_PASSWORD")
    if current is None:
        current = typer.prompt("current password", hide_input=True, err=True)
    new = os.environ.get("FACELEDGER_NEW_PASSWORD") or typer.prompt(
        "new password", hide_input=True, confirmation_prompt=True, err=True
    )
    with session(data_dir, as_user, password=current) as (fl, actor):
        ended = fl.change_password(actor, current, new, "cli")
        who = actor.username
    out.print(
        f"password of {who} changed" + (f"; {len(ended)} web session(s) ended" if ended else "")
    )


@tokens_app.command("create")
def tokens_create(
    user: Annotated[
        str | None,
        typer.Option("--user", help="Must be yourself: nobody creates tokens for others."),
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the token.")] = "api",
    days: Annotated[int, typer.Option(help="Lifetime in days (1-366).")] = 90,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Create an API token for yourself; the secret is printed once, alone on the last line."""
    with session(data_dir, as_user) as (fl, actor):
        owner = user or actor.username
        tid, secret = fl.create_token(actor, owner, name, days)
    err.print(f"token {tid} for {owner}, valid {days} days; store it now, it is not shown again:")
    print(secret)


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, data_dir: DataDir = None, as_user: AsUser = None) -> None:
    with session(data_dir, as_user) as (fl, actor):
        fl.revoke_token(actor, token_id)
    out.print(f"token {token_id} revoked")


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option("--user")] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    with session(data_dir, as_user) as (fl, actor):
        dump(fl.list_tokens(actor, user))
