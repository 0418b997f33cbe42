"""The ``bench`` group: benchmarks on synthetic, LFW-calibrated faces."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(help="Benchmarks on synthetic, LFW-calibrated faces.", no_args_is_help=True)
err = Console(stderr=True)


@bench_app.callback()
def _bench() -> None:
    """Benchmarks on synthetic, LFW-calibrated faces."""


@bench_app.command("search")
def search(
    faces: Annotated[int, typer.Option("--faces", help="gallery size")] = 100_000,
    dim: Annotated[int, typer.Option("--dim", help="embedding dimension (128 or 512)")] = 128,
    queries: Annotated[int, typer.Option("--queries", help="probe faces searched")] = 1000,
    k: Annotated[int, typer.Option("--k", help="results per query")] = 10,
    kind: Annotated[
        str,
        typer.Option("--kind", help="auto | flat | ivf_pqfs | ivf_sq8 | hnsw_sq8 (auto: by size)"),
    ] = "auto",
    nlist: Annotated[int | None, typer.Option(help="IVF lists (default: by size)")] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists probed (default: by nlist)")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW search beam")] = None,
    hnsw_m: Annotated[int | None, typer.Option(help="HNSW graph degree")] = None,
    candidates: Annotated[
        int | None, typer.Option(help="minimum candidates re-ranked exactly per query")
    ] = None,
    exact_max: Annotated[
        int | None, typer.Option(help="auto: exact search below this many faces")
    ] = None,
    threads: Annotated[int, typer.Option(help="search threads while timing")] = 1,
    calibrate_from: Annotated[
        Path | None,
        typer.Option(
            "--calibrate-from", help="fit the generator to real embeddings (.npz: paths, vectors)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    workdir: Annotated[
        Path | None, typer.Option(help="where the temporary vector file goes (default: $TMPDIR)")
    ] = None,
    exact_seconds: Annotated[
        float, typer.Option(help="time budget for single-query exact timings")
    ] = 10.0,
    sweep_nprobe: Annotated[
        str | None,
        typer.Option(help="also time these IVF nprobe values on the same build, e.g. 40,80,160"),
    ] = None,
    probes: Annotated[
        int,
        typer.Option(
            "--probes",
            help="photos per query: K > 1 also times the fused K-photo probe (template fusion "
            "+ one search) against one of its photos",
        ),
    ] = 1,
    index: Annotated[
        str | None,
        typer.Option(
            "--index",
            help="also load the same faces into this Milvus server (milvus://host:port) and "
            "measure it on the same queries",
        ),
    ] = None,
    milvus_server: Annotated[
        bool,
        typer.Option(
            "--milvus-server", help="without --index: start the bundled Milvus server for it"
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Build an index over N synthetic faces; recall, latency and memory vs brute force."""
    from dataclasses import replace

    from faceledger.evaluation.bench import calibrate_from as fit_file
    from faceledger.evaluation.bench import default_face_model, run_search_bench
    from faceledger.gallery.index import EXACT_MAX_FACES, KINDS, AnnParams

    if kind != "auto" and kind not in KINDS:
        raise typer.BadParameter(f"unknown kind {kind!r}", param_hint="--kind")
    if probes < 1:
        raise typer.BadParameter(
            f"a probe needs at least 1 photo per query, got {probes}", param_hint="--probes"
        )
    params = AnnParams(nlist=nlist, nprobe=nprobe)
    if ef_search is not None:
        params = replace(params, ef_search=ef_search)
    if hnsw_m is not None:
        params = replace(params, hnsw_m=hnsw_m)
    if candidates is not None:
        params = replace(params, candidates_min=candidates)
    calibration = None
    if calibrate_from is not None:
        model, calibration = fit_file(calibrate_from, dim=dim)
    else:
        model = default_face_model(dim)

    def log(msg: str) -> None:
        err.print(f"[dim]{msg}[/dim]")

    result = run_search_bench(
        faces=faces,
        dim=dim,
        queries=queries,
        k=k,
        kind=kind,
        params=params,
        model=model,
        threads=threads,
        seed=seed,
        workdir=workdir,
        exact_budget_s=exact_seconds,
        exact_max=EXACT_MAX_FACES if exact_max is None else exact_max,
        log=log,
        sweep_nprobe=tuple(int(x) for x in sweep_nprobe.split(",")) if sweep_nprobe else None,
        probes=probes,
        index_uri=index,
        milvus_server=milvus_server,
    )
    if calibration is not None:
        result["calibration"] = calibration
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table(title=f"search benchmark: {faces:,} faces, {dim}-d, kind {result['kind']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys: tuple[str, ...] = (
        "recall_at_1",
        "recall_at_10",
        "candidate_recall_at_10",
        "p50_ms",
        "p99_ms",
        "exact_p50_ms",
        "speedup",
        "build_seconds",
        "bytes_per_face",
        "ram_bytes_per_face",
        "mapped_bytes_per_face",
        "rss_bytes",
        "peak_rss_bytes",
    )
    if probes > 1:
        keys += (
            "probes",
            "fused_p50_ms",
            "fused_p99_ms",
            "single_p50_ms",
            "fused_per_photo_ratio",
            "fused_ratio",
            "fused_recall_at_1",
            "fused_recall_at_10",
            "rank1_identity_single",
            "rank1_identity_fused",
        )
    for key in keys:
        value = result.get(key)
        table.add_row(key, "-" if value is None else f"{value:,.4g}")
    for key in ("recall_at_10", "p50_ms", "p99_ms", "p50_over_faiss", "recall_at_10_over_faiss"):
        if "milvus" in result:
            value = result["milvus"].get(key)
            table.add_row(f"milvus {key}", "-" if value is None else f"{value:,.4g}")
    Console().print(table)
