"""``faceledger bench search --probes K``: the fused K-photo probe timed against one of its
photos on the same synthetic gallery (issue #14, target "fusion costs at most 2x the
single-probe search time per probe photo at 1M faces")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from faceledger.cli.bench import bench_app
from faceledger.evaluation.bench import default_face_model, generate, run_search_bench

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb

FUSED_KEYS = (
    "probes",
    "fused_p50_ms",
    "fused_p99_ms",
    "single_p50_ms",
    "fused_per_photo_ratio",
    "fused_ratio",
    "fused_recall_at_10",
    "rank1_identity_single",
    "rank1_identity_fused",
)


def _bench(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    args = ["bench", "search", "--faces", "20000", "--queries", "400", "--json"]
    args += ["--workdir", str(tmp_path), "--exact-seconds", "0.5", *extra]
    r = CliRunner().invoke(app, args)
    return r.exit_code, r.stdout, r.output


@pytest.mark.parametrize("k", [2, 3])
def test_bench_search_fused_probe_keys_recall_and_identity_gain(tmp_path: Path, k: int) -> None:
    """#14 target "fusion costs at most 2x per probe photo" (bench search --probes K): the
    fused figures are reported, the fused query's index results equal exact search of the
    fused vector (an exact index at 20,000 faces), and fusing K photos of the person finds
    them at rank 1 at least as often as one photo does."""
    code, stdout, output = _bench(tmp_path, "--probes", str(k))
    assert code == 0, output
    doc = json.loads(stdout)
    for key in FUSED_KEYS:
        assert doc[key] is not None, key
    assert doc["probes"] == k and doc["kind"] == "flat"
    assert doc["fused_recall_at_10"] == 1.0 and doc["fused_recall_at_1"] == 1.0
    assert doc["fused_p50_ms"] > 0 and doc["single_p50_ms"] > 0
    assert doc["fused_p99_ms"] >= doc["fused_p50_ms"]
    assert doc["fused_ratio"] == pytest.approx(doc["fused_p50_ms"] / doc["single_p50_ms"])
    assert doc["fused_per_photo_ratio"] == pytest.approx(doc["fused_ratio"] / k)
    # one photo finds its person at rank 1 about 98% of the time here; a fused vector that
    # were not the person's (a random one, or another query's) would almost never
    single, fused = doc["rank1_identity_single"], doc["rank1_identity_fused"]
    assert single >= 0.9
    assert fused >= single - 0.01, (single, fused)
    # the single-photo figures are still those of the first photo: the exact search of the
    # same probes finds the same mates as without --probes
    assert doc["recall_at_10"] == 1.0
    assert list(tmp_path.iterdir()) == []


def test_bench_search_probes_one_is_unchanged_and_zero_refused(tmp_path: Path) -> None:
    """#14 bench search --probes: 0 photos per query is refused with a message naming the
    option (exit 2, nothing run); --probes 1 is today's output, without the fused keys."""
    code, _, output = _bench(tmp_path, "--probes", "0")
    assert code == 2
    assert "--probes" in output and "at least 1 photo" in output
    with pytest.raises(ValueError, match="at least 1 photo"):
        run_search_bench(1000, queries=5, probes=0, workdir=tmp_path)
    code, stdout, output = _bench(tmp_path, "--probes", "1")
    assert code == 0, output
    doc = json.loads(stdout)
    assert not set(FUSED_KEYS) & set(doc)


def test_generate_more_probes_keep_gallery_and_first_photo() -> None:
    """#14 bench search --probes K: each query's K - 1 further photos are fresh faces of the
    same identity, and the gallery and the first photo are those of a one-photo run, so the
    single-photo figures of a --probes run are today's."""
    model = default_face_model(128)
    one = list(generate(model, 6000, 60, seed=4, chunk_faces=2048))
    three = list(generate(model, 6000, 60, seed=4, chunk_faces=2048, probes_per_query=3))
    assert len(one) == len(three) == 3
    for a, b in zip(one, three, strict=True):
        assert a.more_probes is None
        np.testing.assert_array_equal(a.vectors, b.vectors)
        np.testing.assert_array_equal(a.probes, b.probes)
        np.testing.assert_array_equal(a.probe_labels, b.probe_labels)
        assert b.more_probes is not None and b.more_probes.shape == (len(b.probes), 2, 128)
    probes = np.concatenate([c.probes for c in three])
    more = np.concatenate([c.more_probes for c in three if c.more_probes is not None])
    labels = np.concatenate([c.probe_labels for c in three])
    np.testing.assert_allclose(np.linalg.norm(more, axis=2), 1.0, rtol=1e-5)
    assert not np.allclose(more[:, 0], probes) and not np.allclose(more[:, 0], more[:, 1])
    # a further photo scores like a genuine pair with its query's first photo (LFW genuine
    # mean 0.95), and like an impostor pair with other identities' first photos (0.83)
    scores = np.einsum("qkd,pd->qpk", more, probes)  # query, other query's first photo, k
    same = labels[:, None] == labels[None, :]
    genuine, impostor = scores[same].mean(), scores[~same].mean()
    assert genuine > 0.93 and impostor < 0.86
    with pytest.raises(ValueError):
        next(generate(model, 100, 1, probes_per_query=0))
