"""LFW evaluation in the field's own terms.

* **Verification (1:1)**: the standard LFW View-2 protocol: the 6,000 pairs of
  ``pairs.txt`` in 10 folds; for each fold the threshold is chosen on the other 9 and the
  accuracy measured on it; mean and standard deviation over the folds.
* **Identification (1:N)**, NIST FRVT style, on the people *outside* the calibration split:
  gallery = one image (the first) of every single-image person and of a deterministic half
  of the people with two or more images; mated probes = the other images of those gallery
  people with two or more; non-mated probes = every image of the other half (not enrolled).
  Reported: rank-1 and rank-10 hit rates of mated probes, and FNIR at FPIR = 0.003: the
  threshold T is set so that 0.3 % of non-mated searches return a top candidate scoring
  >= T, and FNIR is the share of mated searches whose mate is not returned at rank 1 with a
  score >= T. The calibrated FPIR predicted at T (1 - (1 - FMR(T))^N) is reported beside it.
* **Calibration split**: the people whose SHA-256(name) is 0 mod 4 (about a quarter).
  All cross-person pairs among their images give the impostor scores the shipped
  calibration is fitted on; they are excluded from the 1:N protocol.

One face per image: the detected face whose centre is nearest the image centre (LFW's
subject is centred). Where no detector finds a face, a centred box is embedded so that the
pair still counts, and the image is reported as undetected (``detection_rate``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceledger import calibration
from faceledger.analysis import FaceAnalyzer
from faceledger.decode import decode_image
from faceledger.detection import centred_box
from faceledger.parallel import ordered_map

FPIR_TARGET = 0.003


@dataclass
class LfwDataset:
    root: Path
    people: dict[str, list[str]]  # name -> relative image paths, sorted

    @classmethod
    def load(cls, root: Path) -> LfwDataset:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root}: LFW not found; get it with `faceledger datasets fetch lfw`"
            )
        people: dict[str, list[str]] = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            imgs = sorted(f"{d.name}/{f.name}" for f in d.iterdir() if f.suffix == ".jpg")
            if imgs:
                people[d.name] = imgs
        if not people:
            raise FileNotFoundError(f"{root}: no LFW person folders found")
        return cls(root, people)

    def image(self, name: str, number: int) -> str:
        return f"{name}/{name}_{number:04d}.jpg"

    def all_images(self) -> list[str]:
        return [img for imgs in self.people.values() for img in imgs]


def parse_pairs(path: Path) -> list[list[tuple[str, str, bool]]]:
    """View-2 ``pairs.txt`` -> folds of (image_a, image_b, same_person)."""
    lines = Path(path).read_text().split("\n")
    n_folds, n_per = (int(x) for x in lines[0].split())
    rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
    if len(rows) != n_folds * 2 * n_per:
        raise ValueError(f"{path}: expected {n_folds * 2 * n_per} pairs, found {len(rows)}")
    folds = []
    for f in range(n_folds):
        fold = []
        for r in rows[f * 2 * n_per : (f + 1) * 2 * n_per]:
            if len(r) == 3:
                a = f"{r[0]}/{r[0]}_{int(r[1]):04d}.jpg"
                b = f"{r[0]}/{r[0]}_{int(r[2]):04d}.jpg"
                fold.append((a, b, True))
            elif len(r) == 4:
                a = f"{r[0]}/{r[0]}_{int(r[1]):04d}.jpg"
                b = f"{r[2]}/{r[2]}_{int(r[3]):04d}.jpg"
                fold.append((a, b, False))
            else:
                raise ValueError(f"{path}: bad pair line {r!r}")
        folds.append(fold)
    return folds


def in_calibration_split(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 4 == 0


def in_gallery_half(name: str) -> bool:
    return int(hashlib.sha256(f"gallery:{name}".encode()).hexdigest(), 16) % 2 == 0


# -- embedding every image, cached ----------------------------------------------------------

_eval_analyzer: FaceAnalyzer | None = None


def _init_eval(factory: Callable[[], FaceAnalyzer]) -> None:
    global _eval_analyzer
    _eval_analyzer = factory()


def embed_subject(analyzer: FaceAnalyzer, img: np.ndarray) -> tuple[np.ndarray, int, str]:
    """Embed the LFW subject: the detected face nearest the centre, else a centred box.

    Returns (embedding, number of faces detected, detector of the embedded face).
    """
    dets = analyzer.detector.detect(img)
    if dets:
        cx, cy = img.shape[1] / 2, img.shape[0] / 2
        chosen = min(
            dets,
            key=lambda d: np.hypot(
                (d.bbox.left + d.bbox.right) / 2 - cx, (d.bbox.top + d.bbox.bottom) / 2 - cy
            ),
        )
    else:
        chosen = centred_box(img)
    face = analyzer.faces_from_detections(img, [chosen])[0]
    return face.embedding, len(dets), chosen.detector


def _embed_path(path: str) -> tuple[np.ndarray, int, str]:
    assert _eval_analyzer is not None
    return embed_subject(_eval_analyzer, decode_image(Path(path).read_bytes()).pixels)


@dataclass
class EmbeddingTable:
    paths: list[str]
    vectors: np.ndarray  # (n, dim)
    detected: np.ndarray  # bool

    def lookup(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def embed_lfw(
    ds: LfwDataset,
    analyzer_factory: Callable[[], FaceAnalyzer],
    cache: Path | None,
    workers: int = 1,
    advance: Callable[[int], None] = lambda n: None,
) -> EmbeddingTable:
    paths = ds.all_images()
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if list(z["paths"]) == paths:
            advance(len(paths))
            return EmbeddingTable(paths, z["vectors"], z["detected"])
    vectors: list[np.ndarray] = []
    detected: list[bool] = []
    work = ((p, str(ds.root / p)) for p in paths)
    for _, (vec, n, _det) in ordered_map(
        _embed_path, work, workers, _init_eval, (analyzer_factory,)
    ):
        vectors.append(vec)
        detected.append(n > 0)
        advance(1)
    table = EmbeddingTable(paths, np.stack(vectors).astype(np.float32), np.array(detected))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, paths=np.array(paths), vectors=table.vectors, detected=table.detected)
        tmp.replace(cache)
    return table


# -- protocols ---------------------------------------------------------------------------


def verification(table: EmbeddingTable, folds: list[list[tuple[str, str, bool]]]) -> dict[str, Any]:
    at = table.lookup()
    fold_scores = []
    fold_labels = []
    for fold in folds:
        a = table.vectors[[at[x] for x, _, _ in fold]]
        b = table.vectors[[at[y] for _, y, _ in fold]]
        fold_scores.append(np.sum(a * b, axis=1))
        fold_labels.append(np.array([same for _, _, same in fold]))
    accs, thresholds = [], []
    for k in range(len(folds)):
        train_s = np.concatenate([s for i, s in enumerate(fold_scores) if i != k])
        train_l = np.concatenate([lab for i, lab in enumerate(fold_labels) if i != k])
        t = best_threshold(train_s, train_l)
        thresholds.append(t)
        accs.append(float(np.mean((fold_scores[k] >= t) == fold_labels[k])))
    return {
        "verification_accuracy": float(np.mean(accs)),
        "verification_std": float(np.std(accs)),
        "verification_fold_accuracies": accs,
        "verification_thresholds": thresholds,
    }


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising accuracy (midpoint between neighbouring sorted scores)."""
    order = np.argsort(scores)
    s, lab = scores[order], labels[order].astype(np.int64)
    # accepting everything at or above s[i]: correct = negatives below + positives at/above
    neg_below = np.concatenate([[0], np.cumsum(1 - lab)])
    pos_above = np.concatenate([np.cumsum(lab[::-1])[::-1], [0]])
    correct = neg_below + pos_above
    i = int(np.argmax(correct))
    if i == 0:
        return float(s[0] - 1e-6)
    if i == len(s):
        return float(s[-1] + 1e-6)
    return float((s[i - 1] + s[i]) / 2)


def impostor_scores(table: EmbeddingTable, names: list[str]) -> np.ndarray:
    """All cross-person pair scores among the images of ``names``."""
    at = table.lookup()
    idx, owner = [], []
    by_person: dict[str, list[int]] = {}
    for p, i in at.items():
        by_person.setdefault(p.split("/", 1)[0], []).append(i)
    for pid, name in enumerate(names):
        for i in by_person.get(name, []):
            idx.append(i)
            owner.append(pid)
    v = table.vectors[idx]
    own = np.array(owner)
    out = []
    for start in range(0, len(idx), 2048):
        block = v[start : start + 2048] @ v.T
        rows = np.arange(start, min(start + 2048, len(idx)))
        # upper triangle (j > i) and different person
        mask = (np.arange(len(idx))[None, :] > rows[:, None]) & (own[None, :] != own[rows][:, None])
        out.append(block[mask])
    return np.concatenate(out)


def identification(
    ds: LfwDataset, table: EmbeddingTable, calib: calibration.Calibration | None
) -> dict[str, Any]:
    at = table.lookup()
    gallery_idx, gallery_owner = [], []
    mated: list[int] = []
    mated_owner: list[str] = []
    nonmated: list[int] = []
    for name, imgs in ds.people.items():
        if in_calibration_split(name):
            continue
        if len(imgs) == 1 or in_gallery_half(name):
            gallery_idx.append(at[imgs[0]])
            gallery_owner.append(name)
            for img in imgs[1:]:
                mated.append(at[img])
                mated_owner.append(name)
        else:
            nonmated.extend(at[img] for img in imgs)
    g = table.vectors[gallery_idx]
    owners = np.array(gallery_owner)

    def top(probe_idx: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = table.vectors[probe_idx] @ g.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        part_s = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_s, axis=1)
        return np.take_along_axis(part_s, order, axis=1), np.take_along_axis(part, order, axis=1)

    m_scores, m_ids = top(mated, 10)
    hits = owners[m_ids] == np.array(mated_owner)[:, None]
    n_scores, _ = top(nonmated, 1)
    nm_top = np.sort(n_scores[:, 0])
    # threshold: FPIR(T) = share of non-mated top scores >= T equals the target
    k = int(np.floor(FPIR_TARGET * len(nm_top)))
    t = float(nm_top[len(nm_top) - k]) if k > 0 else float(nm_top[-1] + 1e-6)
    fpir = float(np.mean(nm_top >= t))
    rank1_hit = hits[:, 0] & (m_scores[:, 0] >= t)
    n_gallery = len(gallery_idx)
    out: dict[str, Any] = {
        "gallery_size": n_gallery,
        "mated_probes": len(mated),
        "nonmated_probes": len(nonmated),
        "rank1": float(np.mean(hits[:, 0])),
        "rank10": float(np.mean(hits.any(axis=1))),
        "fpir_threshold": t,
        "measured_fpir": fpir,
        "fnir_at_fpir_0_003": float(1.0 - np.mean(rank1_hit)),
    }
    if calib is not None:
        est = calib.estimate(t)
        out["calibrated_fmr_at_threshold"] = est.fmr
        out["calibrated_fpir_at_threshold"] = float(1 - (1 - est.fmr) ** n_gallery)
        out["calibration_extrapolated"] = est.extrapolated
    return out


def calibration_names(ds: LfwDataset) -> list[str]:
    return [n for n in ds.people if in_calibration_split(n)]


def run_lfw(
    lfw_dir: Path,
    analyzer_factory: Callable[[], FaceAnalyzer],
    model_id: str,
    cache: Path | None,
    workers: int,
    advance: Callable[[int], None] = lambda n: None,
    set_total: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ds = LfwDataset.load(lfw_dir)
    folds = parse_pairs(ds.root / "pairs.txt")
    set_total(len(ds.all_images()))
    table = embed_lfw(ds, analyzer_factory, cache, workers, advance)
    result: dict[str, Any] = {
        "model_id": model_id,
        "images": len(table.paths),
        "detection_rate": float(np.mean(table.detected)),
        "undetected_images": int((~table.detected).sum()),
    }
    result.update(verification(table, folds))
    result.update(identification(ds, table, calibration.load(model_id)))
    result["seconds"] = time.perf_counter() - t0
    return result
