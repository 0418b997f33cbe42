"""The ``faceledger`` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from faceledger import config

app = typer.Typer(
    help="faceledger: face search over a lawfully held gallery, with accountability.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Evaluate accuracy on public benchmarks.", no_args_is_help=True)
calibrate_app = typer.Typer(help="Fit score calibrations.", no_args_is_help=True)
index_app = typer.Typer(help="Manage the vector index.", no_args_is_help=True)
datasets_app = typer.Typer(help="Fetch evaluation datasets.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(calibrate_app, name="calibrate")
app.add_typer(index_app, name="index")
app.add_typer(datasets_app, name="datasets")

err = Console(stderr=True)
out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (else $FACELEDGER_DATA, else ./faceledger-data)."
    ),
]
Detector = Annotated[str, typer.Option(help="Face detector: hog, cnn, or hog+cnn.")]
Embedder = Annotated[str, typer.Option(help="Embedder backend: onnx or dlib.")]
MinFace = Annotated[int, typer.Option(help="Smallest face kept, in pixels (box side).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool = True) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )
    with progress:
        progress.add_task(label, total=total)
        yield progress


def _store(data_dir: Path | None) -> Any:
    from faceledger.store import Store

    return Store(config.data_dir(data_dir))


def _analyzer(detector: str, embedder: str, min_face: int, threads: int | None = None) -> Any:
    from faceledger.ingest import PipelineSettings

    return PipelineSettings(
        detector=detector, embedder=embedder, min_face=min_face, threads=threads or 1
    ).analyzer()


def _dump(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files, folders, zip/tar archives.")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="CSV/JSONL manifest: path, source_url, captured_at, legal_basis, subject_label."
        ),
    ] = None,
    source: Annotated[str, typer.Option(help="Source name recorded as provenance.")] = "local",
    legal_basis: Annotated[
        str | None,
        typer.Option(
            help="Legal basis for holding these photos (required unless manifest rows give one)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (default: one per core).")] = 0,
    detector: Detector = "hog",
    embedder: Embedder = "default",
    min_face: MinFace = 40,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Add photos to the gallery (re-ingesting a photo is a no-op that says so)."""
    from faceledger.embedding import DEFAULT_EMBEDDER
    from faceledger.ingest import Ingestor, PipelineSettings, default_workers
    from faceledger.sources import SourceError, iter_manifest, iter_paths
    from faceledger.store import ModelMismatchError

    if not paths and manifest is None:
        fail("give photos to ingest: PATH... and/or --manifest FILE")
    if paths and not legal_basis:
        fail("--legal-basis is required: record why you may hold these photos")
    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder

    def items() -> Iterator[Any]:
        if paths:
            yield from iter_paths(list(paths), source, legal_basis or "")
        if manifest is not None:
            yield from iter_manifest(manifest, source, legal_basis)

    try:
        total = sum(1 for _ in items())
    except SourceError as exc:
        fail(str(exc))
    store = _store(data_dir)
    settings = PipelineSettings(detector=detector, embedder=embedder, min_face=min_face)
    n_workers = workers or default_workers()
    args = {
        "paths": [str(p) for p in paths or []],
        "manifest": str(manifest) if manifest else None,
        "source": source,
        "detector": detector,
        "embedder": embedder,
        "workers": n_workers,
    }
    try:
        with progress_bar("ingest", total, enabled=not as_json) as bar:
            summary = Ingestor(store, settings, workers=n_workers).run(
                items(), args, advance=lambda n: bar.advance(bar.task_ids[0], n)
            )
    except ModelMismatchError as exc:
        fail(str(exc))
    except SourceError as exc:
        fail(str(exc))
    if as_json:
        _dump(summary.as_dict())
        return
    for e in summary.errors[:50]:
        err.print(f"[yellow]skipped[/] {e['item']}: {e['message']} [dim]({e['reason']})[/]")
    if len(summary.errors) > 50:
        err.print(f"... and {len(summary.errors) - 50} more (see --json)")
    out.print(summary.line())


def _searcher(data_dir: Path | None, detector: str, min_face: int) -> Any:
    from faceledger.embedding import create_embedder_for_model
    from faceledger.search import Searcher

    store = _store(data_dir)
    model = store.model_id()
    if model is None:
        fail(f"the gallery in {store.data_dir} is empty: run `faceledger ingest` first")
    from faceledger.analysis import FaceAnalyzer
    from faceledger.detection import create_detector

    analyzer = FaceAnalyzer(
        detector=create_detector(detector, min_face=min_face),
        embedder=create_embedder_for_model(model),
    )
    return Searcher(store, analyzer)


@app.command()
def search(
    photo: Annotated[Path, typer.Argument(help="Probe photo.")],
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, max=1000, help="Candidates per face.")
    ] = 10,
    detector: Detector = "hog",
    min_face: MinFace = 20,
    data_dir: DataDir = None,
    as_json: JsonOut = False,
) -> None:
    """Find the faces in PHOTO and list ranked gallery candidates for each."""
    from faceledger.decode import DecodeError
    from faceledger.search import LEADS_NOTICE, NoFaceError

    try:
        data = photo.read_bytes()
    except OSError as exc:
        fail(f"{photo}: cannot read probe ({exc.strerror or exc})")
    searcher = _searcher(data_dir, detector, min_face)
    try:
        result = searcher.search_bytes(data, top_k=top_k)
    except DecodeError as exc:
        fail(f"{photo}: {exc}")
    except NoFaceError as exc:
        if as_json:
            _dump({"probe": str(photo), "faces": [], "error": str(exc)})
        fail(f"{photo}: {exc}", code=2)
    if as_json:
        _dump(result.as_dict())
        return
    out.print(f"[bold yellow]{LEADS_NOTICE}[/]")
    out.print(
        f"probe {photo} (sha256 {result.probe_sha256[:16]}...), "
        f"{len(result.faces)} face(s), gallery of {result.gallery_faces} faces"
    )
    for f in result.faces:
        t = Table(title=f"face {f.face_index} at {f.bbox} (quality {f.quality:.2f})")
        for col in ("rank", "score", "est FMR", "exp. false ≥ score", "subject", "source", "image"):
            t.add_column(col)
        for c in f.candidates:
            p = c.provenance[0] if c.provenance else {}
            fmr = (
                "n/a"
                if c.est_fmr is None
                else f"{c.est_fmr:.1e}" + ("*" if c.est_fmr_extrapolated else "")
            )
            exp = (
                "n/a"
                if c.expected_false_candidates is None
                else f"{c.expected_false_candidates:.3g}"
            )
            t.add_row(
                str(c.rank),
                f"{c.score:.3f}",
                fmr,
                exp,
                str(p.get("subject_label") or ""),
                str(p.get("source_url") or p.get("original_path") or ""),
                c.image_path,
            )
        out.print(t)
    out.print("[dim]* estimated beyond the calibration data (extrapolated tail)[/]")


@app.command()
def embed(
    photo: Annotated[Path, typer.Argument(help="Photo to analyse.")],
    detector: Detector = "hog",
    embedder: Embedder = "default",
    min_face: MinFace = 20,
    as_json: JsonOut = True,
) -> None:
    """Faces found in PHOTO: box, 5 landmarks, quality and embedding."""
    from faceledger.decode import DecodeError, decode_image
    from faceledger.embedding import DEFAULT_EMBEDDER

    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    try:
        img = decode_image(photo.read_bytes())
    except OSError as exc:
        fail(f"{photo}: cannot read ({exc.strerror or exc})")
    except DecodeError as exc:
        fail(f"{photo}: {exc}")
    analyzer = _analyzer(detector, embedder, min_face)
    faces = analyzer.analyze(img.pixels)
    doc = {
        "photo": str(photo),
        "width": img.width,
        "height": img.height,
        "model_id": analyzer.model_id,
        "faces": [
            {
                "bbox": f.detection.bbox.as_list(),
                "detector": f.detection.detector,
                "det_score": f.detection.score,
                "landmarks": f.detection.landmarks.tolist(),
                "quality": f.quality,
                "size": f.size,
                "sharpness": round(f.sharpness, 3),
                "yaw": round(f.yaw, 4),
                "embedding": [round(float(x), 7) for x in f.embedding],
            }
            for f in faces
        ],
    }
    _dump(doc)
    if not faces:
        raise typer.Exit(2)


@app.command()
def stats(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """What the gallery holds."""
    s = _store(data_dir).stats()
    if as_json:
        _dump(s)
        return
    for k, v in s.items():
        out.print(f"{k}: {v}")


@index_app.command("rebuild")
def index_rebuild(data_dir: DataDir = None) -> None:
    """Rebuild the vector index from the database (the source of truth)."""
    from faceledger.index import IndexManager

    mgr = IndexManager(_store(data_dir))
    index = mgr.rebuild()
    mgr.save()
    out.print(f"index rebuilt: {len(index)} faces ({index.kind})")


def _lfw_setup(
    lfw_dir: Path, detector: str, embedder: str, data_dir: Path | None
) -> tuple[Any, Any, Path]:
    from functools import partial

    from faceledger.embedding import DEFAULT_EMBEDDER, create_embedder

    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    model_id = create_embedder(embedder, threads=1).model_id
    factory = partial(_analyzer_nocrop, detector, embedder)
    cache = (
        config.data_dir(data_dir)
        / "eval"
        / f"lfw_{model_id}_{embedder}_{detector.replace('+', '-')}.npz"
    )
    return factory, model_id, cache


def _analyzer_nocrop(detector: str, embedder: str) -> Any:
    a = _analyzer(detector, embedder, 20)
    a.with_crops = False
    return a


@eval_app.command("lfw")
def eval_lfw(
    lfw_dir: Annotated[Path, typer.Option(help="LFW folder (deep-funneled images + pairs.txt).")],
    detector: Detector = "hog+cnn",
    embedder: Embedder = "default",
    workers: Annotated[int, typer.Option(help="Worker processes (default: one per core).")] = 0,
    data_dir: DataDir = None,
    no_cache: Annotated[bool, typer.Option(help="Recompute embeddings.")] = False,
    as_json: JsonOut = False,
) -> None:
    """LFW View-2 verification and a 1:N identification protocol (see evaluation.py)."""
    from faceledger.evaluation import run_lfw
    from faceledger.ingest import default_workers

    factory, model_id, cache = _lfw_setup(lfw_dir, detector, embedder, data_dir)
    try:
        with progress_bar("embed LFW", None, enabled=not as_json) as bar:
            tid = bar.task_ids[0]
            res = run_lfw(
                lfw_dir,
                factory,
                model_id,
                None if no_cache else cache,
                workers or default_workers(),
                advance=lambda n: bar.advance(tid, n),
                set_total=lambda n: bar.update(tid, total=n),
            )
    except FileNotFoundError as exc:
        fail(str(exc))
    res["detector"] = detector
    if as_json:
        _dump(res)
        return
    for k, v in res.items():
        out.print(f"{k}: {v}")


@calibrate_app.command("lfw")
def calibrate_lfw(
    lfw_dir: Annotated[Path, typer.Option(help="LFW folder.")],
    out_file: Annotated[Path, typer.Option("--out", help="Calibration JSON to write.")],
    detector: Detector = "hog+cnn",
    embedder: Embedder = "default",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Fit the score->FMR calibration on LFW's calibration split (a quarter of the people)."""
    from faceledger import calibration
    from faceledger.evaluation import LfwDataset, calibration_names, embed_lfw, impostor_scores
    from faceledger.ingest import default_workers

    factory, model_id, cache = _lfw_setup(lfw_dir, detector, embedder, data_dir)
    ds = LfwDataset.load(lfw_dir)
    with progress_bar("embed LFW", len(ds.all_images())) as bar:
        table = embed_lfw(
            ds,
            factory,
            cache,
            workers or default_workers(),
            advance=lambda n: bar.advance(bar.task_ids[0], n),
        )
    names = calibration_names(ds)
    scores = impostor_scores(table, names)
    calib = calibration.fit(
        scores,
        model_id,
        {
            "dataset": "LFW deep-funneled",
            "split": "people with sha256(name) % 4 == 0",
            "people": len(names),
            "detector": detector,
        },
    )
    calib.save(out_file)
    out.print(f"{len(scores)} impostor pairs from {len(names)} people -> {out_file}")
    for fmr in (1e-3, 1e-4, 1e-5, 1e-6):
        out.print(f"  FMR {fmr:.0e}: score {calib.threshold_for(fmr):.4f}")


@datasets_app.command("fetch")
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="Dataset name: lfw.")],
    dest: Annotated[Path, typer.Option(help="Where to put it.")] = Path("data/lfw"),
) -> None:
    """Download a public evaluation dataset from its official source, checksum-verified."""
    from faceledger.datasets import ChecksumError, fetch_lfw

    if name != "lfw":
        fail(f"unknown dataset {name!r}; available: lfw")
    try:
        fetch_lfw(dest, progress=lambda n, d, t: err.print(f"\r{n}: {d >> 20} MiB", end=""))
    except ChecksumError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"download failed: {exc}")
    out.print(f"LFW ready in {dest}")


if __name__ == "__main__":
    app()
