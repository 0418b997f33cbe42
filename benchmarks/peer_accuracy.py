"""Benchmark: LFW View-2 accuracy, the ``face_recognition`` library vs ``faceledger eval lfw``.

Both sides are scored on the same 6,000 pairs of LFW's ``pairs.txt`` (read by faceledger's
``evaluation.parse_pairs``) with the same protocol: 10 folds; for each fold the threshold
that maximises accuracy on the other nine (``evaluation.best_threshold``) is applied to it;
mean and standard deviation over the folds.

(a) ``face_recognition`` 1.3.0 as its users call it, per image: ``load_image_file`` ->
    ``face_locations`` (its defaults: HOG, upsample 1) -> ``face_encodings(image,
    known_face_locations=...)`` (its defaults: 5-point landmarks, 1 jitter). One face per
    image, chosen as faceledger's evaluation does (``evaluation.embed_subject``): the found
    face whose box centre is nearest the image centre; where none is found, the centred box
    of ``faceledger.vision.detection.centred_box`` (a 112 px square at (69, 69) on a 250x250 LFW
    image) is encoded and the image counted as undetected. Pair score = -``face_distance``
    (the Euclidean distance of the 128-d encodings). Also reported, for information: the
    accuracy at the library's documented fixed tolerance 0.6 (same person when the distance
    is at most 0.6), per fold. Only the distinct images of the pairs (7,701) are encoded, in
    a ``forkserver`` process pool of ``--workers`` as its CLI does; the time (wall clock,
    including pool start-up and model loading) and images/s are a second speed figure.
    The encodings are cached in an .npz under ``--cache-dir`` (with the library version and
    image list; ``--no-cache`` recomputes), and a cached run reports the encoding time it
    recorded.
(b) faceledger: ``faceledger eval lfw --lfw-dir DIR --json --data-dir D`` as a subprocess,
    the command README's accuracy table comes from, with its defaults; its
    ``verification_accuracy`` and ``verification_std`` are read from the JSON. It embeds all
    13,233 LFW images unless its embedding cache in ``D`` (``--faceledger-data-dir``,
    default a folder under ``--cache-dir``) is already there (``--faceledger-cached-only``
    fails instead of embedding, so a shared data dir is only read).

Undetected images are reported for both sides on the pair images, and for faceledger also
over all of LFW (its own report). ``--pairs-limit N`` scores only the first N pairs of each
fold (half same, half different) for development; faceledger's side is then computed from
its embedding cache on the same pairs, and the output says it is a subset.

Install the baseline with ``pip install face_recognition==1.3.0 --no-deps`` (its API needs
only dlib, numpy, Pillow and ``face_recognition_models``).

    python benchmarks/peer_accuracy.py [--lfw-dir DIR] [--workers 2] \\
        [--faceledger-data-dir DIR [--faceledger-cached-only]] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from ingest import CpuMeter, default_lfw_dir, describe_load, faceledger_exe  # noqa: E402

FIXED_TOLERANCE = 0.6  # face_recognition's compare_faces default
Folds = list[list[tuple[str, str, bool]]]


def limit_pairs(folds: Folds, per_fold: int | None) -> Folds:
    """The first ``per_fold`` pairs of each fold: the first half of its same-person pairs and
    of its different-person pairs."""
    if per_fold is None:
        return folds
    out = []
    for fold in folds:
        same = [p for p in fold if p[2]]
        diff = [p for p in fold if not p[2]]
        out.append(same[: per_fold - per_fold // 2] + diff[: per_fold // 2])
    return out


def pair_images(folds: Folds) -> list[str]:
    return sorted({p for fold in folds for a, b, _ in fold for p in (a, b)})


def ten_fold(scores: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, Any]:
    """faceledger's View-2 protocol (``evaluation.verification``) on given pair scores."""
    from faceledger.evaluation.lfw import best_threshold

    accs, thresholds = [], []
    for k in range(len(scores)):
        train_s = np.concatenate([s for i, s in enumerate(scores) if i != k])
        train_l = np.concatenate([lab for i, lab in enumerate(labels) if i != k])
        t = best_threshold(train_s, train_l)
        thresholds.append(t)
        accs.append(float(np.mean((scores[k] >= t) == labels[k])))
    return {
        "accuracy": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "fold_accuracies": accs,
        "thresholds": thresholds,
    }


# -- (a) face_recognition -----------------------------------------------------------------


def _fr_subject(path: str) -> tuple[np.ndarray, int]:
    """The LFW subject's encoding and the number of faces face_recognition found."""
    import face_recognition

    from faceledger.evaluation.lfw_data import nearest_centre
    from faceledger.vision.detection import centred_box

    image = face_recognition.load_image_file(path)
    locations = face_recognition.face_locations(image)  # (top, right, bottom, left)
    if locations:
        ltrb = [[left, top, right, bottom] for top, right, bottom, left in locations]
        box = locations[nearest_centre(image, ltrb)]
    else:
        c = centred_box(image).bbox
        box = (c.top, c.right, c.bottom, c.left)
    (encoding,) = face_recognition.face_encodings(image, known_face_locations=[box])
    return encoding, len(locations)


def encode_face_recognition(lfw: Path, images: list[str], workers: int) -> dict[str, Any]:
    # face_recognition_cli.process_images_in_process_pool: forkserver where available
    context: Any = multiprocessing
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
    results = []
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        pool = context.Pool(processes=workers)
        try:
            work = [str(lfw / p) for p in images]
            for i, r in enumerate(pool.imap(_fr_subject, work, chunksize=4), 1):
                results.append(r)
                if i % 500 == 0:
                    rate = i / (time.perf_counter() - t0)
                    print(f"  face_recognition: {i}/{len(images)} ({rate:.1f}/s)", file=sys.stderr)
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.close()
            pool.join()  # the workers have exited: CpuMeter counts their CPU
        seconds = time.perf_counter() - t0
    return {
        "encodings": np.stack([e for e, _ in results]),
        "faces_found": np.array([n for _, n in results]),
        "seconds": seconds,
        "workers": workers,
        **meter.result(),
    }


def cached_face_recognition(
    lfw: Path, images: list[str], workers: int, cache_dir: Path | None
) -> dict[str, Any]:
    """face_recognition's encodings of ``images``, from the cache if it holds this exact
    image list and library version (its timing then is the recorded one)."""
    lib = version("face_recognition")
    key = hashlib.sha256("\n".join([str(lfw.resolve()), *images]).encode()).hexdigest()[:16]
    cache = None if cache_dir is None else cache_dir / f"face_recognition-{lib}-{key}.npz"
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["version"]) == lib and list(z["images"]) == images:
            meta = json.loads(str(z["meta"]))
            return {
                "encodings": z["encodings"],
                "faces_found": z["faces_found"],
                **meta,
                "cached": str(cache),
            }
    run = encode_face_recognition(lfw, images, workers)
    run["encoded_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in run.items() if k not in ("encodings", "faces_found")}
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            version=np.array(lib),
            images=np.array(images),
            encodings=run["encodings"],
            faces_found=run["faces_found"],
            meta=np.array(json.dumps(meta)),
        )
        tmp.replace(cache)
    return {**run, "cached": None}


def score_face_recognition(run: dict[str, Any], images: list[str], folds: Folds) -> dict[str, Any]:
    at = {p: i for i, p in enumerate(images)}
    enc = run["encodings"]
    labels = [np.array([same for _, _, same in fold]) for fold in folds]
    distances = [
        np.linalg.norm(enc[[at[a] for a, _, _ in fold]] - enc[[at[b] for _, b, _ in fold]], axis=1)
        for fold in folds
    ]
    protocol = ten_fold([-d for d in distances], labels)
    fixed = [
        float(np.mean((d <= FIXED_TOLERANCE) == lab))
        for d, lab in zip(distances, labels, strict=True)
    ]
    return {
        "version": version("face_recognition"),
        "accuracy": protocol["accuracy"],
        "std": protocol["std"],
        "fold_accuracies": protocol["fold_accuracies"],
        "distance_thresholds": [-t for t in protocol["thresholds"]],
        "fixed_tolerance": FIXED_TOLERANCE,
        "fixed_tolerance_accuracy": float(np.mean(fixed)),
        "fixed_tolerance_std": float(np.std(fixed)),
        "images": len(images),
        "undetected": int(np.sum(run["faces_found"] == 0)),
        "several_faces": int(np.sum(run["faces_found"] > 1)),
        "seconds": run["seconds"],
        "images_per_second": len(images) / run["seconds"],
        "workers": run["workers"],
        "cores_busy": run["cores_busy"],
        "machine_cores_busy": run["machine_cores_busy"],
        "load_before": run["load_before"],
        "load_mean": run["load_mean"],
        "load_max": run["load_max"],
        "encoded_at": run["encoded_at"],
        "cached": run["cached"],
    }


# -- (b) faceledger ------------------------------------------------------------------------


def faceledger_cache(data_dir: Path) -> Path:
    """Where ``faceledger eval lfw`` (defaults) keeps its embeddings in ``data_dir``."""
    from faceledger.evaluation.lfw import lfw_setup  # the one place that names the cache file

    return lfw_setup("hog+cnn", "default", data_dir, None, "cpu")[2]


def run_faceledger(
    lfw: Path,
    data_dir: Path,
    workers: int,
    no_cache: bool,
    folds: Folds,
    subset: bool,
    cached_only: bool = False,
) -> dict[str, Any]:
    from faceledger.evaluation.lfw import EmbeddingTable, verification

    cmd = [faceledger_exe(), "eval", "lfw", "--lfw-dir", str(lfw), "--json"]
    cmd += ["--data-dir", str(data_dir), "--workers", str(workers)]
    if no_cache:
        cmd.append("--no-cache")
    cache = faceledger_cache(data_dir)
    had_cache = cache.is_file() and not no_cache
    if cached_only and not had_cache:
        raise SystemExit(f"--faceledger-cached-only: no embedding cache at {cache}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"faceledger eval lfw failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    out: dict[str, Any] = {
        "model_id": doc["model_id"],
        "detector": doc["detector"],
        "accuracy": doc["verification_accuracy"],
        "std": doc["verification_std"],
        "fold_accuracies": doc["verification_fold_accuracies"],
        "lfw_images": doc["images"],
        "lfw_undetected": doc["undetected_images"],
        "undetected": None,
        "seconds": seconds,
        "embeddings_cached": had_cache,
        "command": "faceledger " + " ".join(cmd[1:]),
    }
    if cache.is_file() and not no_cache:  # the pair images' detections, and a subset's scores
        z = np.load(cache, allow_pickle=False)
        table = EmbeddingTable(list(z["paths"]), z["vectors"], z["detected"])
        at = table.lookup()
        out["undetected"] = int(sum(not table.detected[at[p]] for p in pair_images(folds)))
        if subset:
            v = verification(table, folds)
            out["full_view2_accuracy"] = out["accuracy"]
            out["accuracy"] = v["verification_accuracy"]
            out["std"] = v["verification_std"]
            out["fold_accuracies"] = v["verification_fold_accuracies"]
    elif subset:
        raise SystemExit("--pairs-limit needs faceledger's embedding cache (drop --no-cache)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw-dir", type=Path, default=None, help="LFW root folder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "faceledger-peer-accuracy",
        help="where face_recognition's encodings (and by default faceledger's data dir) live",
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute both sides")
    parser.add_argument(
        "--faceledger-data-dir",
        type=Path,
        default=None,
        help="data dir for faceledger eval lfw (reuses its embedding cache; default: "
        "CACHE_DIR/faceledger)",
    )
    parser.add_argument(
        "--faceledger-cached-only",
        action="store_true",
        help="fail rather than embed LFW if faceledger's embedding cache is missing "
        "(never writes to that data dir)",
    )
    parser.add_argument(
        "--pairs-limit", type=int, default=None, help="pairs per fold (development subset)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = parser.parse_args(argv)

    lfw = args.lfw_dir or default_lfw_dir()
    if not (lfw / "pairs.txt").is_file():
        print(f"LFW not found at {lfw}; pass --lfw-dir or set FACELEDGER_LFW", file=sys.stderr)
        return 2
    try:
        import face_recognition  # noqa: F401
    except ImportError:
        print("pip install face_recognition==1.3.0 --no-deps", file=sys.stderr)
        return 2
    from faceledger.evaluation.lfw import parse_pairs

    all_folds = parse_pairs(lfw / "pairs.txt")
    folds = limit_pairs(all_folds, args.pairs_limit)
    subset = sum(map(len, folds)) < sum(map(len, all_folds))
    images = pair_images(folds)
    n_pairs = sum(map(len, folds))
    what = (
        f"SUBSET: {n_pairs} of the {sum(map(len, all_folds))} View-2 pairs "
        f"({args.pairs_limit} per fold)"
        if subset
        else f"LFW View 2: {n_pairs} pairs in {len(folds)} folds"
    )
    if not args.json:
        print(f"{what}, {len(images)} distinct images, {lfw}", flush=True)

    fr_run = cached_face_recognition(
        lfw, images, args.workers, None if args.no_cache else args.cache_dir
    )
    fr = score_face_recognition(fr_run, images, folds)
    data_dir = args.faceledger_data_dir or args.cache_dir / "faceledger"
    fl = run_faceledger(
        lfw, data_dir, args.workers, args.no_cache, folds, subset, args.faceledger_cached_only
    )

    diff = fl["accuracy"] - fr["accuracy"]
    err_fr, err_fl = 1 - fr["accuracy"], 1 - fl["accuracy"]
    ratio = err_fr / err_fl if err_fl > 0 else None
    doc = {
        "lfw_dir": str(lfw),
        "subset": subset,
        "pairs": n_pairs,
        "pairs_per_fold": args.pairs_limit if subset else len(all_folds[0]),
        "images": len(images),
        "face_recognition": fr,
        "faceledger": fl,
        "difference": diff,
        "error_ratio": ratio,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    timing = f"from the cache, encoded {fr['encoded_at']}" if fr["cached"] else "in this run"
    print(
        f"(a) face_recognition {fr['version']} (HOG, 5-point landmarks, 1 jitter; score "
        f"-face_distance): {fr['accuracy']:.4f} ± {fr['std']:.4f}\n"
        f"    at its fixed tolerance {FIXED_TOLERANCE}: {fr['fixed_tolerance_accuracy']:.4f} "
        f"± {fr['fixed_tolerance_std']:.4f}\n"
        f"    {fr['undetected']} of {fr['images']} images undetected (encoded from the "
        f"centred box), {fr['several_faces']} with several faces (nearest the centre taken)\n"
        f"    encoding: {fr['images']} images in {fr['seconds']:.1f} s, "
        f"{fr['images_per_second']:.1f} images/s with {fr['workers']} workers ({timing})\n"
        f"    {describe_load(fr)}"
    )
    pair_undetected = (
        "" if fl["undetected"] is None else f"{fl['undetected']} of the {len(images)} pair "
    )
    print(
        f"(b) faceledger eval lfw ({fl['model_id']}, {fl['detector']}): "
        f"{fl['accuracy']:.4f} ± {fl['std']:.4f}"
        + (f" (full View 2: {fl['full_view2_accuracy']:.4f})" if subset else "")
        + f"\n    {pair_undetected}images undetected; {fl['lfw_undetected']} of all "
        f"{fl['lfw_images']} LFW images\n"
        f"    {fl['command']} ({fl['seconds']:.1f} s, embeddings "
        f"{'from its cache' if fl['embeddings_cached'] else 'computed'})"
    )
    print(
        f"difference (b) - (a): {diff:+.4f}; error rate {err_fr:.2%} vs {err_fl:.2%}"
        + (f" ((a)/(b) {ratio:.2f}x)" if ratio else "")
        + (" [SUBSET, not View 2]" if subset else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
