"""The ``subjects`` group (#14 item 4): duplicate identities in the gallery, and merging two
subjects into one (admin; both recorded)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from faceledger.cli.common import AsUser, DataDir, JsonOut, dump, fmr_text, out
from faceledger.cli.session import session

subjects_app = typer.Typer(
    help="Subjects: the gallery's faces grouped by person (duplicates, merges).",
    no_args_is_help=True,
)


@subjects_app.command("duplicates")
def duplicates(
    max_expected_false: Annotated[
        float,
        typer.Option(
            help="Strictness: the threshold is the calibrated score at which the whole "
            "gallery expects at most this many false pairs."
        ),
    ] = 0.1,
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Pairs of subjects (labels, or faces without one) whose templates match above a strict
    calibrated threshold: one person under two labels, for an admin to merge or correct."""
    with session(data_dir, as_user) as (fl, actor):
        doc = fl.subject_duplicates(actor, max_expected_false)
    if as_json:
        dump(doc)
        return
    n = doc["gallery_subjects"]
    out.print(
        f"{n} subjects ({doc['gallery_faces']} faces): pairs at FMR <= {doc['fmr_limit']:.2g} "
        f"(at most {doc['max_expected_false']:g} false pairs expected among "
        f"{n * (n - 1) // 2} pairs)"
    )
    t = Table("score", "est. FMR", "subject A", "subject B", title=f"{len(doc['pairs'])} pair(s)")
    for p in doc["pairs"]:
        fmr = fmr_text(p)
        sides = [
            f"{s['subject']} ({s['size']} face{'s' if s['size'] != 1 else ''})"
            for s in (p["a"], p["b"])
        ]
        t.add_row(f"{p['score']:.3f}", fmr, escape(sides[0]), escape(sides[1]))
    out.print(t)
    out.print("[dim]* estimated beyond the calibration data (extrapolated tail)[/]")


@subjects_app.command("merge")
def merge(
    a: Annotated[str, typer.Argument(help="A subject: its label, or face:ID for a face's own.")],
    b: Annotated[str, typer.Argument(help="The subject to merge it with (its label is kept).")],
    reason: Annotated[str, typer.Option(help="Why they are one person; required.")] = "",
    label: Annotated[
        str | None,
        typer.Option(help="Label of the merged subject (default: B's label, else A's)."),
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Make two subjects one (admin): relabels, never deletes; a ledger entry."""
    with session(data_dir, as_user) as (fl, actor):
        doc = fl.merge_subjects(actor, a, b, reason, label)
    if as_json:
        dump(doc)
        return
    out.print(
        escape(
            f"merged {a} and {b} as {doc['label']!r}: {len(doc['face_ids'])} face(s) "
            f"(ledger entry {doc['ledger_seq']})"
        )
    )
