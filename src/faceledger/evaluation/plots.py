"""The LFW evaluation's pictures (``faceledger eval lfw --plots DIR``, issue #14 item 5), drawn
with matplotlib (Agg, no display) from the numbers of the same run:

* ``roc.png``: ROC of View-2 verification (true match rate against false match rate over the
  6,000 pairs' scores, log x), the 10-fold accuracy in the title;
* ``det.png``: DET of the 1:N searches (FNIR against FPIR, log axes): the single-photo
  protocol, the subject gallery and the multi-photo probes, one line per fusion rule;
* ``scores.png``: histograms of the genuine and impostor View-2 pair scores;
* ``calibration.png``: FPIR predicted by the calibration against the FPIR measured, for the
  single-photo protocol and the default rule's fused protocols, with the 2x band.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceledger.evaluation.fusion import ProtocolRun

PLOT_FILES = ("roc.png", "det.png", "scores.png", "calibration.png")


def det_curve(run: ProtocolRun) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) at every threshold a non-mated top score sets, where FPIR > 0."""
    t = np.unique(run.nonmated_top1)[::-1]  # descending: FPIR grows
    nm = np.sort(run.nonmated_top1)
    hits = np.sort(run.mated_hit_score)
    fpir = (len(nm) - np.searchsorted(nm, t, side="left")) / len(nm)
    fnir = 1.0 - (len(hits) - np.searchsorted(hits, t, side="left")) / max(1, len(hits))
    return fpir, fnir


def calibration_curve(run: ProtocolRun) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, measured) FPIR at every threshold a non-mated top score sets, for the
    run's calibration (empty without one)."""
    if run.calibration is None:
        return np.zeros(0), np.zeros(0)
    t = np.unique(run.nonmated_top1)[::-1]
    nm = np.sort(run.nonmated_top1)
    measured = (len(nm) - np.searchsorted(nm, t, side="left")) / len(nm)
    fmr = np.array([run.calibration.estimate(float(s)).fmr for s in t])
    predicted = 1.0 - (1.0 - fmr) ** run.gallery_size
    return predicted, measured


def write_plots(
    out_dir: Path,
    pair_scores: np.ndarray,
    pair_same: np.ndarray,
    verification_accuracy: float,
    det_runs: Sequence[ProtocolRun],
    calibration_runs: Sequence[ProtocolRun],
) -> list[Path]:
    """Write :data:`PLOT_FILES` into ``out_dir`` (created); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in PLOT_FILES]
    same = np.asarray(pair_same, bool)
    genuine, impostor = pair_scores[same], pair_scores[~same]

    fig, ax = plt.subplots(figsize=(6, 4.5))
    t = np.unique(pair_scores)[::-1]
    far = (len(impostor) - np.searchsorted(np.sort(impostor), t)) / max(1, len(impostor))
    tar = (len(genuine) - np.searchsorted(np.sort(genuine), t)) / max(1, len(genuine))
    keep = far > 0
    ax.plot(far[keep], tar[keep], lw=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("false match rate (impostor pairs accepted)")
    ax.set_ylabel("true match rate (genuine pairs accepted)")
    ax.set_title(
        f"LFW View-2 ROC ({len(pair_scores)} pairs; 10-fold accuracy {verification_accuracy:.4f})"
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"single": "-", "max": "--", "mean_topk": ":", "template": "-."}
    colours: dict[str, str] = {}
    for run in det_runs:
        protocol, _, rule = run.label.partition(": ")
        colour = colours.setdefault(protocol, f"C{len(colours)}")
        fpir, fnir = det_curve(run)
        keep = (fpir > 0) & (fnir > 0)
        ax.plot(
            fpir[keep], fnir[keep], styles.get(rule, "-"), color=colour, lw=1.3, label=run.label
        )
    ax.axvline(0.003, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPIR (non-mated searches with a top candidate at or above T)")
    ax.set_ylabel("FNIR (mated searches without their mate at rank 1, at or above T)")
    ax.set_title("LFW 1:N DET: single photo, subject gallery, multi-photo probes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(float(pair_scores.min()), float(pair_scores.max()), 60).tolist()
    ax.hist(impostor, bins=bins, alpha=0.6, label=f"impostor pairs ({len(impostor)})")
    ax.hist(genuine, bins=bins, alpha=0.6, label=f"genuine pairs ({len(genuine)})")
    ax.set_xlabel("cosine score")
    ax.set_ylabel("pairs")
    ax.set_title("LFW View-2 pair scores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    lo, hi = 1.0, 0.0
    for run in calibration_runs:
        predicted, measured = calibration_curve(run)
        keep = (predicted > 0) & (measured > 0)
        if keep.any():
            ax.plot(predicted[keep], measured[keep], lw=1.3, label=run.label)
            lo = min(lo, float(predicted[keep].min()), float(measured[keep].min()))
            hi = max(hi, float(predicted[keep].max()), float(measured[keep].max()))
    if hi > lo:
        line = np.geomspace(lo, hi, 50)
        ax.plot(line, line, color="black", lw=0.8, label="predicted = measured")
        ax.fill_between(line, line / 2, line * 2, color="grey", alpha=0.2, label="within 2x")
    ax.axhline(0.003, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPIR predicted by the calibration, 1 - (1 - FMR(T))^N")
    ax.set_ylabel("FPIR measured on non-mated searches")
    ax.set_title("Calibration: predicted vs measured FPIR")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[3], dpi=110)
    plt.close(fig)
    return paths
