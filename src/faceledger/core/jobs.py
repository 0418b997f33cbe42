"""Background jobs for the HTTP server: gallery ingests with progress you can poll.

A job runs on the server that accepted it, one at a time in submission order on a single
worker thread, and goes through :meth:`faceledger.core.Faceledger.ingest` like the CLI does
(so permissions, the opt-out list, retention and the ledger apply unchanged). Its state is
a row of the ``jobs`` table, so every server on the gallery lists it, shows its progress and
can cancel it: the running server reads ``cancel_requested`` as it goes. A job whose server
stopped beating (``heartbeat``) is shown as failed; what it stored stays, in the database
(``ingest_runs``) and in the ledger. Uploaded files are kept in
``<data dir>/uploads/<job>`` only while their job runs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from faceledger.accounts.auth import Actor, AuthError, PermissionDenied
from faceledger.db.schema import jobs as jobs_table
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
# A server writes the heartbeat of the jobs it holds at least this often (progress, idle waits)
HEARTBEAT_SECONDS = 5.0
# ... and a job whose heartbeat is older than this lost its server
LOST_AFTER_SECONDS = 120.0
SAVE_EVERY_SECONDS = 1.0  # progress and the cancel flag, read and written this often
FINISHED = ("done", "failed", "cancelled")


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
        return self.status in FINISHED

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row.id,
            kind=row.kind,
            created_by=row.created_by,
            created_at=row.created_at,
            args=json.loads(row.args_json),
            status=row.status,
            total=row.total,
            done=row.done,
            started_at=row.started_at,
            finished_at=row.finished_at,
            summary=json.loads(row.summary_json) if row.summary_json else None,
            error=json.loads(row.error_json) if row.error_json else None,
            cancel_requested=bool(row.cancel_requested),
        )

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
        self.runner = f"{socket.gethostname()}:{os.getpid()}"[:200]
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._waiting: list[Job] = []  # accepted here, not started yet
        self.uploads_root = fl.data_dir / UPLOADS_DIR
        self._remove_orphan_uploads()

    def _remove_orphan_uploads(self) -> None:
        """Uploads whose job no live server will run (its server stopped): removed. Those of
        jobs other servers on this data dir are running stay."""
        if not self.uploads_root.is_dir():
            return
        live = {j.id for j in self._rows() if not j.finished}
        for folder in self.uploads_root.iterdir():
            if folder.name not in live:
                shutil.rmtree(folder, ignore_errors=True)

    # -- the jobs table --------------------------------------------------------------------
    def _rows(self, job_id: str | None = None) -> list[Job]:
        """Jobs as the table has them, newest first; one whose server stopped beating is
        marked failed on the way (by whichever server looks first)."""
        q = select(jobs_table).order_by(jobs_table.c.created_at.desc(), jobs_table.c.id)
        if job_id is not None:
            q = q.where(jobs_table.c.id == job_id)
        with self.fl.store.engine.connect() as conn:
            rows = conn.execute(q).all()
        stale = time.time() - LOST_AFTER_SECONDS
        lost = [r.id for r in rows if r.status not in FINISHED and r.heartbeat < stale]
        if lost:
            error = {
                "code": "server-lost",
                "message": "the server running this job stopped before it finished; what it "
                "stored stays, and the same ingest can be run again",
            }
            with self.fl.store.engine.begin() as conn:
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.id.in_(lost), jobs_table.c.heartbeat < stale)
                    .where(jobs_table.c.status.not_in(FINISHED))
                    .values(status="failed", finished_at=now_iso(), error_json=json.dumps(error))
                )
            return self._rows(job_id)
        return [Job.from_row(r) for r in rows]

    def _save(self, job: Job, *fields: str) -> bool:
        """Write the job's ``fields``, and the heartbeat of every job this server holds;
        True when someone asked this one to stop."""
        values: dict[str, Any] = {}
        for name in fields:
            value = getattr(job, name)
            if name in ("summary", "error", "args"):
                values[f"{name}_json"] = None if value is None else json.dumps(value)
            else:
                values[name] = value
        with self.fl.store.engine.begin() as conn:
            if values:
                conn.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(**values))
            self._beat(conn, job.id)
            asked = conn.execute(
                select(jobs_table.c.cancel_requested).where(jobs_table.c.id == job.id)
            ).scalar()
        job.cancel_requested = job.cancel_requested or bool(asked)
        return job.cancel_requested

    def _beat(self, conn: Connection, *also: str) -> None:
        """The heartbeat of the jobs this server holds, the running one and those waiting
        behind it (however long it runs, they are not lost), and of ``also``."""
        with self._lock:
            ids = {j.id for j in self._waiting} | set(also)
        if ids:
            conn.execute(
                update(jobs_table).where(jobs_table.c.id.in_(ids)).values(heartbeat=time.time())
            )

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
        with self.fl.store.engine.begin() as conn:
            conn.execute(
                insert(jobs_table).values(
                    id=job.id,
                    kind=job.kind,
                    status=job.status,
                    created_by=job.created_by,
                    created_at=job.created_at,
                    args_json=json.dumps(job.args),
                    done=0,
                    cancel_requested=False,
                    runner=self.runner,
                    heartbeat=time.time(),
                )
            )
        self._forget_old()
        with self._lock:
            self._waiting.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="faceledger-jobs", daemon=True
                )
                self._thread.start()
        self._queue.put(job)
        return job

    def _forget_old(self) -> None:
        """Keep the newest :data:`MAX_JOBS_KEPT` finished jobs (every run is still in
        ``ingest_runs`` and the ledger). Read, then delete: the writer's transaction."""
        with self.fl.store.writer.begin() as conn:
            old = (
                select(jobs_table.c.id)
                .where(jobs_table.c.status.in_(FINISHED))
                .order_by(jobs_table.c.created_at.desc(), jobs_table.c.id)
                .offset(MAX_JOBS_KEPT)
            )
            ids = list(conn.execute(old).scalars())
            if ids:
                conn.execute(delete(jobs_table).where(jobs_table.c.id.in_(ids)))

    # -- queries (for those who may ingest, on any server) ---------------------------------
    def get(self, actor: Actor, job_id: str) -> Job:
        self.fl.require(actor, "ingest", f"job {job_id}")
        found = self._rows(job_id)
        if not found:
            raise RefusedError("no-such-job", f"no job {job_id}")
        return found[0]

    def list(self, actor: Actor) -> list[Job]:
        self.fl.require(actor, "ingest", "jobs")
        return self._rows()

    def cancel(self, actor: Actor, job_id: str) -> Job:
        """Ask a job to stop after its current image (recorded), whichever server runs it;
        what it stored stays."""
        self.get(actor, job_id)
        with self.fl.store.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status.not_in(FINISHED))
                .values(cancel_requested=True)
            )
        self.fl.record(actor, "ingest.cancel_requested", f"job {job_id}")
        return self.get(actor, job_id)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop this server's jobs: the running one after its current image, the waiting
        ones before they start (all recorded as cancelled in the table)."""
        with self._lock:
            waiting = list(self._waiting)
            thread, self._thread = self._thread, None
        for job in waiting:
            job.cancel_requested = True
        if waiting:
            with self.fl.store.engine.begin() as conn:
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.id.in_([j.id for j in waiting]))
                    .values(cancel_requested=True)
                )
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    # -- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=HEARTBEAT_SECONDS)
            except queue.Empty:
                with self.fl.store.engine.begin() as conn:
                    self._beat(conn)
                continue
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
            with self._lock:
                self._waiting = [j for j in self._waiting if j.id != job.id]
            try:
                self._save(job, "status", "error", "finished_at", "summary", "total", "done")
            except Exception:  # the database is gone: the job shows as lost, later
                log.exception("job %s: its end could not be recorded", job.id)

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

    def _count(self, job: Job) -> int:
        """The photos the job will read, beating (and heeding a cancel) as it counts."""
        total = 0
        saved = time.monotonic()
        for _ in self._items(job):
            total += 1
            if time.monotonic() - saved >= SAVE_EVERY_SECONDS:
                saved = time.monotonic()
                if self._save(job):
                    raise JobCancelled()
        return total

    def _run_job(self, job: Job) -> tuple[str, dict[str, str] | None]:
        """Run one job; (final status, error)."""
        from faceledger.gallery.ingest import PipelineSettings

        assert job.actor is not None
        job.started_at = now_iso()
        job.status = "counting"
        if self._save(job, "status", "started_at"):
            return "cancelled", None
        try:
            job.total = self._count(job)
        except SourceError as exc:
            return "failed", {"code": "source-error", "message": str(exc)}
        except JobCancelled:
            return "cancelled", None
        job.status = "running"
        self._save(job, "status", "total")
        saved = time.monotonic()

        def advance(n: int) -> None:
            nonlocal saved
            job.done += n
            if time.monotonic() - saved >= SAVE_EVERY_SECONDS or job.done == job.total:
                saved = time.monotonic()
                self._save(job, "done")
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
