"""What every command group shares: the consoles, ``fail`` and the exit codes, the option
types, the progress bar, JSON output and the face analyser built from the options."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

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

err = Console(stderr=True, soft_wrap=True)
out = Console()

# Exit codes (1: any other error)
NO_FACE_EXIT = 2  # the photo shows no face
AUTH_EXIT = 3  # who is acting is unknown or not proven
DENIED_EXIT = 4  # a permission or a rule refuses the command
TAMPERED_EXIT = 5  # policy.json differs from the version the ledger recorded
STORAGE_EXIT = 6  # the data dir cannot be written
CHOOSE_TRACK_EXIT = 7  # a video probe shows several people: choose one with --track

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (else $FACELEDGER_DATA, else ./faceledger-data)."
    ),
]
Detector = Annotated[
    str,
    typer.Option(
        help="Face detector: hog, cnn (dlib's MMOD CNN on ONNX Runtime), hog+cnn (the CNN "
        "where HOG finds nothing), or cnn-dlib (the CNN in dlib's own runtime, slow).",
    ),
]
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


def fmr_text(doc: dict[str, Any]) -> str:
    """``doc``'s est. FMR as the tables print it: ``*`` where extrapolated, n/a without one."""
    if doc["est_fmr"] is None:
        return "n/a"
    return f"{doc['est_fmr']:.1e}" + ("*" if doc["est_fmr_extrapolated"] else "")


def count_text(x: float | None) -> str:
    """An expected count (false candidates, subjects) as the tables print it."""
    return "n/a" if x is None else f"{x:.3g}"


def dump(doc: Any) -> None:
    """Print ``doc`` as one JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def make_analyzer(
    detector: str,
    embedder: str,
    min_face: int,
    threads: int | None = None,
    model_dir: str | None = None,
    device: str = "cpu",
    flip: bool = True,
) -> Any:
    """The face analyser the options name, or a clear exit if they name none."""
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
