"""LFW as data: the people and photos, View 2's pairs, the calibration and 1:N splits, every
photo embedded once (cached), and the rank metrics of a 1:N run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceledger.gallery.parallel import ordered_map
from faceledger.vision.analysis import FaceAnalyzer
from faceledger.vision.decode import decode_image
from faceledger.vision.detection import centred_box

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


def nearest_centre(img: np.ndarray, boxes: list[list[int]]) -> int:
    """Which of ``boxes`` ([left, top, right, bottom]) is the LFW subject: the one whose
    centre is nearest the image's (LFW's photos are centred on their subject)."""
    cx, cy = img.shape[1] / 2, img.shape[0] / 2
    return min(
        range(len(boxes)),
        key=lambda i: np.hypot(
            (boxes[i][0] + boxes[i][2]) / 2 - cx, (boxes[i][1] + boxes[i][3]) / 2 - cy
        ),
    )


def embed_subject(analyzer: FaceAnalyzer, img: np.ndarray) -> tuple[np.ndarray, int, str]:
    """Embed the LFW subject: the detected face nearest the centre, else a centred box.

    Returns (embedding, number of faces detected, detector of the embedded face).
    """
    dets = analyzer.detector.detect(img)
    if dets:
        chosen = dets[nearest_centre(img, [d.bbox.as_list() for d in dets])]
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


@dataclass
class OneToNSplit:
    """The 1:N protocol's rows of the embedding table (see the module docstring)."""

    gallery: np.ndarray  # table rows enrolled, one per gallery person
    owners: np.ndarray  # person of each gallery row
    mated: np.ndarray  # table rows of mated probes
    mated_owner: np.ndarray  # person of each mated probe
    nonmated: np.ndarray  # table rows of non-mated probes


def one_to_n_split(ds: LfwDataset, table: EmbeddingTable) -> OneToNSplit:
    at = table.lookup()
    gallery_idx: list[int] = []
    gallery_owner: list[str] = []
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
    return OneToNSplit(
        np.array(gallery_idx, np.int64),
        np.array(gallery_owner),
        np.array(mated, np.int64),
        np.array(mated_owner),
        np.array(nonmated, np.int64),
    )


def rank_metrics(
    split: OneToNSplit, m_scores: np.ndarray, m_pos: np.ndarray, nm_top1: np.ndarray
) -> dict[str, Any]:
    """Rank-1/10 and FNIR at FPIR = 0.003 from the gallery searches' results.

    ``m_scores``/``m_pos``: the mated probes' ranked scores and gallery positions (-1: no
    candidate); ``nm_top1``: each non-mated probe's top score.
    """
    hits = (m_pos >= 0) & (split.owners[np.maximum(m_pos, 0)] == split.mated_owner[:, None])
    nm_top = np.sort(nm_top1)
    # threshold: FPIR(T) = share of non-mated top scores >= T equals the target
    k = int(np.floor(FPIR_TARGET * len(nm_top)))
    t = float(nm_top[len(nm_top) - k]) if k > 0 else float(nm_top[-1] + 1e-6)
    fpir = float(np.mean(nm_top >= t))
    rank1_hit = hits[:, 0] & (m_scores[:, 0] >= t)
    return {
        "rank1": float(np.mean(hits[:, 0])),
        "rank10": float(np.mean(hits.any(axis=1))),
        "fpir_threshold": t,
        "measured_fpir": fpir,
        "fnir_at_fpir_0_003": float(1.0 - np.mean(rank1_hit)),
    }


def calibration_names(ds: LfwDataset) -> list[str]:
    return [n for n in ds.people if in_calibration_split(n)]
