"""Accuracy on public benchmarks: the ``eval``, ``calibrate`` and ``datasets`` groups, and
:func:`_lfw_setup`, the one place that names an LFW run's embedding cache (the tests and
``benchmarks/peer_accuracy.py`` use it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from faceledger.cli.common import (
    DataDir,
    Detector,
    Device,
    Embedder,
    JsonOut,
    ModelDir,
    NoFlip,
    dump,
    err,
    fail,
    out,
    progress_bar,
)

eval_app = typer.Typer(help="Evaluate accuracy on public benchmarks.", no_args_is_help=True)
calibrate_app = typer.Typer(help="Fit score calibrations.", no_args_is_help=True)
datasets_app = typer.Typer(help="Fetch evaluation datasets.", no_args_is_help=True)


def _lfw_setup(
    detector: str,
    embedder: str,
    data_dir: Path | None,
    model_dir: str | None,
    device: str,
    flip: bool = True,
) -> tuple[Any, str, Path]:
    """:func:`faceledger.evaluation.lfw.lfw_setup`, a bad option a clear exit."""
    from faceledger.evaluation.lfw import lfw_setup

    try:
        return lfw_setup(detector, embedder, data_dir, model_dir, device, flip)
    except ValueError as exc:
        fail(str(exc))


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
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            help="Also write PNG plots into this folder: ROC of the verification, DET of the "
            "single-photo, subject and multi-photo 1:N searches, genuine/impostor score "
            "histograms, predicted vs measured FPIR.",
        ),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """LFW View-2 verification, the 1:N identification protocol, and the same with subject
    galleries and multi-photo probes fused by each rule (see faceledger.evaluation)."""
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
                plots=plots,
            )
    except FileNotFoundError as exc:
        fail(str(exc))
    res["detector"] = detector
    if as_json:
        dump(res)
        return
    by_index = res.pop("indexes", None)
    fused = res.pop("fusion", None)
    for k, v in res.items():
        out.print(f"{k}: {v}")
    if fused:
        _print_fusion_table(res, fused)
    if by_index:
        _print_index_table(res, by_index)


def _print_fusion_table(res: dict[str, Any], fused: dict[str, Any]) -> None:
    t = Table(
        "protocol",
        "rule",
        "rank1",
        "FNIR@FPIR.003",
        "FNIR@FPIR.01",
        "threshold",
        "non-mated above",
        "pred/measured FPIR",
        title=f"1:N with fusion (default rule {fused['default_rule']}, top-k {fused['topk']}; "
        "single: the same probe photos one by one)",
    )
    t.add_row(
        "single",
        "",
        f"{res['rank1']:.4f}",
        f"{res['fnir_at_fpir_0_003']:.4f}",
        "",
        f"{res['fpir_threshold']:.4f}",
        "",
        "",
    )
    for name, proto in fused["protocols"].items():
        rows = {"single": proto["single_same_probes"], **proto["rules"]}
        for rule, r in rows.items():
            ratio = r.get("calibration_ratio")
            t.add_row(
                name,
                rule,
                f"{r['rank1']:.4f}",
                f"{r['fnir_at_fpir_0_003']:.4f}",
                f"{r['fnir_at_fpir_0_01']:.4f}",
                f"{r['fpir_threshold']:.4f}",
                f"{r['nonmated_above_threshold']} of {r['nonmated_probes']}",
                "" if ratio is None else f"{ratio:.2f}",
            )
    out.print(t)


def _print_index_table(res: dict[str, Any], by_index: dict[str, Any]) -> None:
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


def _embedded_lfw(
    lfw_dir: Path,
    detector: str,
    embedder: str,
    workers: int,
    model_dir: str | None,
    device: str,
    data_dir: Path | None,
    no_flip: bool,
    show_progress: bool = True,
) -> tuple[Any, Any, str]:
    """LFW and every image's embedding (from the cache where it has them), with a progress
    bar: what the calibration commands fit on. Returns the dataset, the table, the model."""
    from faceledger.evaluation.lfw import LfwDataset, embed_lfw
    from faceledger.gallery.ingest import default_workers

    factory, model_id, cache = _lfw_setup(
        detector, embedder, data_dir, model_dir, device, flip=not no_flip
    )
    ds = LfwDataset.load(lfw_dir)
    with progress_bar("embed LFW", len(ds.all_images()), enabled=show_progress) as bar:
        table = embed_lfw(
            ds,
            factory,
            cache,
            workers or default_workers(),
            advance=lambda n: bar.advance(bar.task_ids[0], n),
        )
    return ds, table, model_id


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
    from faceledger.evaluation.lfw import calibration_names, impostor_scores
    from faceledger.search import calibration

    ds, table, model_id = _embedded_lfw(
        lfw_dir, detector, embedder, workers, model_dir, device, data_dir, no_flip
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


@calibrate_app.command("lfw-subjects")
def calibrate_lfw_subjects(
    lfw_dir: Annotated[Path, typer.Option(help="LFW folder.")],
    out_file: Annotated[
        Path,
        typer.Option(
            "--out", help="Subject calibration JSON to write (ship as <model_id>.subjects.json)."
        ),
    ],
    detector: Detector = "hog+cnn",
    embedder: Embedder = "default",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 0,
    model_dir: ModelDir = None,
    device: Device = "cpu",
    data_dir: DataDir = None,
    no_flip: NoFlip = False,
    as_json: JsonOut = False,
) -> None:
    """Fit the template score->FMR calibration of subjects by size (1x2 ... 3+x3+), and of
    fused probes against one face (2x1, 3+x1: each gallery person counted once), on LFW's
    calibration split, and check each subject fit on the people outside it."""
    from faceledger.evaluation.subjects import check_by_size, fit_lfw
    from faceledger.search import calibration

    ds, table, model_id = _embedded_lfw(
        lfw_dir, detector, embedder, workers, model_dir, device, data_dir, no_flip, not as_json
    )
    calib = fit_lfw(ds, table, model_id, calibration.load(model_id))
    calib.info["detector"] = detector
    calib.save(out_file)
    check = check_by_size(ds, table, calib)
    if as_json:
        dump({"out": str(out_file), "version": calib.version, "check": check})
        return
    out.print(f"{model_id}: subject calibration -> {out_file}")
    t = Table("sizes", "impostor pairs", "FMR", "threshold", "measured FMR", "pred/measured")
    for key, doc in check.items():
        for p in doc["points"]:
            ratio = p["ratio"]
            t.add_row(
                key,
                str(doc["impostor_pairs"]),
                f"{p['fmr']:.0e}",
                f"{p['threshold']:.4f}",
                f"{p['measured']:.2e} ({p['pairs_above']})",
                "" if ratio is None else f"{ratio:.2f}",
            )
    out.print(t)


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
