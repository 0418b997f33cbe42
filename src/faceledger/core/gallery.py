"""The gallery: ingest, statistics, the opt-out blocklist, retention and erasure."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from faceledger.accounts.auth import Actor
from faceledger.cases.policy import optout_threshold
from faceledger.core.base import SYSTEM
from faceledger.core.casefile import CaseFileDoor
from faceledger.ledger import audit


class GalleryDoor(CaseFileDoor):
    # -- gallery ----------------------------------------------------------------------------
    def ingest(
        self,
        actor: Actor,
        items: Iterable[Any],
        settings: Any,
        workers: int = 1,
        args: dict[str, Any] | None = None,
        advance: Callable[[int], None] = lambda n: None,
        engine: str = "local",
        address: str | None = None,
    ) -> Any:
        """Ingest ``items``. ``engine``: ``local`` (a pool of ``workers`` processes) or
        ``ray`` (one pool of Ray actors per run, on the cluster at ``address``, else a local
        Ray; ``workers`` actors, 0 or less: one per cluster CPU)."""
        from faceledger.core.erasure import purge_expired
        from faceledger.gallery.erasure import load_blocklist
        from faceledger.gallery.ingest import Ingestor, check_engine

        check_engine(engine, address)
        self.require(actor, "ingest")
        ingestor: Ingestor
        if engine == "ray":
            from faceledger.gallery.ingest_ray import RayIngestor

            ingestor = RayIngestor(
                self.store, settings, address=address, concurrency=workers if workers > 0 else None
            )
        else:
            ingestor = Ingestor(self.store, settings, workers=workers)
        pol = self.policy()
        purge_expired(self, SYSTEM)
        ingestor.blocklist = load_blocklist(self.store)
        ingestor.optout_threshold = (
            optout_threshold(pol, self.store.model_id()) if len(ingestor.blocklist) else 1.0
        )
        ingestor.retention_days = pol.image_retention_days
        args = {**(args or {}), "engine": engine} | ({"address": address} if address else {})
        self.record(actor, "ingest.start", args.get("source", ""), args=args)
        try:
            summary = ingestor.run(items, args, advance)
        except BaseException as exc:
            # Every ingest.start gets its end: what stopped it (what was committed before
            # stays, and its images are in the ingest_runs row marked interrupted). When the
            # database itself cannot be written, this entry cannot be either.
            with contextlib.suppress(Exception):
                self.record(
                    actor,
                    "ingest.failed",
                    args.get("source", ""),
                    error=type(exc).__name__,
                    message=str(exc)[:500],
                )
            raise
        self.record(
            actor,
            "ingest",
            args.get("source", ""),
            run_id=summary.run_id,
            seen=summary.seen,
            new=summary.new,
            duplicates=summary.duplicates,
            faces=summary.faces,
            opted_out=summary.opted_out,
            failures=dict(summary.failures),
        )
        self._searcher = None
        return summary

    def rebuild_index(self, actor: Actor) -> tuple[int, str]:
        """Rebuild the vector index from the database (admin); (faces, index kind)."""
        from faceledger.gallery.index import IndexManager

        self.require(actor, "manage_index")
        mgr = IndexManager(self.store)
        index = mgr.rebuild()
        mgr.save()
        self.record(actor, "index.rebuild", "index", faces=len(index))
        return len(index), index.kind

    def stats(self, actor: Actor) -> dict[str, Any]:
        self.require(actor, "stats")
        s = self.store.stats()
        s["ledger_entries"] = audit.count(self.store)
        if not actor.can("manage_users"):  # where the data lives is the operators' business
            s.pop("data_dir", None)
        return s

    def gallery_size(self, actor: Actor) -> int:
        """Faces in the gallery, for those who may search it (the search page shows it)."""
        self.require(actor, "search")
        return self.store.face_count()

    def apply_retention(self) -> dict[str, int]:
        """Retention as the system applies it (at server start and at every ingest): gallery
        images and retained probes past their expiry are purged, and the purge recorded."""
        from faceledger.core.erasure import purge_expired

        return purge_expired(self, SYSTEM)

    def purge(self, actor: Actor) -> dict[str, int]:
        from faceledger.core.erasure import purge_expired

        self.require(actor, "purge")
        return purge_expired(self, actor)

    def erase(self, actor: Actor, **kwargs: Any) -> Any:
        """Erase faces for good (see :func:`faceledger.core.erasure.erase`); a reason is
        required, and erasure by photo confirms faces from :meth:`erase_preview`
        (``preview_id``)."""
        from faceledger.core.erasure import erase

        return erase(self, actor, **kwargs)

    def erase_preview(
        self, actor: Actor, probe: bytes, threshold: float | None = None
    ) -> dict[str, Any]:
        """The faces an erasure by the subject's photo would take, recorded, for one hour."""
        from faceledger.core.erasure import erase_preview

        return erase_preview(self, actor, probe, threshold)

    def get_erase_preview(self, actor: Actor, preview_id: int) -> dict[str, Any]:
        from faceledger.core.erasure import get_preview

        return get_preview(self, actor, preview_id)

    def erase_preview_crop(self, actor: Actor, preview_id: int, face_id: int) -> Path:
        """A crop of a face in a preview, for the admin who made it, while it is open."""
        from faceledger.core.erasure import preview_crop_path

        return preview_crop_path(self, actor, preview_id, face_id)
