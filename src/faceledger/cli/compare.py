"""``compare``: a search's probe face and one candidate side by side, as image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faceledger.cli.common import AsUser, DataDir, JsonOut, dump, out
from faceledger.cli.session import session
from faceledger.vision.chips import side_by_side_png


def compare(
    search_id: Annotated[int, typer.Argument(help="The search's id.")],
    face: Annotated[int, typer.Option("--face", help="The candidate's gallery face id.")],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", help="Folder for probe-chip.png, candidate-chip.png and side-by-side.png."
        ),
    ],
    probe: Annotated[
        Path | None,
        typer.Option(
            "--probe",
            exists=True,
            dir_okay=False,
            help="The photo that was searched, where retention no longer keeps it (checked "
            "against the search's recorded SHA-256; not kept).",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """A search's probe face and candidate FACE as the model aligned them (same-size chips),
    written as two PNGs and one side by side with the five landmarks drawn; the score line
    on stdout. Recorded in the ledger (candidate.compare)."""
    with session(data_dir, as_user) as (fl, actor):
        result = fl.compare_candidate(
            actor, search_id, face, probe.read_bytes() if probe is not None else None
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "probe_chip": out_dir / "probe-chip.png",
        "candidate_chip": out_dir / "candidate-chip.png",
        "side_by_side": out_dir / "side-by-side.png",
    }
    files["probe_chip"].write_bytes(result["probe"]["chip_png"])
    files["candidate_chip"].write_bytes(result["candidate"]["chip_png"])
    files["side_by_side"].write_bytes(
        side_by_side_png(
            [
                (result["probe"]["chip_png"], result["probe"]["chip_landmarks"]),
                (result["candidate"]["chip_png"], result["candidate"]["chip_landmarks"]),
            ]
        )
    )
    summary = {
        k: result[k]
        for k in (
            "search_id",
            "face_id",
            "rank",
            "score",
            "est_fmr",
            "expected_false_candidates",
            "gallery_faces",
            "probe_source",
            "notice",
        )
    } | {"files": {k: str(v) for k, v in files.items()}}
    if as_json:
        dump(summary)
        return
    fmr = result["est_fmr"]
    expected = result["expected_false_candidates"]
    out.print(f"[bold yellow]{result['notice']}[/]")
    out.print(
        f"search {search_id}, candidate #{result['rank']} (face {face}): score "
        f"{result['score']:.3f}, est. FMR {'n/a' if fmr is None else f'{fmr:.2e}'}, expected "
        f"false candidates {'n/a' if expected is None else f'{expected:.3g}'} in a gallery of "
        f"{result['gallery_faces']}; probe {result['probe_source']}"
    )
    for path in files.values():
        out.print(f"wrote {path}")
