from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceledger.evaluation import lfw as evaluation
from faceledger.evaluation.lfw import EmbeddingTable, LfwDataset

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


def test_parse_real_pairs(lfw: Path) -> None:
    folds = evaluation.parse_pairs(lfw / "pairs.txt")
    assert len(folds) == 10 and all(len(f) == 600 for f in folds)
    assert sum(same for f in folds for _, _, same in f) == 3000
    a, b, same = folds[0][0]
    assert same and a.split("/")[0] == b.split("/")[0]
    assert (lfw / a).is_file()


def test_best_threshold_separates() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1], bool)
    t = evaluation.best_threshold(scores, labels)
    assert 0.3 < t < 0.7


def test_splits_are_deterministic_and_balanced(lfw: Path) -> None:
    ds = LfwDataset.load(lfw)
    calib = evaluation.calibration_names(ds)
    assert 0.22 < len(calib) / len(ds.people) < 0.28
    assert calib == evaluation.calibration_names(LfwDataset.load(lfw))


def _toy_table(ds_people: dict[str, list[str]], noise: float) -> EmbeddingTable:
    rng = np.random.default_rng(0)
    paths, vecs = [], []
    for imgs in ds_people.values():
        centre = rng.normal(size=32)
        for img in imgs:
            v = centre + rng.normal(scale=noise, size=32)
            paths.append(img)
            vecs.append(v / np.linalg.norm(v))
    return EmbeddingTable(paths, np.array(vecs, np.float32), np.ones(len(paths), bool))


def test_identification_protocol_on_separable_vectors(tmp_path: Path) -> None:
    people = {
        f"P{i:03d}": [f"P{i:03d}/P{i:03d}_{j:04d}.jpg" for j in range(1, 1 + (i % 4) + 1)]
        for i in range(400)
    }
    ds = LfwDataset(tmp_path, people)
    res = evaluation.identification(ds, _toy_table(people, noise=0.2), None)
    assert res["rank1"] == 1.0 and res["rank10"] == 1.0
    assert res["fnir_at_fpir_0_003"] < 0.05
    assert res["measured_fpir"] <= 0.0035
    noisy = evaluation.identification(ds, _toy_table(people, noise=3.0), None)
    assert noisy["rank1"] < 0.5


def test_verification_on_a_real_fold(lfw: Path, analyzer) -> None:
    """A slice of View 2 (60 pairs of fold 1) through the real pipeline."""
    from faceledger.vision.decode import decode_image

    folds = evaluation.parse_pairs(lfw / "pairs.txt")
    fold = folds[0][:30] + folds[0][300:330]
    paths = sorted({p for a, b, _ in fold for p in (a, b)})
    rows = [
        evaluation.embed_subject(analyzer, decode_image((lfw / p).read_bytes()).pixels)
        for p in paths
    ]
    detected = np.array([n > 0 for _, n, _ in rows])
    assert detected.mean() > 0.95
    table = EmbeddingTable(paths, np.array([v for v, _, _ in rows]), detected)
    res = evaluation.verification(table, [fold[i::2] for i in range(2)])
    assert res["verification_accuracy"] >= 0.9
