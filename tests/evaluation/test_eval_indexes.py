"""The LFW 1:N protocol through the product's search indexes, compared with exact search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import lfw_embeddings
from faceledger.evaluation import lfw as evaluation
from faceledger.evaluation.bench import default_face_model
from faceledger.evaluation.lfw import EmbeddingTable, LfwDataset

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb

HAVE_MILVUS = True
try:
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401
except ImportError:
    HAVE_MILVUS = False

FAISS_SPECS = ["flat", "ivf_pqfs", "ivf_sq8", "hnsw_sq8"]
ALL_SPECS = ["exact", *FAISS_SPECS] + (["milvus"] if HAVE_MILVUS else [])
METRICS = ("rank1", "rank10", "fnir_at_fpir_0_003", "measured_fpir")


def synthetic_lfw(
    root: Path, people: int = 1300, seed: int = 3
) -> tuple[LfwDataset, EmbeddingTable]:
    """LFW-shaped people (most with one image, a long tail with many) and LFW-calibrated
    synthetic 128-d embeddings (faceledger.evaluation.bench's face model)."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.geometric(0.55, size=people), 30)
    model = default_face_model(128)
    centres = model.centres(rng, people)
    ds_people: dict[str, list[str]] = {}
    paths: list[str] = []
    vecs: list[np.ndarray] = []
    for i, n in enumerate(counts):
        name = f"Person_{i:04d}"
        imgs = [f"{name}/{name}_{j:04d}.jpg" for j in range(1, n + 1)]
        ds_people[name] = imgs
        paths += imgs
        vecs.append(model.faces(rng, np.repeat(centres[i : i + 1], n, axis=0)))
    table = EmbeddingTable(paths, np.concatenate(vecs), np.ones(len(paths), bool))
    return LfwDataset(root, ds_people), table


@pytest.fixture(scope="module")
def split_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[LfwDataset, EmbeddingTable]:
    return synthetic_lfw(tmp_path_factory.mktemp("lfw"))


def _assert_same_as_exact(res: dict, specs: list[str]) -> None:
    rows = res["indexes"]
    assert list(rows) == specs
    exact = rows["exact"]
    assert exact.get("reference")
    for spec in specs[1:]:
        r = rows[spec]
        # the same rank-1 candidate for every probe, and top-10 lists that differ at most by
        # the order of candidates with equal scores
        assert r["rank1_ids_differ"] == 0, spec
        assert r["top10_lists_differ_beyond_ties"] == 0, spec
        assert r["missing_candidates"] == 0, spec
        assert r["max_score_error"] < 1e-5, spec  # exact scores, not quantised ones
        for m in METRICS:
            assert r[m] == exact[m], (spec, m)
        assert r["fpir_threshold"] == pytest.approx(exact["fpir_threshold"], abs=1e-5)
    assert res["indexes_equivalent"]


def test_indexes_give_the_exact_1n_results(split_table) -> None:
    ds, table = split_table
    res = evaluation.identification_by_index(ds, table, ALL_SPECS)
    _assert_same_as_exact(res, ALL_SPECS)
    exact = res["indexes"]["exact"]
    # the reference row is today's identification result
    plain = evaluation.identification(ds, table, None)
    for m in (*METRICS, "fpir_threshold"):
        assert exact[m] == plain[m]
    assert 0.5 < exact["rank1"] < 1.0  # a realistic split: neither trivial nor hopeless
    # the approximate kinds were built although the gallery is far below EXACT_MAX_FACES
    ivf = res["indexes"]["ivf_pqfs"]["params"]
    assert ivf["nlist"] > 1 and ivf["trained_on"] == plain["gallery_size"]
    if HAVE_MILVUS:
        milvus = res["indexes"]["milvus"]["params"]
        assert milvus["flushed"] and milvus["indexed_rows"] == plain["gallery_size"]


def test_the_check_sees_a_lossy_index(split_table) -> None:
    """Starved approximate search (one list probed, no extra candidates) must show up."""
    ds, table = split_table
    starved = "ivf_pqfs:nprobe=1:candidates_min=10:candidate_factor=1"
    res = evaluation.identification_by_index(ds, table, [starved])
    row = res["indexes"][starved]
    assert row["params"]["nprobe"] == 1 and row["params"]["candidates"] == 10
    assert row["rank1_differ_beyond_ties"] > 0
    assert row["top10_lists_differ_beyond_ties"] > 0
    assert row["rank1"] < res["indexes"]["exact"]["rank1"]
    assert not res["indexes_equivalent"] and not res["indexes_identical"]


def test_compare_rankings_tells_ties_from_misses() -> None:
    g = np.eye(4, dtype=np.float32)
    g[1] = g[0]  # rows 0 and 1: the same vector, a tie for any probe
    q = np.array([[1.0, 0.0, 0.5, 0.0]], np.float32)
    ref = np.array([[0, 1, 2]])
    swapped = evaluation.compare_rankings(g, q, ref, np.array([[1, 0, 2]]), np.array([[1, 1, 0.5]]))
    assert swapped["top10_lists_differ"] == 1 and swapped["rank1_ids_differ"] == 1
    assert swapped["top10_lists_differ_beyond_ties"] == 0
    assert swapped["rank1_differ_beyond_ties"] == 0
    missed = evaluation.compare_rankings(g, q, ref, np.array([[0, 1, 3]]), np.array([[1, 1, 0]]))
    assert missed["top10_lists_differ_beyond_ties"] == 1
    assert missed["rank1_differ_beyond_ties"] == 0
    assert missed["max_rank_score_gap"] == pytest.approx(0.5)
    short = evaluation.compare_rankings(g, q, ref, np.array([[0, 1, -1]]), np.array([[1, 1, -1]]))
    assert short["missing_candidates"] == 1 and short["top10_lists_differ_beyond_ties"] == 1
    wrong = evaluation.compare_rankings(g, q, ref, ref, np.array([[1, 1, 0.4]]))
    assert wrong["max_score_error"] == pytest.approx(0.1, abs=1e-6)


def test_index_specs() -> None:
    assert evaluation.parse_index_list("flat, ivf_pqfs") == ["exact", "flat", "ivf_pqfs"]
    assert evaluation.parse_index_list("all") == list(evaluation.INDEX_CHOICES)
    assert evaluation.parse_index_spec("ivf_sq8:nlist=16:nprobe=4") == (
        "ivf_sq8",
        {"nlist": 16, "nprobe": 4},
    )
    assert evaluation.parse_index_spec("milvus:flush=0") == ("milvus", {"flush": 0})
    for bad in (
        "annoy",
        "flat:nprobe=2",
        "ivf_pqfs:bogus=1",
        "ivf_pqfs:nprobe=x",
        "milvus:nlist=4",
    ):
        with pytest.raises(ValueError):
            evaluation.parse_index_spec(bad)
    with pytest.raises(ValueError):
        evaluation.parse_index_list(" , ")


def _fake_lfw_with_cache(tmp_path: Path) -> tuple[Path, Path]:
    """An LFW folder (empty image files, a two-fold pairs.txt) and the embedding cache the CLI
    reads for the default pipeline, so that nothing is embedded."""
    from faceledger.evaluation.lfw import lfw_setup

    lfw = tmp_path / "lfw"
    ds, table = synthetic_lfw(lfw, people=400, seed=5)
    for img in table.paths:
        (lfw / img).parent.mkdir(parents=True, exist_ok=True)
        (lfw / img).touch()
    multi = [n for n, imgs in ds.people.items() if len(imgs) > 1][:4]
    single = [n for n, imgs in ds.people.items() if len(imgs) == 1][:8]
    lines = ["2\t2"]
    for f in range(2):  # two folds of 2 same-person and 2 cross-person pairs
        lines += [f"{n}\t1\t2" for n in multi[2 * f : 2 * f + 2]]
        pairs = single[4 * f : 4 * f + 4]
        lines += [f"{a}\t1\t{b}\t1" for a, b in zip(pairs[::2], pairs[1::2], strict=True)]
    (lfw / "pairs.txt").write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    _, _, cache = lfw_setup("hog+cnn", "default", data, None, "cpu")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, paths=np.array(table.paths), vectors=table.vectors, detected=table.detected)
    return lfw, data


def test_cli_eval_lfw_indexes(tmp_path: Path) -> None:
    from faceledger.cli import app

    lfw, data = _fake_lfw_with_cache(tmp_path)
    runner = CliRunner()
    base = ["eval", "lfw", "--lfw-dir", str(lfw), "--data-dir", str(data), "--workers", "1"]
    specs = ["flat", "ivf_pqfs"] + (["milvus"] if HAVE_MILVUS else [])
    r = runner.invoke(app, [*base, "--json", "--indexes", ",".join(specs)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    _assert_same_as_exact(res, ["exact", *specs])
    assert res["indexes"]["exact"]["rank1"] == res["rank1"]
    # without --indexes: today's output, no per-index table
    r = runner.invoke(app, [*base, "--json"])
    assert r.exit_code == 0, r.output
    assert "indexes" not in json.loads(r.stdout)
    r = runner.invoke(app, [*base, "--indexes", "flat"])
    assert r.exit_code == 0, r.output
    assert "1:N per index" in r.stdout and "flat" in r.stdout
    r = runner.invoke(app, [*base, "--indexes", "flat,annoy"])
    assert r.exit_code != 0 and "annoy" in r.output


@pytest.mark.slow
def test_full_lfw_indexes_identical(lfw: Path) -> None:
    """Real embeddings: all of LFW's 1:N searches through every index (the default
    pipeline's embeddings of LFW, built if missing: conftest.lfw_embeddings)."""
    from faceledger.evaluation.lfw import lfw_setup
    from faceledger.gallery.ingest import default_workers

    _, _, model_id, cache = lfw_embeddings(flip=True)
    factory, _, _ = lfw_setup("hog+cnn", "default", cache.parents[1], None, "cpu")
    res = evaluation.run_lfw(lfw, factory, model_id, cache, default_workers(), indexes=ALL_SPECS)
    _assert_same_as_exact(res, ALL_SPECS)
    assert res["indexes"]["exact"]["rank1"] == res["rank1"]
    assert res["gallery_size"] == 3678
