"""Background jobs for the HTTP server: gallery ingests with progress you can poll.

Jobs run one at a time, in submission order, on a single worker thread of the server
process, and go through :meth:`faceledger.core.Faceledger.ingest` like the CLI does (so
permissions, the opt-out list, retention and the ledger apply unchanged). Job state lives
in memory: after a restart the jobs list is empty, but every run is still in the database
(``ingest_runs``) and in the ledger. Uploaded files are kept in ``<data dir>/uploads/<job>``
only while their job runs.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError

from faceledger.accounts.auth import Actor, AuthError, PermissionDenied
from faceledger.db.store import ModelMismatchError, now_iso
from faceledger.errors import RefusedError
from faceledger.gallery.sources import SourceError, SourceItem, check_provenance, iter_paths

if TYPE_CHECKING:
    from faceledger.core.gallery import GalleryDoor
    from faceledger.gallery.ingest import PipelineSettings

log = logging.getLogger("faceledger.core.jobs")

UPLOADS_DIR = "uploads"
MAX_ERRORS_SHOWN = 50
MAX_JOBS_KEPT = 200


class JobCancelled(Exception):
    """Raised inside a running job when it was asked to stop."""


@dataclass
class Job:
    id: str
    kind: str
    created_by: str
    created_at: str
    args: dict[str, Any]
    status: str = "queued"  # queued | counting | running | done | failed | cancelled
    total: int | None = None
    done: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    summary: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    cancel_requested: bool = False
    # not shown: what the worker needs
    actor: Actor | None = field(default=None, repr=False)
    paths: list[Path] = field(default_factory=list, repr=False)
    upload_dir: Path | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def as_dict(self) -> dict[str, Any]:
        summary = None
        if self.summary is not None:
            summary = dict(self.summary)
            errors = summary.get("errors") or []
            summary["errors"] = errors[:MAX_ERRORS_SHOWN]
            summary["errors_not_shown"] = max(0, len(errors) - MAX_ERRORS_SHOWN)
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "total": self.total,
            "done": self.done,
            "progress": (None if not self.total else round(min(1.0, self.done / self.total), 4)),
            "args": self.args,
            "summary": summary,
            "error": self.error,
        }


class JobManager:
    """A FIFO of ingest jobs run by one worker thread."""

    def __init__(
        self,
        fl: GalleryDoor,
        workers: int = 1,
        settings_factory: Callable[[], PipelineSettings] | None = None,
        ingest_roots: tuple[Path, ...] = (),
    ) -> None:
        self.fl = fl
        self.workers = max(1, workers)
        # Server-side folders an ingest may name (FACELEDGER_INGEST_ROOTS); none: uploads only.
        self.ingest_roots = tuple(Path(r).resolve() for r in ingest_roots)
        self._settings_factory = settings_factory
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.uploads_root = fl.data_dir / UPLOADS_DIR
        # Uploads left by jobs of an earlier server process can never run now.
        shutil.rmtree(self.uploads_root, ignore_errors=True)

    # -- submission ------------------------------------------------------------------------
    def start_ingest(
        self,
        actor: Actor,
        source: str,
        legal_basis: str,
        expires_at: str | None,
        server_path: str = "",
        save_uploads: Callable[[Path], list[str]] | None = None,
    ) -> Job:
        """Queue an ingest of a server-side path under the allowed roots, or of uploaded
        files (``save_uploads`` writes them into the folder it is given and returns their
        names), never both. Refused before anything is queued: a user who may not ingest,
        missing provenance (:func:`check_provenance`), a path outside the roots (recorded as
        ``ingest.path_refused``) or one that does not exist."""
        self.fl.require(actor, "ingest", source)
        source, basis, expiry = check_provenance(source, legal_basis, expires_at)
        assert basis is not None  # required above
        if bool(server_path.strip()) == (save_uploads is not None):
            raise RefusedError("nothing-to-ingest", "give either a server-side path or files")
        if save_uploads is None:
            path = self._allowed_path(actor, server_path.strip())
            return self._submit(actor, [path], source, basis, expiry)
        job_id, folder = self._new_upload_dir()
        try:
            names = save_uploads(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._submit(
            actor,
            [folder / n for n in names],  # each file: archives are opened, not skipped
            source,
            basis,
            expiry,
            upload_dir=folder,
            job_id=job_id,
            shown_paths=[f"upload:{n}" for n in names],
        )

    def _allowed_path(self, actor: Actor, typed: str) -> Path:
        raw = Path(typed)
        resolved = raw.resolve()
        roots = self.ingest_roots
        if not raw.is_absolute() or not any(resolved.is_relative_to(r) for r in roots):
            self.fl.record(actor, "ingest.path_refused", str(raw), roots=[str(r) for r in roots])
            raise RefusedError(
                "path-not-allowed",
                "server-side paths must be absolute and inside an allowed root "
                "(FACELEDGER_INGEST_ROOTS)" + ("; none is configured" if not roots else ""),
            )
        if not resolved.exists():
            raise RefusedError("no-such-path", f"{raw} does not exist on the server")
        return resolved

    def _new_upload_dir(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex[:12]
        path = self.uploads_root / job_id
        path.mkdir(parents=True, exist_ok=False)
        path.chmod(0o700)
        return job_id, path

    def _submit(
        self,
        actor: Actor,
        paths: list[Path],
        source: str,
        legal_basis: str,
        expires_at: str | None = None,
        upload_dir: Path | None = None,
        job_id: str | None = None,
        shown_paths: list[str] | None = None,
    ) -> Job:
        job = Job(
            id=job_id or uuid.uuid4().hex[:12],
            kind="ingest",
            created_by=actor.username,
            created_at=now_iso(),
            args={
                "source": source,
                "legal_basis": legal_basis,
                "expires_at": expires_at,
                "paths": shown_paths if shown_paths is not None else [str(p) for p in paths],
                "uploaded": upload_dir is not None,
            },
            actor=actor,
            paths=list(paths),
            upload_dir=upload_dir,
        )
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="faceledger-jobs", daemon=True
                )
                self._thread.start()
        self._queue.put(job)
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished]
        for j in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
            del self._jobs[j.id]

    # -- queries (for those who may ingest) ------------------------------------------------
    def get(self, actor: Actor, job_id: str) -> Job:
        self.fl.require(actor, "ingest", f"job {job_id}")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RefusedError("no-such-job", f"no job {job_id} (jobs are kept until a restart)")
        return job

    def _all(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)

    def list(self, actor: Actor) -> list[Job]:
        self.fl.require(actor, "ingest", "jobs")
        return self._all()

    def cancel(self, actor: Actor, job_id: str) -> Job:
        """Ask a job to stop after its current image (recorded); what it stored stays."""
        job = self.get(actor, job_id)
        if not job.finished:
            job.cancel_requested = True
        self.fl.record(actor, "ingest.cancel_requested", f"job {job_id}")
        return job

    def shutdown(self, timeout: float = 10.0) -> None:
        for job in self._all():
            if not job.finished:
                job.cancel_requested = True
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    # -- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                status, error = self._run_job(job)
            except Exception:  # never let one job kill the worker
                log.exception("job %s crashed", job.id)
                status = "failed"
                error = {"code": "internal-error", "message": "the job failed unexpectedly"}
            # Uploads go before the job says it is finished, so a finished job left nothing.
            if job.upload_dir is not None:
                shutil.rmtree(job.upload_dir, ignore_errors=True)
            job.error = error
            job.finished_at = now_iso()
            job.status = status

    def _items(self, job: Job) -> Iterator[SourceItem]:
        args = job.args
        for path in job.paths:
            items = iter_paths(
                [path], args["source"], args["legal_basis"], expires_at=args["expires_at"]
            )
            if job.upload_dir is None:
                yield from items
                continue
            # Uploaded files: provenance names what the uploader called the file, not the
            # temporary path it had on this server.
            prefix = str(job.upload_dir) + "/"
            for item in items:
                shown = "upload:" + item.provenance.original_path.removeprefix(prefix)
                item.provenance = replace(item.provenance, original_path=shown)
                item.name = shown
                yield item

    def _run_job(self, job: Job) -> tuple[str, dict[str, str] | None]:
        """Run one job; (final status, error)."""
        from faceledger.gallery.ingest import PipelineSettings

        if job.cancel_requested:
            return "cancelled", None
        assert job.actor is not None
        job.started_at = now_iso()
        job.status = "counting"
        try:
            job.total = sum(1 for _ in self._items(job))
        except SourceError as exc:
            return "failed", {"code": "source-error", "message": str(exc)}
        job.status = "running"

        def advance(n: int) -> None:
            job.done += n
            if job.cancel_requested:
                raise JobCancelled()

        settings = self._settings_factory() if self._settings_factory else PipelineSettings()
        try:
            summary = self.fl.ingest(
                job.actor,
                self._items(job),
                settings,
                workers=self.workers,
                args={**job.args, "via": "api", "job": job.id},
                advance=advance,
            )
        except JobCancelled:
            self.fl.record(job.actor, "ingest.cancelled", job.args["source"], job=job.id)
            return "cancelled", None
        except (AuthError, PermissionDenied) as exc:
            return "failed", {"code": "permission-denied", "message": str(exc)}
        except SourceError as exc:
            return "failed", {"code": "source-error", "message": str(exc)}
        except ModelMismatchError as exc:
            return "failed", {"code": "model-mismatch", "message": str(exc)}
        except (OSError, OperationalError) as exc:  # disk full, read-only, I/O error
            orig = getattr(exc, "orig", None) or exc
            what = getattr(orig, "strerror", None) or str(orig).splitlines()[0]
            return "failed", {
                "code": "storage-error",
                "message": f"the data dir could not be written: {what}; what was stored "
                "before is unchanged, and the same ingest can be run again once it is fixed",
            }
        job.summary = summary.as_dict()
        job.summary["line"] = summary.line()
        return "done", None
