"""Errors every layer may raise and every interface translates (HTTP status, CLI exit code)."""

from __future__ import annotations


class RefusedError(Exception):
    """A request that the rules refuse (missing case, unapproved purpose, quota...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PolicyTamperedError(Exception):
    """policy.json differs from the last version recorded in the ledger."""


class ModelMismatchError(Exception):
    """Raised when vectors of one model would be mixed into a gallery of another."""


class BadTextError(ValueError):
    """Text that no supported database stores faithfully (PostgreSQL refuses NUL)."""


class DatabaseBindingError(Exception):
    """A data dir and a database that do not belong together."""
