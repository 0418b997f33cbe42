"""The ledger through the door: verification, checkpoints, entries, exports, reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from faceledger.accounts.auth import Actor
from faceledger.core.gallery import GalleryDoor
from faceledger.db.schema import (
    users,
)
from faceledger.errors import RefusedError
from faceledger.ledger import audit


class LedgerDoor(GalleryDoor):
    # -- audit -----------------------------------------------------------------------------
    def audit_verify(
        self, actor: Actor, checkpoint: str | None = None, report: str | None = None
    ) -> audit.VerifyResult:
        """The chain, the records against it and, with ``checkpoint`` (``seq:hash``) or a
        transparency report's text (``report``, whose ledger head is the checkpoint),
        truncation or rewriting since."""
        from faceledger.ledger import reports

        self.require(actor, "verify_ledger")
        if report is not None:
            head = reports.ledger_head_of(report)
            if head is None:
                raise RefusedError(
                    "bad-report", "no ledger head (seq:hash) found in the report given"
                )
            if checkpoint and checkpoint.strip() != head:
                raise RefusedError(
                    "bad-report", "give a checkpoint or a report, not two different heads"
                )
            checkpoint = head
        result = audit.verify(self.store, checkpoint)
        # Recording the check extends the chain, so it is done after verifying.
        self.record(
            actor,
            "audit.verify",
            "ledger",
            ok=result.ok,
            entries=result.entries,
            first_bad_seq=result.first_bad_seq,
            checkpoint=checkpoint,
            records_checked=result.records_checked,
            mismatches=result.mismatch_count,
            guard_restorations=len(result.guard_restorations),
        )
        return result

    def audit_checkpoint(self, actor: Actor) -> str:
        self.require(actor, "verify_ledger")
        seq, h = audit.head(self.store)
        self.record(actor, "audit.checkpoint", "ledger", seq=seq, hash=h)
        return f"{seq}:{h}"

    def audit_entries(
        self,
        reader: Actor,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        case: str | None = None,
    ) -> list[audit.Entry]:
        """Ledger entries, optionally filtered by who acted, action, time and case number
        (the entry's target or ``details.case_number``) (auditors)."""
        self.require(reader, "read_ledger")
        return list(
            audit.iter_entries(
                self.store, since=since, until=until, actor=actor, action=action, case=case
            )
        )

    def audit_export(
        self,
        reader: Actor,
        fmt: str,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        case: str | None = None,
    ) -> Iterable[str]:
        """The filtered ledger as CSV or JSON lines, streamed in seq order up to the head at
        the time of the request (auditors); the export itself is recorded first."""
        from faceledger.ledger import reports

        self.require(reader, "read_ledger")
        if fmt not in ("csv", "jsonl"):
            raise RefusedError("bad-format", "export format must be csv or jsonl")
        through, _ = audit.head(self.store)
        filters = {"actor": actor, "action": action, "from": since, "to": until, "case": case}
        self.record(
            reader,
            "audit.export",
            "ledger",
            format=fmt,
            through_seq=through,
            filters={k: v for k, v in filters.items() if v},
        )
        entries = audit.iter_entries(
            self.store,
            since=since,
            until=until,
            actor=actor,
            action=action,
            case=case,
            through_seq=through,
        )
        return reports.ledger_csv(entries) if fmt == "csv" else reports.ledger_jsonl(entries)

    def audit_report(self, actor: Actor, start: Any, end: Any) -> dict[str, Any]:
        from faceledger.ledger import reports

        self.require(actor, "report")
        unit_users = None
        if "auditor" not in actor.roles:  # supervisors see their own unit
            with self.store.engine.connect() as conn:
                unit_users = (
                    {
                        r[0]
                        for r in conn.execute(
                            select(users.c.username).where(users.c.unit == actor.unit)
                        )
                    }
                    if (actor.unit)
                    else {actor.username}
                )
        report = reports.build(self.store, start, end, unit_users, generated_by=actor.username)
        self.record(
            actor,
            "audit.report",
            f"{start}..{end}",
            unit=None if unit_users is None else actor.unit,
            ledger_head=report["ledger_head"],
        )
        return report
