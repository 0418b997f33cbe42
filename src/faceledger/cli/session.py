"""Opening the data dir's core and proving who acts (``--as``, a password, or a token), with
the core's refusals and storage failures turned into clear messages and exit codes."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from faceledger import config
from faceledger.cli.common import (
    AUTH_EXIT,
    DENIED_EXIT,
    STORAGE_EXIT,
    TAMPERED_EXIT,
    fail,
)
from faceledger.errors import ModelMismatchError, PolicyTamperedError, RefusedError


def open_data_dir(data_dir: Path | None, model_dir: str | None = None, device: str = "cpu") -> Any:
    """The data dir's :class:`Faceledger`, or a clear exit if its storage cannot be used.
    ``model_dir``/``device``: where the probe analyzer finds ONNX models and runs them."""
    from sqlalchemy.exc import OperationalError

    from faceledger.core import Faceledger
    from faceledger.errors import DatabaseBindingError

    path = config.data_dir(data_dir)
    try:
        return Faceledger(path, model_dir=model_dir, device=device)
    except (DatabaseBindingError, ValueError) as exc:  # a bad binding or setting
        fail(str(exc))
    except (OSError, OperationalError) as exc:
        if not is_storage_error(path, exc):
            raise
        fail(storage_problem(path, exc), STORAGE_EXIT)


# The core names the inputs at fault; on the command line they are these options.
OPTION_OF_FIELD = {
    "case_number": "--case",
    "purpose": "--purpose",
    "justification": "--justification",
    "request_id": "--request",
    "face_box": "--face-box",
}


def _options_at_fault(fields: tuple[str, ...]) -> str:
    options = [OPTION_OF_FIELD[f] for f in fields if f in OPTION_OF_FIELD]
    return f" [{', '.join(options)}]" if options else ""


@contextmanager
def session(
    data_dir: Path | None,
    as_user: str | None,
    password: str | None = None,
    model_dir: str | None = None,
    device: str = "cpu",
) -> Iterator[tuple[Any, Any]]:
    """Open the data dir, authenticate, and turn the core's refusals into clear errors.
    ``password``: for --as, when the command already has it (else $FACELEDGER_PASSWORD or
    a prompt)."""
    from sqlalchemy.exc import OperationalError

    from faceledger.accounts.auth import AuthError, PermissionDenied
    from faceledger.vision.decode import DecodeError

    fl = open_data_dir(data_dir, model_dir, device)
    try:
        token = os.environ.get("FACELEDGER_TOKEN")
        if as_user is None and token:
            actor = fl.authenticate_token(token)
        else:
            if not fl.has_users():
                fail(
                    f"{fl.data_dir} has no users yet: run `faceledger init --admin NAME`",
                    AUTH_EXIT,
                )
            if as_user is None:
                fail(
                    "say who you are: --as USER (or set $FACELEDGER_USER / $FACELEDGER_TOKEN)",
                    AUTH_EXIT,
                )
            if password is None:
                password = os.environ.get("FACELEDGER_PASSWORD")
            if password is None:
                password = typer.prompt(f"password for {as_user}", hide_input=True, err=True)
            actor = fl.login(as_user, password, "cli")
        yield fl, actor
    except AuthError as exc:
        fail(str(exc), AUTH_EXIT)
    except PermissionDenied as exc:
        fail(f"permission denied: {exc}", DENIED_EXIT)
    except RefusedError as exc:
        fail(f"refused ({exc.code}): {exc}{_options_at_fault(exc.fields)}", DENIED_EXIT)
    except PolicyTamperedError as exc:
        fail(str(exc), TAMPERED_EXIT)
    except (DecodeError, ModelMismatchError, ValueError) as exc:
        fail(str(exc))
    except (OSError, OperationalError) as exc:  # disk full, read-only, I/O error
        if not is_storage_error(fl.data_dir, exc):
            raise
        fail(storage_problem(fl.data_dir, exc), STORAGE_EXIT)
    finally:
        fl.close()


def is_storage_error(data_dir: Path, exc: BaseException) -> bool:
    """Whether ``exc`` says the data dir (files or database) cannot be written, as opposed
    to, say, a missing input file given on the command line."""
    if not isinstance(exc, OSError):
        return True  # the database's own OperationalError: full, read-only, locked...
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES):
        return False
    where = exc.filename
    return where is None or Path(where).resolve().is_relative_to(Path(data_dir).resolve())


def storage_problem(data_dir: Path, exc: BaseException) -> str:
    """A clear message for a data dir that cannot be written (disk full, read-only...)."""
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the database's own error
    what = getattr(orig, "strerror", None) or str(orig).splitlines()[0]
    if type(orig).__module__.startswith("psycopg"):
        return escape(
            f"database error: {what}. What was stored before is unchanged; check that the "
            "PostgreSQL server is reachable and writable, then run the command again"
        )
    try:
        fs = os.statvfs(data_dir)
        if fs.f_flag & os.ST_RDONLY:
            what += " (the data dir is on a read-only file system)"
        elif fs.f_bavail * fs.f_frsize < 1 << 20:
            what += f" (the disk is full: {fs.f_bavail * fs.f_frsize // 1024} KiB free)"
    except OSError:
        pass
    return escape(
        f"cannot write to the data dir {data_dir}: {what}. What was stored before is "
        "unchanged; free some space or make the data dir writable, then run the command again"
    )
