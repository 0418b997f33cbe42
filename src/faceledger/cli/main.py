"""The ``faceledger`` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
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
from faceledger.cli.bench import bench_app
from faceledger.vision.detection import DEFAULT_MIN_FACE

app = typer.Typer(
    help="faceledger: face search over a lawfully held gallery, with accountability.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    index: Annotated[
        str | None,
        typer.Option(
            "--index",
            envvar="FACELEDGER_INDEX",
            help="Vector index: local FAISS files in the data dir (default), or a Milvus "
            "server milvus://host:port, or a Milvus Lite file *.db.",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="FACELEDGER_DB",
            help="Gallery database: SQLite in the data dir (default), or a PostgreSQL "
            "database postgresql://user@host/db, which a new data dir records and keeps.",
        ),
    ] = None,
) -> None:
    """faceledger: face search over a lawfully held gallery, with accountability."""
    import os

    if index:
        os.environ["FACELEDGER_INDEX"] = index  # read by IndexManager, also in worker processes
    if db:
        os.environ["FACELEDGER_DB"] = db  # read by Store, also in the server and its jobs


eval_app = typer.Typer(help="Evaluate accuracy on public benchmarks.", no_args_is_help=True)
calibrate_app = typer.Typer(help="Fit score calibrations.", no_args_is_help=True)
index_app = typer.Typer(help="Manage the vector index.", no_args_is_help=True)
datasets_app = typer.Typer(help="Fetch evaluation datasets.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users and roles (admin).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
policy_app = typer.Typer(help="Search policy (admin).", no_args_is_help=True)
cases_app = typer.Typer(help="Case requests and supervisor approval.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident ledger and reports.", no_args_is_help=True)
account_app = typer.Typer(help="Your own account (any role).", no_args_is_help=True)
for sub, name in (
    (bench_app, "bench"),
    (eval_app, "eval"),
    (calibrate_app, "calibrate"),
    (index_app, "index"),
    (datasets_app, "datasets"),
    (users_app, "users"),
    (tokens_app, "tokens"),
    (policy_app, "policy"),
    (cases_app, "cases"),
    (audit_app, "audit"),
    (account_app, "account"),
):
    app.add_typer(sub, name=name)

err = Console(stderr=True, soft_wrap=True)
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
ModelDir = Annotated[
    str | None,
    typer.Option(
        "--model-dir",
        envvar="FACELEDGER_MODEL_DIR",
        help="Folder of operator-supplied ONNX models (SCRFD detector and/or "
        "ArcFace-family recogniser), recognised by their graphs.",
    ),
]
Device = Annotated[str, typer.Option(help="Inference device for ONNX models: cpu or cuda.")]
NoFlip = Annotated[
    bool,
    typer.Option(
        "--no-flip",
        help="Embed each face alone, without averaging in its mirror image (the plain "
        "model; its vectors are a different space from the default ones).",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
AsUser = Annotated[
    str | None,
    typer.Option(
        "--as",
        envvar="FACELEDGER_USER",
        help="Run as this user (password from $FACELEDGER_PASSWORD or a prompt; "
        "or set $FACELEDGER_TOKEN instead).",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
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


def open_data_dir(data_dir: Path | None) -> Any:
    """The data dir's :class:`Faceledger`, or a clear exit if its storage cannot be used."""
    from sqlalchemy.exc import OperationalError

    from faceledger.core import Faceledger
    from faceledger.db.store import DatabaseBindingError

    path = config.data_dir(data_dir)
    try:
        return Faceledger(path)
    except DatabaseBindingError as exc:
        fail(str(exc))
    except (OSError, OperationalError) as exc:
        if not is_storage_error(path, exc):
            raise
        fail(storage_problem(path, exc), STORAGE_EXIT)


@contextmanager
def session(
    data_dir: Path | None, as_user: str | None, password: str | None = None
) -> Iterator[tuple[Any, Any]]:
    """Open the data dir, authenticate, and turn the core's refusals into clear errors.
    ``password``: for --as, when the command already has it (else $FACELEDGER_PASSWORD or
    a prompt)."""
    import os

    from sqlalchemy.exc import OperationalError

    from faceledger.accounts.auth import AuthError, PermissionDenied
    from faceledger.core import PolicyTamperedError, RefusedError
    from faceledger.errors import ModelMismatchError
    from faceledger.vision.decode import DecodeError

    fl = open_data_dir(data_dir)
    try:
        token = os.environ.get("FACELEDGER_TOKEN")
        if as_user is None and token:
            actor = fl.authenticate_token(token)
        else:
            if not fl.has_users():
                fail(f"{fl.data_dir} has no users yet: run `faceledger init --admin NAME`", 3)
            if as_user is None:
                fail("say who you are: --as USER (or set $FACELEDGER_USER / $FACELEDGER_TOKEN)", 3)
            if password is None:
                password = os.environ.get("FACELEDGER_PASSWORD")
            if password is None:
                password = typer.prompt(f"password for {as_user}", hide_input=True, err=True)
            actor = fl.login(as_user, password, "cli")
        yield fl, actor
    except AuthError as exc:
        fail(str(exc), 3)
    except PermissionDenied as exc:
        fail(f"permission denied: {exc}", 4)
    except RefusedError as exc:
        fail(f"refused ({exc.code}): {exc}", 4)
    except PolicyTamperedError as exc:
        fail(str(exc), 5)
    except (DecodeError, ModelMismatchError, ValueError) as exc:
        fail(str(exc))
    except (OSError, OperationalError) as exc:  # disk full, read-only, I/O error
        if not is_storage_error(fl.data_dir, exc):
            raise
        fail(storage_problem(fl.data_dir, exc), STORAGE_EXIT)
    finally:
        fl.store.close()


STORAGE_EXIT = 6  # exit code: the data dir cannot be written


def is_storage_error(data_dir: Path, exc: BaseException) -> bool:
    """Whether ``exc`` says the data dir (files or database) cannot be written, as opposed
    to, say, a missing input file given on the command line."""
    import errno

    if not isinstance(exc, OSError):
        return True  # the database's own OperationalError: full, read-only, locked...
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES):
        return False
    where = exc.filename
    return where is None or Path(where).resolve().is_relative_to(Path(data_dir).resolve())


def storage_problem(data_dir: Path, exc: BaseException) -> str:
    """A clear message for a data dir that cannot be written (disk full, read-only...)."""
    import os

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


def _analyzer(
    detector: str,
    embedder: str,
    min_face: int,
    threads: int | None = None,
    model_dir: str | None = None,
    device: str = "cpu",
    flip: bool = True,
) -> Any:
    from faceledger.gallery.ingest import PipelineSettings

    try:
        return PipelineSettings(
            detector=detector,
            embedder=embedder,
            min_face=min_face,
            threads=threads or 1,
            model_dir=model_dir,
            device=device,
            flip=flip,
        ).analyzer()
    except ValueError as exc:  # unknown names, unusable model files
        fail(str(exc))


def _dump(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


@app.command()
def init(
    admin: Annotated[str, typer.Option("--admin", help="User name of the first admin.")],
    data_dir: DataDir = None,
) -> None:
    """Create the data dir's first admin (password from $FACELEDGER_PASSWORD or a prompt)."""
    import os

    from faceledger.core import RefusedError

    password = os.environ.get("FACELEDGER_PASSWORD") or typer.prompt(
        f"new password for {admin}", hide_input=True, confirmation_prompt=True, err=True
    )
    fl = open_data_dir(data_dir)
    try:
        fl.init_admin(admin, password)
    except (RefusedError, ValueError) as exc:
        fail(str(exc))
    out.print(f"initialised {fl.data_dir}: admin {admin!r}, default policy written")


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files, folders, zip/tar archives.")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="CSV/JSONL manifest: path, source_url, captured_at, legal_basis, "
            "subject_label, expires_at."
        ),
    ] = None,
    source: Annotated[str, typer.Option(help="Source name recorded as provenance.")] = "local",
    legal_basis: Annotated[
        str | None,
        typer.Option(
            help="Legal basis for holding these photos (required unless manifest rows give one)."
        ),
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="Retention: delete these photos after this ISO date.")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes (default: one per core); with --engine ray, Ray actors "
            "(default: one per CPU of the cluster)."
        ),
    ] = 0,
    engine: Annotated[
        str,
        typer.Option(
            help="Where decode/detect/embed run: local (a process pool on this machine) or "
            "ray (Ray Data actors on a Ray cluster; needs pip install 'faceledger\\[scale]')."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="With --engine ray: the Ray cluster to use, e.g. ray://head:10001 or auto "
            "(default: start a local Ray)."
        ),
    ] = None,
    detector: Detector = "hog",
    embedder: Embedder = "default",
    min_face: MinFace = DEFAULT_MIN_FACE,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Add photos to the gallery (admin). Re-ingesting a photo is a no-op that says so."""
    from faceledger.gallery.ingest import PipelineSettings, check_engine, default_workers
    from faceledger.gallery.ingest_ray import RayEngineError, require_ray
    from faceledger.gallery.sources import SourceError, iter_manifest, iter_paths, parse_when
    from faceledger.vision.embedding import DEFAULT_EMBEDDER

    try:  # before the photos are counted, for a quick, clean refusal
        check_engine(engine, address)
    except ValueError as exc:
        fail(escape(str(exc)))
    if engine == "ray":
        try:
            require_ray()
        except RayEngineError as exc:
            fail(escape(str(exc)))
    if not paths and manifest is None:
        fail("give photos to ingest: PATH... and/or --manifest FILE")
    if paths and not legal_basis:
        fail("--legal-basis is required: record why you may hold these photos")
    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    try:
        expiry = parse_when(expires_at, "--expires-at")
    except Exception as exc:
        fail(str(exc))

    def items() -> Iterator[Any]:
        if paths:
            yield from iter_paths(list(paths), source, legal_basis or "", expires_at=expiry)
        if manifest is not None:
            yield from iter_manifest(manifest, source, legal_basis)

    try:
        total = sum(1 for _ in items())
    except SourceError as exc:
        fail(str(exc))
    settings = PipelineSettings(
        detector=detector, embedder=embedder, min_face=min_face, model_dir=model_dir, device=device
    )
    n_workers = workers if engine == "ray" else workers or default_workers()
    args = {
        "paths": [str(p) for p in paths or []],
        "manifest": str(manifest) if manifest else None,
        "source": source,
        "detector": detector,
        "embedder": embedder,
        "workers": n_workers,
    }
    with session(data_dir, as_user) as (fl, actor):
        fl.require(actor, "ingest")  # before the progress bar, for a clean refusal
        try:
            with progress_bar("ingest", total, enabled=not as_json) as bar:
                summary = fl.ingest(
                    actor,
                    items(),
                    settings,
                    n_workers,
                    args,
                    advance=lambda n: bar.advance(bar.task_ids[0], n),
                    engine=engine,
                    address=address,
                )
        except SourceError as exc:
            fail(str(exc))
        except RayEngineError as exc:  # ray missing, cluster unreachable
            fail(escape(str(exc)))
    if as_json:
        _dump(summary.as_dict())
        return
    for e in summary.errors[:50]:
        err.print(f"[yellow]skipped[/] {e['item']}: {e['message']} [dim]({e['reason']})[/]")
    if len(summary.errors) > 50:
        err.print(f"... and {len(summary.errors) - 50} more (see --json)")
    out.print(summary.line())


@app.command()
def search(
    photo: Annotated[Path, typer.Argument(help="Probe photo.")],
    case: Annotated[str, typer.Option("--case", help="Case number (required).")] = "",
    purpose: Annotated[str, typer.Option(help="Purpose, from the policy's list (required).")] = "",
    justification: Annotated[str, typer.Option(help="Why this search is needed (required).")] = "",
    request: Annotated[
        int | None, typer.Option("--request", help="Approved case request id, where needed.")
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, max=1000, help="Candidates per face.")
    ] = 10,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Find the faces in PHOTO and list ranked gallery candidates for each (investigator)."""
    from faceledger.core import SearchRequest
    from faceledger.search.searcher import LEADS_NOTICE, NoFaceError

    try:
        data = photo.read_bytes()
    except OSError as exc:
        fail(f"{photo}: cannot read probe ({exc.strerror or exc})")
    req = SearchRequest(case, purpose, justification, request, top_k)
    with session(data_dir, as_user) as (fl, actor):
        fl.model_dir, fl.device = model_dir or fl.model_dir, device
        try:
            result = fl.search(actor, data, req)
        except NoFaceError as exc:
            if as_json:
                _dump({"probe": str(photo), "faces": [], "error": str(exc)})
            fail(f"{photo}: {exc}", code=2)
    if as_json:
        _dump(result)
        return
    out.print(f"[bold yellow]{LEADS_NOTICE}[/]")
    out.print(
        f"search {result['search_id']} for case {result['case_number']} ({result['purpose']}): "
        f"probe {photo}, {len(result['faces'])} face(s), gallery of {result['gallery_faces']} faces"
    )
    for f in result["faces"]:
        if f["below_min_quality"]:
            out.print(
                f"face {f['face_index']} at {f['bbox']}: quality {f['quality']:.2f} is "
                "below the policy minimum; not searched"
            )
            continue
        t = Table(title=f"face {f['face_index']} at {f['bbox']} (quality {f['quality']:.2f})")
        for col in ("rank", "score", "est. FMR", "expected false ≥ score", "face id", "provenance"):
            t.add_column(col, overflow="fold")
        for c in f["candidates"]:
            p = c["provenance"][0] if c["provenance"] else {}
            fmr = (
                "n/a"
                if c["est_fmr"] is None
                else (f"{c['est_fmr']:.1e}" + ("*" if c["est_fmr_extrapolated"] else ""))
            )
            exp = (
                "n/a"
                if c["expected_false_candidates"] is None
                else f"{c['expected_false_candidates']:.3g}"
            )
            where = p.get("source_url") or Path(p.get("original_path") or "").name
            label = f"{p.get('subject_label')}: " if p.get("subject_label") else ""
            t.add_row(
                str(c["rank"]),
                f"{c['score']:.3f}",
                fmr,
                exp,
                str(c["face_id"]),
                escape(f"{label}{where} ({p.get('source', '')}; {p.get('legal_basis', '')})"),
            )
        out.print(t)
    out.print("[dim]* estimated beyond the calibration data (extrapolated tail)[/]")


@app.command()
def embed(
    photo: Annotated[Path, typer.Argument(help="Photo to analyse.")],
    detector: Detector = "hog",
    embedder: Embedder = "default",
    min_face: MinFace = 20,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    as_json: JsonOut = True,
) -> None:
    """Faces found in PHOTO: box, 5 landmarks, quality and embedding (touches no gallery)."""
    from faceledger.vision.decode import DecodeError, decode_image
    from faceledger.vision.embedding import DEFAULT_EMBEDDER

    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    try:
        img = decode_image(photo.read_bytes())
    except OSError as exc:
        fail(f"{photo}: cannot read ({exc.strerror or exc})")
    except DecodeError as exc:
        fail(f"{photo}: {exc}")
    analyzer = _analyzer(detector, embedder, min_face, model_dir=model_dir, device=device)
    faces = analyzer.analyze(img.pixels)
    _dump(
        {
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
    )
    if not faces:
        raise typer.Exit(2)


@app.command()
def stats(data_dir: DataDir = None, as_user: AsUser = None, as_json: JsonOut = False) -> None:
    """What the gallery holds."""
    with session(data_dir, as_user) as (fl, actor):
        s = fl.stats(actor)
    if as_json:
        _dump(s)
        return
    for k, v in s.items():
        out.print(f"{k}: {v}")


@index_app.command("rebuild")
def index_rebuild(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Rebuild the vector index from the database (the source of truth; admin)."""
    from faceledger.gallery.index import IndexManager

    with session(data_dir, as_user) as (fl, actor):
        fl.require(actor, "manage_index")
        mgr = IndexManager(fl.store)
        index = mgr.rebuild()
        mgr.save()
        fl.record(actor, "index.rebuild", "index", faces=len(index))
    out.print(f"index rebuilt: {len(index)} faces ({index.kind})")


def _print_preview(doc: dict[str, Any]) -> None:
    thr, fmr = doc["threshold"], doc["threshold_fmr"]
    how = (
        f"the calibrated score of FMR {doc['calibrated_fmr']:g}"
        if doc["threshold_is_calibrated"]
        else "given"
        + (
            f"; the calibrated default would be {doc['calibrated_threshold']:.3f}"
            if doc["calibrated_threshold"] is not None
            else ""
        )
    )
    out.print(
        f"erasure preview {doc['preview_id']}: {len(doc['faces'])} gallery face(s) score "
        f">= {thr:.3f} ({how}) against the subject's photo"
    )
    if fmr is not None:
        out.print(
            f"est. FMR at the threshold {fmr:.2g}: about {doc['expected_false_matches']:.2g} "
            f"face(s) of other people expected this high in {doc['gallery_faces']} faces"
        )
    table = Table("face", "score", "est. FMR", "exp. false")
    table.add_column("source: path", overflow="fold")
    for f in doc["faces"]:
        table.add_row(
            str(f["face_id"]),
            f"{f['score']:.3f}",
            "-" if f["est_fmr"] is None else f"{f['est_fmr']:.2g}",
            "-" if f["expected_false_matches"] is None else f"{f['expected_false_matches']:.2g}",
            escape("; ".join(f"{p['source']}: {p['original_path']}" for p in f["provenance"])),
        )
    if doc["faces"]:
        out.print(table)
    out.print(f"open until {doc['expires_at']}; scores are not identifications")


def _confirmed_ids(doc: dict[str, Any], yes: bool, confirm: str | None) -> list[int]:
    """The face ids to erase from a preview: all (--yes), --confirm's, or asked for."""
    listed = [f["face_id"] for f in doc["faces"] if not f["erased"]]
    if yes:
        return listed
    text = confirm
    if text is None:
        if not sys.stdin.isatty():
            fail("confirm the faces to erase: --confirm IDS (or --yes for all of them)")
        text = typer.prompt(
            "face ids to erase (comma-separated, 'all', or empty to cancel)",
            default="",
            show_default=False,
        )
    text = text.strip()
    if text.lower() == "all":
        return listed
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        fail("face ids are numbers, comma-separated")


@app.command()
def erase(
    face: Annotated[list[int] | None, typer.Option("--face", help="Face id (repeatable).")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Image SHA-256.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Every image of a source.")] = None,
    probe: Annotated[
        Path | None,
        typer.Option(
            "--probe",
            help="The subject's photo: shows the matching faces, then erases those confirmed.",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Cosine score for --probe matches (default: calibrated, FMR 1e-6)."),
    ] = None,
    confirm: Annotated[
        str | None,
        typer.Option("--confirm", help="With --probe: the face ids to erase, comma-separated."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="With --probe: erase every face the preview lists.")
    ] = False,
    optout: Annotated[
        str | None,
        typer.Option(
            "--optout",
            help="Also block this subject from future ingest "
            "(with --probe); give the request reference.",
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (e.g. erasure request number); required.")] = "",
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Erase faces for good (admin): vectors, crops, index entries, and images left empty.

    With --probe, the faces scoring at or above the threshold against the subject's photo
    are listed first (a recorded preview), and only the ones confirmed are erased.
    """
    if not reason.strip():
        fail("give the erasure's reason: --reason (e.g. the erasure request number)")
    if probe is None and (confirm is not None or yes):
        fail("--confirm and --yes confirm the faces of a --probe preview")
    probe_bytes = None
    if probe is not None:
        try:
            probe_bytes = probe.read_bytes()
        except OSError as exc:
            fail(f"{probe}: cannot read ({exc.strerror or exc})")
    from faceledger.search.searcher import NoFaceError

    preview: dict[str, Any] | None = None
    with session(data_dir, as_user) as (fl, actor):
        if probe_bytes is not None:
            try:
                preview = fl.erase_preview(actor, probe_bytes, threshold)
            except NoFaceError as exc:
                fail(str(exc))
            if not as_json:
                _print_preview(preview)
            ids = _confirmed_ids(preview, yes, confirm)
            if not ids and not optout:
                out.print("nothing confirmed: nothing erased")
                return
            report = fl.erase(
                actor,
                preview_id=preview["preview_id"],
                face_ids=ids,
                optout_reference=optout,
                reason=reason,
            )
        else:
            report = fl.erase(
                actor,
                face_ids=face or None,
                image_sha=image,
                source=source,
                optout_reference=optout,
                reason=reason,
            )
    doc = report.as_dict()
    if as_json:
        _dump(doc if preview is None else {"preview": preview, "erasure": doc})
        return
    out.print(
        f"erased {doc['faces_erased']} face(s); {len(doc['images_deleted'])} image(s) "
        f"deleted, {len(doc['images_blurred'])} blurred; "
        f"{doc['blocklisted']} embedding(s) added to the opt-out list"
    )


@app.command()
def purge(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Delete gallery images and retained probes past their retention date (admin)."""
    with session(data_dir, as_user) as (fl, actor):
        res = fl.purge(actor)
    out.print(f"purged {res['images']} expired image(s) and {res['probes']} probe(s)")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """Serve the HTTP API and the web UI."""
    from faceledger.http.app import serve as run_server

    run_server(config.data_dir(data_dir), host, port)


# -- users, tokens, policy, cases, audit -------------------------------------------------


def _new_password(username: str) -> str:
    import os

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
        _dump(rows)
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


@account_app.command("password")
def account_password(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Change your own password: asks for the current one and the new one (or reads
    $FACELEDGER_PASSWORD and $FACELEDGER_NEW_PASSWORD)."""
    import os

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
        _dump(fl.list_tokens(actor, user))


@policy_app.command("show")
def policy_show(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    with session(data_dir, as_user) as (fl, _actor):
        sys.stdout.write(fl.policy().to_bytes().decode())


@policy_app.command("set")
def policy_set(key: str, value: str, data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Change one policy setting (lists: comma-separated). Logged with old and new values."""
    from faceledger.cases.policy import Policy, policy_path

    with session(data_dir, as_user) as (fl, actor):
        path = policy_path(fl.data_dir)
        try:
            current = fl.policy()
        except Exception:  # tampered or missing: an admin re-sets it from the file or defaults
            current = Policy.from_bytes(path.read_bytes()) if path.is_file() else Policy()
        fl.save_policy(actor, current.with_value(key, value))
    out.print(f"policy {key} = {value}")


@cases_app.command("request")
def cases_request(
    case: Annotated[str, typer.Option("--case")],
    purpose: Annotated[str, typer.Option()],
    justification: Annotated[str, typer.Option()],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Ask a supervisor to approve searches for a case and purpose."""
    with session(data_dir, as_user) as (fl, actor):
        rid = fl.request_case(actor, case, purpose, justification)
    out.print(f"request {rid} for case {case} is pending a supervisor's decision")
    print(rid)


@cases_app.command("approve")
def cases_approve(
    request_id: int,
    note: str = "",
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="At most this many searches under the approval."),
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Approve a request of your unit (it lasts the policy's approval_days)."""
    with session(data_dir, as_user) as (fl, actor):
        fl.decide_case(actor, request_id, True, note, limit)
    out.print(f"request {request_id} approved")


@cases_app.command("withdraw")
def cases_withdraw(
    request_id: int,
    note: Annotated[str, typer.Option(help="Why the approval ends now (required).")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """End an approval before its time."""
    with session(data_dir, as_user) as (fl, actor):
        fl.withdraw_case(actor, request_id, note)
    out.print(f"the approval of request {request_id} is withdrawn")


@cases_app.command("deny")
def cases_deny(
    request_id: int, note: str = "", data_dir: DataDir = None, as_user: AsUser = None
) -> None:
    with session(data_dir, as_user) as (fl, actor):
        fl.decide_case(actor, request_id, False, note)
    out.print(f"request {request_id} denied")


@cases_app.command("list")
def cases_list(
    status: Annotated[
        str | None, typer.Option(help="pending, approved, denied or withdrawn.")
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    with session(data_dir, as_user) as (fl, actor):
        _dump(fl.list_case_requests(actor, status))


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[
        str | None, typer.Option(help="A checkpoint (seq:hash) kept elsewhere.")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="A transparency report (JSON, CSV or HTML) kept elsewhere: its ledger head "
            "is the checkpoint.",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Recompute the hash chain and the records against it; exit 1 naming the first bad
    entry and every record that disagrees with its entry."""
    report_text = None
    if report is not None:
        try:
            report_text = report.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read the report {report}: {exc}")
    with session(data_dir, as_user) as (fl, actor):
        res = fl.audit_verify(actor, checkpoint, report=report_text)
    for warning in res.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}")
    if not res.ok:
        for m in res.mismatches:
            err.print(f"  {escape(m['problem'])}")
        if res.mismatch_count > len(res.mismatches):
            err.print(f"  ... and {res.mismatch_count - len(res.mismatches)} more")
        at = f" at entry {res.first_bad_seq}" if res.first_bad_seq is not None else ""
        fail(f"ledger verification FAILED{at}: {escape(res.problem or '')}")
    against = " and matches the report" if report else " and the checkpoint" if checkpoint else ""
    out.print(
        f"ledger OK{against}: {res.entries} entries, {res.records_checked} records agree, "
        f"head {res.head_seq}:{res.head_hash}"
    )


@audit_app.command("checkpoint")
def audit_checkpoint(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Print the head of the chain (seq:hash); keep it outside this machine."""
    with session(data_dir, as_user) as (fl, actor):
        print(fl.audit_checkpoint(actor))


@audit_app.command("log")
def audit_log(
    actor_name: Annotated[str | None, typer.Option("--actor")] = None,
    action: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option("--from", help="ISO time or date.")] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="ISO time (exclusive) or date (inclusive).")
    ] = None,
    case: Annotated[
        str | None,
        typer.Option("--case", help="Entries about this case number (target or details)."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (JSON lines) or csv (re-verifiable).")
    ] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the export to this file.")
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """List or export ledger entries (auditor), in seq order."""
    from datetime import date, timedelta

    if fmt not in ("jsonl", "csv"):
        fail("--format must be jsonl or csv")
    if until and len(until.strip()) == 10:  # a whole day, as in the API and the web page
        try:
            until = (date.fromisoformat(until.strip()) + timedelta(days=1)).isoformat()
        except (ValueError, OverflowError):
            fail("--to is a date like 2026-01-31 or an ISO time")
    with session(data_dir, as_user) as (fl, actor):
        lines = fl.audit_export(
            actor, fmt, actor=actor_name, action=action, since=since, until=until, case=case
        )
        n = 0
        if output:
            with output.open("w", encoding="utf-8", newline="") as fh:
                for line in lines:
                    fh.write(line)
                    n += line.count("\n")
        else:
            for line in lines:
                sys.stdout.write(line)
    if output:
        entries = n - 1 if fmt == "csv" else n
        err.print(f"{entries} entr{'y' if entries == 1 else 'ies'} written to {output}")


@audit_app.command("report")
def audit_report(
    date_from: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    date_to: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD.")],
    fmt: Annotated[str, typer.Option("--format", help="json, csv or html.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Transparency report over a date range (auditor; supervisors: their unit)."""
    from datetime import date

    from faceledger.ledger import reports

    if fmt not in ("json", "csv", "html"):
        fail("--format must be json, csv or html")
    try:
        start, end = date.fromisoformat(date_from), date.fromisoformat(date_to)
    except ValueError:
        fail("--from and --to are dates like 2026-01-31")
    if end < start:
        fail("--to is before --from")
    with session(data_dir, as_user) as (fl, actor):
        rep = fl.audit_report(actor, start, end)
    text = (
        json.dumps(rep, indent=2) + "\n"
        if fmt == "json"
        else reports.to_csv(rep)
        if fmt == "csv"
        else reports.to_html(rep)
    )
    if output:
        output.write_text(text)
        out.print(f"report written to {output}")
    else:
        sys.stdout.write(text)


EVAL_MIN_FACE = DEFAULT_MIN_FACE  # evaluate the pipeline a gallery is built with


def _lfw_setup(
    detector: str,
    embedder: str,
    data_dir: Path | None,
    model_dir: str | None,
    device: str,
    flip: bool = True,
) -> tuple[Any, str, Path]:
    """The analyzer factory, model id and embedding cache file of an LFW run (the cache is
    named for everything that changes the vectors, so runs never share a wrong one)."""
    from functools import partial

    from faceledger.vision.embedding import DEFAULT_EMBEDDER
    from faceledger.vision.routing import create_embedder

    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    try:
        model_id = create_embedder(
            embedder, threads=1, model_dir=model_dir, device=device, flip=flip
        ).model_id
    except ValueError as exc:
        fail(str(exc))
    factory = partial(_analyzer_nocrop, detector, embedder, model_dir, device, flip)
    tag = f"{model_id}_{embedder}_{detector}_mf{EVAL_MIN_FACE}"
    for c in "+:/\\":
        tag = tag.replace(c, "-")
    return factory, model_id, config.data_dir(data_dir) / "eval" / f"lfw_{tag}.npz"


def _analyzer_nocrop(
    detector: str, embedder: str, model_dir: str | None, device: str, flip: bool = True
) -> Any:
    a = _analyzer(detector, embedder, EVAL_MIN_FACE, model_dir=model_dir, device=device, flip=flip)
    a.with_crops = False
    return a


@eval_app.command("lfw")
def eval_lfw(
    lfw_dir: Annotated[Path, typer.Option(help="LFW folder (deep-funneled images + pairs.txt).")],
    detector: Detector = "hog+cnn",
    embedder: Embedder = "default",
    workers: Annotated[int, typer.Option(help="Worker processes (default: one per core).")] = 0,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    data_dir: DataDir = None,
    no_cache: Annotated[bool, typer.Option(help="Recompute embeddings.")] = False,
    no_flip: NoFlip = False,
    metric: Annotated[
        str,
        typer.Option(
            help="Verification score: cosine (the product's) or centred (cosine after "
            "subtracting the mean embedding of the nine training folds' images).",
        ),
    ] = "cosine",
    indexes: Annotated[
        str | None,
        typer.Option(
            "--indexes",
            help="Also run the 1:N searches through these search indexes, comma-separated, "
            "and compare each one's ranked lists with exact search: exact, flat, ivf_pqfs, "
            "ivf_sq8, hnsw_sq8 (built whatever the gallery size), milvus (Milvus Lite in a "
            "temporary directory), or all; options as kind:name=value, e.g. "
            "ivf_pqfs:nprobe=8 (faceledger.gallery.index.AnnParams fields; milvus: hnsw_m, "
            "ef_construction, ef_search, candidate_factor, candidates_min, flush).",
        ),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """LFW View-2 verification and a 1:N identification protocol (see evaluation.py)."""
    from faceledger.evaluation.lfw import METRICS, parse_index_list, run_lfw
    from faceledger.gallery.ingest import default_workers

    try:
        specs = parse_index_list(indexes) if indexes is not None else None
    except ValueError as exc:
        fail(f"--indexes: {exc}")
    if metric not in METRICS:
        fail(f"--metric: unknown {metric!r}; choose {' or '.join(METRICS)}")
    factory, model_id, cache = _lfw_setup(
        detector, embedder, data_dir, model_dir, device, flip=not no_flip
    )
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
                indexes=specs,
                metric=metric,
            )
    except FileNotFoundError as exc:
        fail(str(exc))
    res["detector"] = detector
    if as_json:
        _dump(res)
        return
    by_index = res.pop("indexes", None)
    for k, v in res.items():
        out.print(f"{k}: {v}")
    if by_index:
        t = Table(
            "index",
            "rank1",
            "rank10",
            "FNIR@FPIR.003",
            "top10 differ",
            "rank1 differ",
            "beyond ties",
            "max gap",
            "search s",
            "params",
            title=f"1:N per index (k={res['index_k']}, ties: scores within "
            f"{res['index_tie_tolerance']:g})",
        )
        for name, r in by_index.items():
            ref = bool(r.get("reference"))
            t.add_row(
                escape(name),
                f"{r['rank1']:.4f}",
                f"{r['rank10']:.4f}",
                f"{r['fnir_at_fpir_0_003']:.4f}",
                "ref" if ref else str(r["top10_lists_differ"]),
                "ref" if ref else str(r["rank1_ids_differ"]),
                "ref" if ref else str(r["top10_lists_differ_beyond_ties"]),
                "" if ref else f"{r['max_rank_score_gap']:.2g}",
                f"{r['search_seconds']:.2f}",
                escape(" ".join(f"{k}={v}" for k, v in r["params"].items())),
            )
        out.print(t)


@calibrate_app.command("lfw")
def calibrate_lfw(
    lfw_dir: Annotated[Path, typer.Option(help="LFW folder.")],
    out_file: Annotated[Path, typer.Option("--out", help="Calibration JSON to write.")],
    detector: Detector = "hog+cnn",
    embedder: Embedder = "default",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 0,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    data_dir: DataDir = None,
    no_flip: NoFlip = False,
) -> None:
    """Fit the score->FMR calibration on LFW's calibration split (a quarter of the people)."""
    from faceledger.evaluation.lfw import LfwDataset, calibration_names, embed_lfw, impostor_scores
    from faceledger.gallery.ingest import default_workers
    from faceledger.search import calibration

    factory, model_id, cache = _lfw_setup(
        detector, embedder, data_dir, model_dir, device, flip=not no_flip
    )
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
    from faceledger.evaluation.datasets import ChecksumError, fetch_lfw

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
