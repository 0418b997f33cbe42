"""Build the gallery: sources -> decode -> detect -> align/embed -> store -> index.

Decoding, detection and embedding run in a pool of worker processes (``workers``; 1 runs
in-process); the parent reads the sources, skips images it already holds (by SHA-256 of
their bytes), writes files and database rows, and keeps at most a small window of images in
flight, so memory stays bounded on a folder of any size. Every image is committed in its
own transaction: an interrupted ingest loses nothing already committed, and re-running it
picks up where it stopped (the committed images are reported as duplicates).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from faceledger.db.store import Store, atomic_write
from faceledger.gallery.erasure import erased_reason
from faceledger.gallery.index import IndexManager
from faceledger.gallery.parallel import ordered_map
from faceledger.gallery.sources import ItemError, SourceItem
from faceledger.timing import Timings, current, recording, span
from faceledger.types import Face
from faceledger.vision.analysis import FaceAnalyzer
from faceledger.vision.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from faceledger.vision.detection import DEFAULT_MIN_FACE, Detector, create_detector
from faceledger.vision.embedding import DEFAULT_EMBEDDER, Embedder
from faceledger.vision.routing import create_embedder

EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
    "GIF": "gif",
}


@dataclass
class PipelineSettings:
    detector: str = "hog"
    embedder: str = DEFAULT_EMBEDDER
    min_face: int = DEFAULT_MIN_FACE
    upsample: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: int = 1  # inference threads per worker
    model_dir: str | None = None  # operator's ONNX models (SCRFD and/or ArcFace-family)
    device: str = "cpu"
    flip: bool = True  # embed each face with its mirror image (FlipAveraged)

    def make_embedder(self, threads: int | None = None) -> Embedder:
        return create_embedder(
            self.embedder,
            threads=threads or self.threads,
            model_dir=self.model_dir,
            device=self.device,
            flip=self.flip,
        )

    def analyzer(self) -> FaceAnalyzer:
        detector: Detector | None = None
        if self.model_dir:
            from faceledger.vision.onnxmodels import route_model_dir

            if route_model_dir(self.model_dir)[0] is not None:
                detector = create_detector(
                    self.detector,
                    min_face=self.min_face,
                    upsample=self.upsample,
                    model_dir=self.model_dir,
                    device=self.device,
                    threads=self.threads,
                )
        return FaceAnalyzer(
            detector=detector
            or create_detector(self.detector, min_face=self.min_face, upsample=self.upsample),
            embedder=self.make_embedder(),
        )


@dataclass
class Analysed:
    width: int
    height: int
    format: str
    faces: list[Face]
    timings: dict[str, float] = field(default_factory=dict)  # the worker's seconds per stage


@dataclass
class IngestSummary:
    seen: int = 0
    new: int = 0
    duplicates: int = 0
    faces: int = 0
    no_face: int = 0
    opted_out: int = 0  # faces dropped because they match the opt-out list
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    # Seconds per stage, summed over images (faceledger.timing spans): the workers' (decode,
    # detect, embed: landmarks, alignment, embedding, quality and crops) and this process's
    # (read: reading, hashing and the duplicate check; files and database: storing; wait:
    # waiting for the workers; index).
    stages: dict[str, float] = field(default_factory=dict)
    run_id: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    # The Ray engine's: where the work ran (photos per node id, actors, model loads); the
    # local engine leaves it out.
    ray: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.ray is None:
            del d["ray"]
        d["failures"] = dict(self.failures)
        d["failed"] = sum(self.failures.values())
        return d

    def line(self) -> str:
        fails = sum(self.failures.values())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items()))
        return (
            f"{self.seen} images seen, {self.new} new, {self.duplicates} duplicates, "
            f"{self.faces} faces ({self.no_face} images without a face"
            + (f", {self.opted_out} opted-out faces dropped" if self.opted_out else "")
            + f"), {fails} failed"
            + (f" ({reasons})" if reasons else "")
            + f", {self.seconds:.1f} s"
        )


_worker_analyzer: FaceAnalyzer | None = None
_worker_settings: PipelineSettings | None = None


def _init_worker(settings: PipelineSettings) -> None:
    global _worker_analyzer, _worker_settings
    _worker_settings = settings
    _worker_analyzer = settings.analyzer()


def _analyse(data: bytes) -> Analysed:
    assert _worker_analyzer is not None and _worker_settings is not None
    with recording() as rec:
        with span("decode"):
            img = decode_image(data, max_pixels=_worker_settings.max_pixels)
        faces = _worker_analyzer.analyze(img.pixels)
    return Analysed(img.width, img.height, img.format, faces, dict(rec.seconds))


def _analyse_safe(data: bytes) -> Analysed | tuple[str, str]:
    try:
        return _analyse(data)
    except DecodeError as exc:
        return (exc.reason, str(exc))
    except MemoryError:
        return ("out-of-memory", "ran out of memory analysing this image")


ProgressHook = Callable[[int], None]


class Ingestor:
    def __init__(
        self,
        store: Store,
        settings: PipelineSettings | None = None,
        workers: int = 1,
        window: int | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or PipelineSettings()
        self.workers = max(1, workers)
        self.window = window or 4 * self.workers
        self.blocklist = np.zeros((0, 0), np.float32)  # opted-out subjects' embeddings
        self.optout_threshold = 1.0
        self.retention_days = 0  # 0: no expiry unless the provenance carries one

    def _drop_opted_out(self, res: Analysed, data: bytes) -> tuple[list[Face], bytes, int]:
        """Faces not on the opt-out list, the bytes to store (opted-out faces blurred)."""
        if not len(self.blocklist) or not res.faces:
            return res.faces, data, 0
        sims = np.stack([f.embedding for f in res.faces]) @ self.blocklist.T
        keep = sims.max(axis=1) < self.optout_threshold
        dropped = [f for f, k in zip(res.faces, keep, strict=True) if not k]
        if not dropped:
            return res.faces, data, 0
        kept = [f for f, k in zip(res.faces, keep, strict=True) if k]
        if kept:
            from faceledger.gallery.erasure import blur_regions, crops_from

            data = blur_regions(data, [f.detection.bbox.as_list() for f in dropped])
            # the kept faces' crops from the blurred pixels: none may show an opted-out face
            crops = crops_from(data, [f.detection.bbox.as_list() for f in kept])
            kept = [replace(f, crop_jpeg=c) for f, c in zip(kept, crops, strict=True)]
        return kept, data, len(dropped)

    def _store_result(
        self, item: SourceItem, sha: str, data: bytes, res: Analysed, summary: IngestSummary
    ) -> None:
        kept, data, dropped = self._drop_opted_out(res, data)
        summary.opted_out += dropped
        if dropped and not kept:
            return  # only opted-out people in this photo: nothing of it is kept
        res = Analysed(res.width, res.height, res.format, kept)
        prov = item.provenance
        if self.retention_days and not prov.expires_at:
            expiry = datetime.now(UTC) + timedelta(days=self.retention_days)
            prov = replace(prov, expires_at=expiry.isoformat(timespec="seconds"))
        ext = EXTENSIONS.get(res.format, "img")
        rel_image = f"images/{sha[:2]}/{sha}.{ext}"
        rows = []
        try:
            with span("files"):
                atomic_write(self.store.data_dir / rel_image, data)
                for i, face in enumerate(res.faces):
                    rel_crop = f"crops/{sha[:2]}/{sha}_{i}.jpg"
                    atomic_write(self.store.data_dir / rel_crop, face.crop_jpeg)
                    rows.append((face, rel_crop))
            with span("database"):
                self.store.add_image(
                    sha,
                    res.width,
                    res.height,
                    res.format,
                    len(data),
                    rel_image,
                    prov,
                    rows,
                    summary.run_id,
                )
        except IntegrityError:
            if not self.store.has_image(sha):
                raise
            # Another ingest stored this photo since we checked: it is a duplicate (its
            # files are the same bytes, written atomically by both).
            self.store.add_provenance(sha, item.provenance, summary.run_id)
            summary.duplicates += 1
            return
        except BaseException:
            # A write failed (disk full, read-only...): leave no files the database does
            # not know, unless the image is known after all (another ingest stored it).
            with contextlib.suppress(Exception):
                if not self.store.has_image(sha):
                    crops = (f"crops/{sha[:2]}/{sha}_{i}.jpg" for i in range(len(res.faces)))
                    for rel in [rel_image, *crops]:
                        (self.store.data_dir / rel).unlink(missing_ok=True)
            raise
        summary.new += 1
        summary.faces += len(res.faces)
        summary.no_face += int(not res.faces)

    def _fail(self, summary: IngestSummary, item: SourceItem, reason: str, msg: str) -> None:
        summary.failures[reason] += 1
        if len(summary.errors) < 1000:
            summary.errors.append({"item": item.name, "reason": reason, "message": msg})

    def _read(
        self, items: Iterable[SourceItem], summary: IngestSummary, advance: ProgressHook
    ) -> Iterator[tuple[SourceItem, str, bytes]]:
        """New images only: duplicates and unreadable items are handled here."""
        in_run: set[str] = set()
        for item in items:
            summary.seen += 1
            with span("read"):
                new = self._read_one(item, in_run, summary, advance)
            if new is not None:
                yield item, *new

    def _read_one(
        self, item: SourceItem, in_run: set[str], summary: IngestSummary, advance: ProgressHook
    ) -> tuple[str, bytes] | None:
        """The item's SHA-256 and bytes if it is new to the gallery and to this run; else
        None, with the failure, erasure or duplicate recorded."""
        try:
            data = item.read()
        except ItemError as exc:
            self._fail(summary, item, exc.reason, str(exc))
            advance(1)
            return None
        sha = hashlib.sha256(data).hexdigest()
        erased = erased_reason(self.store, sha)
        if erased is not None:
            # this very file was erased: it does not come back (nor its provenance)
            self._fail(
                summary,
                item,
                "erased",
                f"this file was erased from the gallery ({erased}); it is not ingested again",
            )
            advance(1)
            return None
        if sha in in_run or self.store.has_image(sha):
            summary.duplicates += 1
            if sha not in in_run:
                self.store.add_provenance(sha, item.provenance, summary.run_id)
            advance(1)
            return None
        in_run.add(sha)
        return sha, data

    def run(
        self,
        items: Iterable[SourceItem],
        args: dict[str, Any] | None = None,
        advance: ProgressHook = lambda n: None,
    ) -> IngestSummary:
        t0 = time.perf_counter()
        summary = IngestSummary()
        probe_embedder = self.settings.make_embedder(threads=1)
        self.store.bind_model(probe_embedder.model_id, probe_embedder.dim)
        del probe_embedder
        summary.run_id = self.store.start_run(args or {})
        status = "done"
        mine = Timings()  # this process's stages (the workers' come with their results)
        try:
            with recording(mine):
                self._run_items(items, summary, advance)
        except BaseException:
            status = "interrupted"
            raise
        finally:
            summary.seconds = time.perf_counter() - t0
            _add_up(summary.stages, mine.seconds)
            self.store.finish_run(summary.run_id, summary.as_dict(), status=status)
            t1 = time.perf_counter()
            IndexManager(self.store).sync()
            summary.stages["index"] = time.perf_counter() - t1
        return summary

    def _handle(
        self,
        item: SourceItem,
        sha: str,
        data: bytes,
        res: Analysed | tuple[str, str],
        summary: IngestSummary,
    ) -> None:
        if isinstance(res, tuple):
            self._fail(summary, item, res[0], res[1])
        else:
            _add_up(summary.stages, res.timings)
            self._store_result(item, sha, data, res, summary)

    def _run_items(
        self, items: Iterable[SourceItem], summary: IngestSummary, advance: ProgressHook
    ) -> None:
        work = (
            ((item, sha, data), data) for item, sha, data in self._read(items, summary, advance)
        )
        t0 = time.perf_counter()
        rec = current()
        before = 0.0 if rec is None else sum(rec.seconds.values())
        for (item, sha, data), res in ordered_map(
            _analyse_safe, work, self.workers, _init_worker, (self.settings,), self.window
        ):
            self._handle(item, sha, data, res, summary)
            advance(1)
        if self.workers > 1 and rec is not None:  # the rest of the loop: waiting for workers
            spent = sum(rec.seconds.values()) - before
            rec.add("wait", max(0.0, time.perf_counter() - t0 - spent))


ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None) -> None:
    """ValueError unless ``engine`` is known and ``address`` only comes with ``ray``."""
    if engine not in ENGINES:
        raise ValueError(f"unknown --engine {engine!r}: use local or ray")
    if address and engine != "ray":
        raise ValueError("--address is for the ray engine: add --engine ray")


def _add_up(total: dict[str, float], more: dict[str, float]) -> None:
    for stage, seconds in more.items():
        total[stage] = total.get(stage, 0.0) + seconds


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
