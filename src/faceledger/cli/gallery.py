"""The gallery's commands: ``ingest``, ``stats``, ``erase``, ``purge`` (registered at the top
level by :mod:`faceledger.cli`) and the ``index`` group."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from faceledger.cli.common import (
    AsUser,
    DataDir,
    Detector,
    Device,
    Embedder,
    JsonOut,
    MinFace,
    ModelDir,
    dump,
    err,
    fail,
    out,
    progress_bar,
)
from faceledger.cli.session import session
from faceledger.vision.detection import DEFAULT_MIN_FACE

index_app = typer.Typer(help="Manage the vector index.", no_args_is_help=True)


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
    subject: Annotated[
        str | None,
        typer.Option(
            help="The person these photos show (their subject label; manifest rows may give "
            "their own). A photo's face joins the subject only where it is the photo's one "
            "face; each face of a group photo is a subject of its own."
        ),
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
            "ray (a pool of Ray actors on a Ray cluster, each loading the models once; "
            "needs pip install 'faceledger\\[scale]'). The --json summary's ray field gives "
            "the photos per node, the actors and the model loads."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="With --engine ray: the Ray cluster to use: the head's host:port (GCS, from "
            "a node of the cluster), ray://head:10001 (Ray Client) or auto (default: start a "
            "local Ray)."
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
    from faceledger.errors import RefusedError
    from faceledger.gallery.ingest import PipelineSettings, check_engine, default_workers
    from faceledger.gallery.ingest_ray import RayEngineError, require_ray
    from faceledger.gallery.sources import (
        SourceError,
        check_provenance,
        iter_manifest,
        iter_paths,
    )
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
    from faceledger.gallery.subjects import clean_label

    try:
        subject = clean_label(subject)
    except ValueError as exc:
        fail(f"--subject: {exc}")
    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    settings = PipelineSettings(
        detector=detector, embedder=embedder, min_face=min_face, model_dir=model_dir, device=device
    )
    n_workers = workers if engine == "ray" else workers or default_workers()
    with session(data_dir, as_user) as (fl, actor):
        fl.require(actor, "ingest")  # before the photos are counted, for a clean refusal
        try:  # manifest rows may give their own legal basis; photos named here need one
            source, basis, expiry = check_provenance(
                source,
                legal_basis,
                expires_at,
                basis_required=bool(paths),
                fields=("--source", "--legal-basis", "--expires-at"),
            )
        except RefusedError as exc:
            fail(escape(str(exc)))

        def items() -> Iterator[Any]:
            if paths:
                yield from iter_paths(
                    list(paths), source, basis or "", expires_at=expiry, subject_label=subject
                )
            if manifest is not None:
                yield from iter_manifest(manifest, source, basis, subject)

        args = {
            "paths": [str(p) for p in paths or []],
            "manifest": str(manifest) if manifest else None,
            "source": source,
            **({"subject": subject} if subject else {}),
            "detector": detector,
            "embedder": embedder,
            "workers": n_workers,
        }
        try:
            total = sum(1 for _ in items())
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
        dump(summary.as_dict())
        return
    for e in summary.errors[:50]:
        err.print(f"[yellow]skipped[/] {e['item']}: {e['message']} [dim]({e['reason']})[/]")
    if len(summary.errors) > 50:
        err.print(f"... and {len(summary.errors) - 50} more (see --json)")
    out.print(summary.line())


def stats(data_dir: DataDir = None, as_user: AsUser = None, as_json: JsonOut = False) -> None:
    """What the gallery holds."""
    with session(data_dir, as_user) as (fl, actor):
        s = fl.stats(actor)
    if as_json:
        dump(s)
        return
    for k, v in s.items():
        out.print(f"{k}: {v}")


@index_app.command("rebuild")
def index_rebuild(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Rebuild the vector index from the database (the source of truth; admin)."""
    with session(data_dir, as_user) as (fl, actor):
        faces, kind = fl.rebuild_index(actor)
    out.print(f"index rebuilt: {faces} faces ({kind})")


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
        dump(doc if preview is None else {"preview": preview, "erasure": doc})
        return
    out.print(
        f"erased {doc['faces_erased']} face(s); {len(doc['images_deleted'])} image(s) "
        f"deleted, {len(doc['images_blurred'])} blurred; "
        f"{doc['blocklisted']} embedding(s) added to the opt-out list"
    )


def purge(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Delete gallery images and retained probes past their retention date (admin)."""
    with session(data_dir, as_user) as (fl, actor):
        res = fl.purge(actor)
    out.print(f"purged {res['images']} expired image(s) and {res['probes']} probe(s)")
