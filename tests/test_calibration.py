from __future__ import annotations

import itertools

import numpy as np
import pytest

from faceledger import calibration

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
    from faceledger.embedding import create_embedder

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
