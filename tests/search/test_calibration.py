from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import lfw_embeddings, need_lfw
from faceledger.search import calibration

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


@pytest.fixture
def calib() -> calibration.Calibration:
    rng = np.random.default_rng(1)
    scores = rng.normal(0.5, 0.08, 200_000)
    return calibration.fit(scores, "test_model", {"note": "synthetic"})


def test_empirical_region_matches_the_data(calib: calibration.Calibration) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(0.5, 0.08, 200_000)
    for s in (0.45, 0.55, 0.65):
        est = calib.estimate(s)
        assert not est.extrapolated
        assert est.fmr == pytest.approx(np.mean(scores >= s), rel=0.05)


def test_tail_is_flagged_monotone_and_continuous(calib: calibration.Calibration) -> None:
    grid = np.linspace(0.0, 1.2, 400)
    fmrs = [calib.estimate(s).fmr for s in grid]
    assert all(a >= b for a, b in itertools.pairwise(fmrs))
    beyond = calib.estimate(calib.tail_start + 0.05)
    assert beyond.extrapolated and beyond.fmr < calib.tail_fmr
    just_below = calib.estimate(calib.tail_start - 1e-9).fmr
    just_above = calib.estimate(calib.tail_start + 1e-9).fmr
    assert just_above == pytest.approx(just_below, rel=0.02)


def test_threshold_inverts_estimate(calib: calibration.Calibration) -> None:
    for target in (1e-2, 1e-3, 1e-6):
        t = calib.threshold_for(target)
        assert calib.estimate(t).fmr <= target * 1.05


def test_round_trip(calib: calibration.Calibration, tmp_path) -> None:
    calib.save(tmp_path / "c.json")
    import json

    again = calibration.Calibration.from_json(json.loads((tmp_path / "c.json").read_text()))
    assert again.estimate(0.7).fmr == pytest.approx(calib.estimate(0.7).fmr)


def test_too_few_scores_refused() -> None:
    with pytest.raises(ValueError):
        calibration.fit(np.zeros(10), "m", {})


@pytest.mark.parametrize("model_id", ["dlib_resnet_v1", "dlib_resnet_v1+flip"])
def test_shipped_calibration_for_the_default_model(model_id: str) -> None:
    from faceledger.vision.routing import create_embedder

    assert create_embedder(threads=1).model_id in ("dlib_resnet_v1", "dlib_resnet_v1+flip")
    c = calibration.load(model_id)
    assert c is not None, "run `faceledger calibrate lfw` and commit the JSON"
    assert c.info["impostor_pairs"] > 1_000_000
    # dlib's unit-normalised descriptors sit in a narrow cone: impostor cosine scores are
    # mostly 0.65-0.93, and LFW's best verification threshold is about 0.91 (FMR ~1 %).
    assert 1e-3 < c.estimate(0.91).fmr < 3e-2
    assert 1e-5 < c.estimate(0.94).fmr < 1e-3
    assert c.estimate(0.99).extrapolated
    assert calibration.load("no_such_model") is None


# -- against LFW (#17 item 3) -------------------------------------------------------------------
# The shipped calibrations are fitted on the impostor pairs of a quarter of LFW's people (the
# calibration split); the evaluation (1:N, verification) uses the other three quarters. These
# tests check the split on the real data set, rerun `faceledger calibrate lfw` on a subset, and
# (slow) hold each shipped calibration's predictions against impostors it never saw.


def _split_names(ds: Any) -> tuple[set[str], set[str]]:
    from faceledger.evaluation.lfw import EmbeddingTable, calibration_names, one_to_n_split

    paths = ds.all_images()
    table = EmbeddingTable(paths, np.zeros((len(paths), 1), np.float32), np.ones(len(paths), bool))
    split = one_to_n_split(ds, table)
    used = {p.split("/", 1)[0] for p in np.array(paths)[split.gallery]}
    used |= {p.split("/", 1)[0] for p in np.array(paths)[split.mated]}
    used |= {p.split("/", 1)[0] for p in np.array(paths)[split.nonmated]}
    return set(calibration_names(ds)), used


@pytest.mark.parametrize("model_id", ["dlib_resnet_v1", "dlib_resnet_v1+flip"])
def test_calibration_people_are_absent_from_the_one_to_n_split(model_id: str) -> None:
    """#17 item 3: no person of the calibration split is in the 1:N protocol (gallery, mated
    or non-mated probe), every other person is, and the shipped calibration counts the
    calibration split's people."""
    from faceledger.evaluation.lfw import LfwDataset

    ds = LfwDataset.load(need_lfw())
    calib_people, one_to_n_people = _split_names(ds)
    assert calib_people and not (calib_people & one_to_n_people)
    assert calib_people | one_to_n_people == set(ds.people)
    shipped = calibration.load(model_id)
    assert shipped is not None
    assert shipped.info["people"] == len(calib_people)


def _subset(lfw: Path, dest: Path, calib_people: int, other_people: int) -> list[str]:
    """An LFW-shaped folder: the first people (alphabetically) with two or more photos of the
    calibration split and of the rest; their folders are links to the real ones."""
    from faceledger.evaluation.lfw import in_calibration_split

    dest.mkdir()
    chosen: list[str] = []
    want = {True: calib_people, False: other_people}
    for d in sorted(p for p in lfw.iterdir() if p.is_dir()):
        side = in_calibration_split(d.name)
        if want[side] and len(list(d.glob("*.jpg"))) >= 2:
            want[side] -= 1
            (dest / d.name).symlink_to(d, target_is_directory=True)
            chosen.append(d.name)
        if not any(want.values()):
            break
    return chosen


def test_calibrate_lfw_on_a_subset_reproduces_the_fit(tmp_path: Path) -> None:
    """#17 item 3: `faceledger calibrate lfw` on a small LFW subset writes the fit that the
    impostor pairs of its calibration people give when recomputed here independently (each
    photo embedded again, every cross-person pair enumerated); people outside the
    calibration split do not count."""
    from typer.testing import CliRunner

    from faceledger.cli import app
    from faceledger.evaluation.lfw import embed_subject, in_calibration_split, lfw_setup
    from faceledger.vision.decode import decode_image

    root = tmp_path / "lfw"
    chosen = _subset(need_lfw(), root, calib_people=14, other_people=4)
    out_file, data = tmp_path / "calib.json", tmp_path / "data"
    args = ["calibrate", "lfw", "--lfw-dir", str(root), "--out", str(out_file)]
    r = CliRunner().invoke(app, [*args, "--data-dir", str(data), "--workers", "1"])
    assert r.exit_code == 0, r.output
    got = calibration.Calibration.from_json(json.loads(out_file.read_text()))

    factory, model_id, _ = lfw_setup("hog+cnn", "default", data, None, "cpu")
    analyzer = factory()
    photos = [
        (name, p)
        for name in chosen
        if in_calibration_split(name)
        for p in sorted((root / name).glob("*.jpg"))
    ]
    vectors = np.stack(
        [embed_subject(analyzer, decode_image(p.read_bytes()).pixels)[0] for _, p in photos]
    )
    scores = [
        float(vectors[i] @ vectors[j])
        for i, j in itertools.combinations(range(len(photos)), 2)
        if photos[i][0] != photos[j][0]
    ]
    want = calibration.fit(np.array(scores), model_id, {})
    assert got.model_id == model_id == "dlib_resnet_v1+flip"
    assert got.info["people"] == 14 and got.info["impostor_pairs"] == len(scores)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_allclose(got.fmrs, want.fmrs, rtol=1e-9)
    assert got.tail_start == pytest.approx(want.tail_start, abs=1e-6)
    assert got.tail_fmr == pytest.approx(want.tail_fmr, rel=1e-9)
    assert got.tail_rate == pytest.approx(want.tail_rate, rel=1e-4)


def _poisson_interval(k: int, level: float = 0.99) -> tuple[float, float]:
    """Exact (Garwood) interval for the mean of a Poisson count ``k``: the binomial
    interval when pairs are many and the rate tiny, as here."""
    from math import exp, lgamma, log

    def cdf(n: int, mu: float) -> float:
        return sum(exp(-mu + i * log(mu) - lgamma(i + 1)) for i in range(n + 1))

    def solve(f: Any, lo: float, hi: float) -> float:
        for _ in range(200):  # f decreasing in mu
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    a = (1 - level) / 2
    upper = solve(lambda mu: cdf(k, mu) - a, 1e-12, 10.0 * k + 50)
    lower = 0.0 if k == 0 else solve(lambda mu: cdf(k - 1, mu) - (1 - a), 1e-12, 10.0 * k + 50)
    return lower, upper


def _impostor_counts(
    table: Any, names: list[str], thresholds: np.ndarray
) -> tuple[np.ndarray, int]:
    """How many cross-person pairs among the photos of ``names`` score at or above each
    threshold, and how many such pairs there are (counted, not stored: ~50M pairs)."""
    by_person: dict[str, list[int]] = {}
    for i, p in enumerate(table.paths):
        by_person.setdefault(p.split("/", 1)[0], []).append(i)
    rows = [i for n in names for i in by_person[n]]
    owner = np.array([k for k, n in enumerate(names) for _ in by_person[n]])
    v = table.vectors[rows]
    counts = np.zeros(len(thresholds), np.int64)
    pairs = 0
    for start in range(0, len(rows), 1024):
        r = np.arange(start, min(start + 1024, len(rows)))
        block = v[r] @ v.T
        keep = (np.arange(len(rows))[None, :] > r[:, None]) & (owner[None, :] != owner[r, None])
        s = np.sort(block[keep])
        pairs += len(s)
        counts += len(s) - np.searchsorted(s, thresholds, side="left")
    return counts, pairs


@pytest.mark.slow
@pytest.mark.parametrize("flip", [True, False], ids=["flip", "plain"])
def test_calibration_predicts_the_false_match_rate_of_unseen_impostors(flip: bool) -> None:
    """#17 item 3: the shipped calibration, refitted here from the calibration split of the
    whole of LFW, is the one that ships; and on the impostor pairs of the other three
    quarters of the people (which it never saw), at thresholds across the empirical and the
    extrapolated range, the false match rate it predicts is within 2x of the measured one or,
    where too few pairs score that high to measure it that well, inside the 99% interval of
    the measured count.

    Not below 1e-7: the highest-scoring "impostor" pairs of LFW are its own labelling errors
    (one person under two names, e.g. Wang_Nan and Nan_Wang, Noer_Moeis and Noer_Muis; two
    people in one photo, the embedded face being the other's, e.g. Barbara_Boxer_0001 and
    Gray_Davis_0013), 5 to 7 pairs above score 0.98, i.e. a floor of about 1e-7 that no
    calibration of true impostors should follow."""
    from faceledger.evaluation.lfw import calibration_names, impostor_scores

    ds, table, model_id, _ = lfw_embeddings(flip=flip)
    shipped = calibration.load(model_id)
    assert shipped is not None
    calib_people = calibration_names(ds)
    refit = calibration.fit(impostor_scores(table, calib_people), model_id, {})
    np.testing.assert_allclose(refit.scores, shipped.scores, atol=1e-6)
    np.testing.assert_allclose(refit.fmrs, shipped.fmrs, rtol=1e-6)
    assert refit.tail_rate == pytest.approx(shipped.tail_rate, rel=1e-4)
    assert refit.tail_start == pytest.approx(shipped.tail_start, abs=1e-6)

    unseen = sorted(set(ds.people) - set(calib_people))
    targets = np.array([1e-2, 1e-3, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7])
    thresholds = np.array([shipped.threshold_for(f) for f in targets])
    counts, pairs = _impostor_counts(table, unseen, thresholds)
    assert pairs > 40_000_000
    rows = []
    for t, k in zip(thresholds, counts, strict=True):
        est = shipped.estimate(t)
        measured = k / pairs
        lo, hi = _poisson_interval(int(k))
        ok = (k > 0 and 0.5 <= est.fmr / measured <= 2.0) or lo / pairs <= est.fmr <= hi / pairs
        rows.append((float(t), est.fmr, est.extrapolated, int(k), float(measured), bool(ok)))
    print(f"\n{model_id}: {pairs} impostor pairs of people the calibration never saw")
    for t, fmr, ext, k, measured, ok in rows:
        print(
            f"  score {t:.4f}: predicted FMR {fmr:.1e}{' (extrapolated)' if ext else ''}, "
            f"measured {measured:.2e} ({k} pairs){'' if ok else '  <- outside'}"
        )
    assert any(r[2] for r in rows) and not all(r[2] for r in rows)  # both ranges covered
    assert all(r[5] for r in rows), rows
