"""Errors every layer may raise and every interface translates (HTTP status, CLI exit code)."""

from __future__ import annotations


class RefusedError(Exception):
    """A request that the rules refuse (missing case, unapproved purpose, quota...).

    ``fields`` names the inputs at fault (``case_number``, ``justification``...), where the
    refusal is about some: interfaces point at them in their own terms (a form field, a
    command-line option), so the message itself names no interface's spelling."""

    def __init__(self, code: str, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.fields = tuple(fields)


class FieldValueError(ValueError):
    """A bad value in named inputs (a weak password, an unknown role): a ValueError that
    says which inputs are at fault, as :class:`RefusedError` does."""

    def __init__(self, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


def fields_at_fault(exc: BaseException) -> tuple[str, ...]:
    """The inputs an error names as at fault (none for most errors)."""
    fields = getattr(exc, "fields", ())
    return tuple(str(f) for f in fields) if isinstance(fields, tuple) else ()


class PolicyTamperedError(Exception):
    """policy.json differs from the last version recorded in the ledger."""


class ModelMismatchError(Exception):
    """Raised when vectors of one model would be mixed into a gallery of another."""


class BadTextError(ValueError):
    """Text that no supported database stores faithfully (PostgreSQL refuses NUL)."""


class DatabaseBindingError(Exception):
    """A data dir and a database that do not belong together."""
