"""Score fusion (faceledger.search.fusion) and its LFW evaluation (faceledger.evaluation.fusion,
``faceledger eval lfw``'s fused keys and ``--plots``): issue #14 items 1 and 5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_indexes import _fake_lfw_with_cache, synthetic_lfw
from typer.testing import CliRunner

from conftest import lfw_embeddings, lfw_image
from faceledger.evaluation import fusion as fused_eval
from faceledger.evaluation import lfw as evaluation
from faceledger.evaluation.plots import PLOT_FILES, det_curve, write_plots
from faceledger.search import calibration, fusion
from faceledger.search.fusion import RULES, Groups

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _unit(rows: list[list[float]]) -> np.ndarray:
    v = np.array(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_rules_on_hand_made_vectors() -> None:
    """#14 item 1: the three rules' arithmetic on vectors worked out by hand."""
    gallery = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    subjects = Groups.of([[0, 1], [2]])  # subject 0: e1 and e2; subject 1: e3
    probe = np.array(
        [[1, 0, 0], [0.6, 0.8, 0]], np.float32
    )  # pairwise with subject 0: 1, 0, .6, .8
    one_probe = Groups.of([[0, 1]])
    got = {r: fusion.fused_scores(probe, one_probe, gallery, subjects, r)[0] for r in RULES}
    assert got["max"] == pytest.approx([1.0, 0.0])
    assert got["mean_topk"] == pytest.approx([(1.0 + 0.8) / 2, 0.0])  # k = 2
    # templates: (1.6, .8, 0)/|.| and (1, 1, 0)/sqrt(2)
    assert got["template"] == pytest.approx([2.4 / np.sqrt(3.2) / np.sqrt(2), 0.0], abs=1e-6)
    three = fusion.fused_scores(probe, one_probe, gallery, subjects, "mean_topk", k=3)[0]
    assert three[0] == pytest.approx((1.0 + 0.8 + 0.6) / 3)
    # vectors are normalised first: a scaled probe scores the same
    scaled = fusion.fused_scores(3 * probe, one_probe, gallery, subjects, "template")[0]
    assert scaled == pytest.approx(got["template"], abs=1e-6)
    # a subject of one vector and a probe of two: k = 2 is the mean of the two pairs
    pair = fusion.fused_scores(probe, one_probe, gallery, Groups.of([[0]]), "mean_topk")[0]
    assert pair[0] == pytest.approx(0.8)


def test_one_vector_is_the_plain_score() -> None:
    """#14 item 1: a single probe vector against single gallery vectors: every rule is the
    plain cosine, and subject_scores ranks as a plain search does."""
    rng = np.random.default_rng(1)
    gallery = _unit(rng.normal(size=(50, 128)).tolist())
    probes = _unit(rng.normal(size=(7, 128)).tolist())
    plain = probes @ gallery.T
    for rule in RULES:
        got = fusion.fused_scores(
            probes, Groups.singletons(7), gallery, Groups.singletons(50), rule
        )
        np.testing.assert_allclose(got, plain, atol=1e-6)
        labels, scores = fusion.subject_scores(probes[0], gallery, np.arange(50) * 10, rule)
        assert list(labels) == list(np.argsort(-plain[0]) * 10)
        np.testing.assert_allclose(scores, np.sort(plain[0])[::-1], atol=1e-6)


def test_rule_ordering_and_subject_ranking() -> None:
    """#14 item 1: max >= mean of the top k >= mean of all pairs, k = 1 is max; subjects come
    back best first under their labels, however the gallery rows are ordered."""
    rng = np.random.default_rng(2)
    gallery = _unit(rng.normal(size=(30, 16)).tolist())
    labels = rng.integers(0, 8, size=30)
    probe = _unit(rng.normal(size=(3, 16)).tolist())
    subjects, uniq = Groups.from_labels(labels)
    assert sorted(int(i) for row in subjects.index for i in row if i >= 0) == list(range(30))
    for g, label in enumerate(uniq):
        assert set(subjects.index[g][subjects.index[g] >= 0]) == set(
            np.flatnonzero(labels == label)
        )
    whole = Groups.of([[0, 1, 2]])
    mx = fusion.fused_scores(probe, whole, gallery, subjects, "max")[0]
    top2 = fusion.fused_scores(probe, whole, gallery, subjects, "mean_topk")[0]
    top1 = fusion.fused_scores(probe, whole, gallery, subjects, "mean_topk", k=1)[0]
    everything = fusion.fused_scores(probe, whole, gallery, subjects, "mean_topk", k=99)[0]
    pair = probe @ gallery.T
    for g, label in enumerate(uniq):
        cols = pair[:, labels == label]
        assert mx[g] == pytest.approx(cols.max())
        assert everything[g] == pytest.approx(cols.mean(), abs=1e-6)
    assert (mx >= top2 - 1e-6).all() and (top2 >= everything - 1e-6).all()
    np.testing.assert_allclose(top1, mx)
    got_labels, got_scores = fusion.subject_scores(probe, gallery, labels, "mean_topk")
    assert (np.diff(got_scores) <= 0).all()
    assert dict(zip(got_labels.tolist(), got_scores.tolist(), strict=True)) == pytest.approx(
        dict(zip(uniq.tolist(), top2.tolist(), strict=True))
    )
    with pytest.raises(ValueError, match="unknown fusion rule"):
        fusion.fused_scores(probe, whole, gallery, subjects, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimensions"):
        fusion.fused_scores(probe[:, :8], whole, gallery, subjects, "max")
    with pytest.raises(ValueError, match="at least one"):
        Groups(np.array([[-1, -1]]))


def test_fusion_finds_real_lfw_people(lfw: Path, analyzer) -> None:
    """#14 item 1, on real photos: five LFW people, each a subject of three photos; their
    fourth photo alone, and their fourth and fifth fused, find them first under every rule,
    and fusing two probe photos scores the mate no lower than the worse of them alone."""
    from faceledger.evaluation.lfw import embed_subject
    from faceledger.vision.decode import decode_image

    people = ["Colin_Powell", "Gerhard_Schroeder", "Serena_Williams", "Tony_Blair", "Hugo_Chavez"]
    vec = {
        (name, n): embed_subject(
            analyzer, decode_image(lfw_image(lfw, name, n).read_bytes()).pixels
        )[0]
        for name in people
        for n in range(1, 6)
    }
    gallery = np.stack([vec[name, n] for name in people for n in (1, 2, 3)])
    labels = np.repeat(np.arange(len(people)), 3)
    for i, name in enumerate(people):
        for rule in RULES:
            single_labels, single_scores = fusion.subject_scores(
                vec[name, 4], gallery, labels, rule
            )
            assert single_labels[0] == i, (name, rule)
            probe = np.stack([vec[name, 4], vec[name, 5]])
            multi_labels, multi_scores = fusion.subject_scores(probe, gallery, labels, rule)
            assert multi_labels[0] == i, (name, rule)
            alone5 = fusion.subject_scores(vec[name, 5], gallery, labels, rule)
            worse = min(single_scores[0], alone5[1][list(alone5[0]).index(i)])
            assert multi_scores[0] >= worse - 1e-6


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    ds, table = synthetic_lfw(tmp_path_factory.mktemp("lfw"), people=1300, seed=7)
    names = evaluation.calibration_names(ds)
    calib = calibration.fit(evaluation.impostor_scores(table, names), "synthetic", {})
    return ds, table, calib, fused_eval.fusion_evaluation(ds, table, "synthetic", calib)


def test_fused_protocols_on_an_lfw_shaped_gallery(synthetic) -> None:
    """#14 item 5: every protocol with every rule, its single-photo baseline on the same
    probes and a calibration per rule, on LFW-shaped people with LFW-calibrated synthetic
    embeddings; the protocols keep LFW's split and fusion beats single photos there."""
    ds, table, calib, res = synthetic
    m = res.metrics
    json.dumps(m)  # the eval's JSON
    assert m["fusion_rule"] == fusion.DEFAULT_RULE and m["fusion_topk"] == fusion.TOPK
    protocols = m["fusion"]["protocols"]
    assert list(protocols) == ["subject", "multi_probe_2", "multi_probe_3"]
    # the single-photo protocol is today's identification, unchanged
    plain = evaluation.identification(ds, table, calib)
    single = res.runs["single"]["single"].metrics
    for key in ("rank1", "rank10", "fpir_threshold", "fnir_at_fpir_0_003", "measured_fpir"):
        assert single[key] == plain[key]
    split = evaluation.one_to_n_split(ds, table)
    subject = fused_eval.subject_protocol(ds, table)
    assert (
        len(subject.gallery)
        == len(split.gallery)
        == protocols["subject"]["rules"]["max"]["gallery_subjects"]
    )
    assert set(subject.mated.index[:, 0]) < set(split.mated)  # a subset of today's probes
    assert set(subject.mated.index[:, 0]).isdisjoint(subject.gallery.index.ravel())
    assert set(subject.nonmated.index[:, 0]) == set(split.nonmated)
    multi = fused_eval.multi_probe_protocol(ds, table, 2)
    assert (multi.mated.sizes == 2).all() and (multi.nonmated.sizes == 2).all()
    calib_rows = {
        i for i, p in enumerate(table.paths) if evaluation.in_calibration_split(p.split("/")[0])
    }
    for proto in (subject, multi):
        used = {
            int(i) for g in (proto.gallery, proto.mated, proto.nonmated) for i in g.index.ravel()
        }
        assert used.isdisjoint(calib_rows)
    for name, proto in protocols.items():
        base = proto["single_same_probes"]
        for rule in RULES:
            r = proto["rules"][rule]
            assert r["calibrated_fmr_at_threshold"] > 0, (name, rule)
            assert m["fusion"]["by_rule"][rule][f"rank1_{name}"] == r["rank1"]
        # the default rule is never worse than single photos on the same probes, and better
        # where there are enough of them (multi_probe_3 has a few dozen here)
        default = proto["rules"][fusion.DEFAULT_RULE]
        assert default["rank1"] >= base["rank1"], name
        if name != "multi_probe_3":
            assert default["rank1"] > base["rank1"], name
            assert default["fnir_at_fpir_0_01"] < base["fnir_at_fpir_0_01"], name
        assert m[f"rank1_{name}"] == proto["rules"][fusion.DEFAULT_RULE]["rank1"]
    assert m["calibration_fused_ratio_subject"] > 0


def test_plots_are_pngs_of_the_run(synthetic, tmp_path: Path) -> None:
    """#14 item 5: --plots' four PNGs, drawn from the evaluation's own numbers."""
    res = synthetic[3]
    rng = np.random.default_rng(0)
    same = rng.random(600) < 0.5
    scores = np.where(same, rng.normal(0.95, 0.02, 600), rng.normal(0.8, 0.05, 600))
    paths = write_plots(
        tmp_path / "plots", scores, same, 0.99, res.det_runs(), res.calibration_runs()
    )
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as img:
            assert img.width > 300 and img.height > 300
            # not a blank canvas: a chart has many colours
            assert len(img.convert("RGB").getcolors(1 << 20) or []) > 20
    fpir, fnir = det_curve(res.runs["single"]["single"])
    assert fpir[0] <= fpir[-1] and fnir[0] >= fnir[-1]


def test_cli_eval_lfw_fused_keys_and_plots(tmp_path: Path) -> None:
    """#14 item 5: `faceledger eval lfw --json --plots DIR` adds the fused keys (the default
    rule's, and each rule's under fusion.by_rule) and writes the PNGs."""
    from faceledger.cli import app

    lfw, data = _fake_lfw_with_cache(tmp_path)
    plots = tmp_path / "plots"
    base = ["eval", "lfw", "--lfw-dir", str(lfw), "--data-dir", str(data), "--workers", "1"]
    r = CliRunner().invoke(app, [*base, "--json", "--plots", str(plots)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    for key in (
        "rank1_subject",
        "fnir_at_fpir_0_003_subject",
        "rank1_multi_probe_2",
        "fnir_at_fpir_0_003_multi_probe_2",
        "calibration_fused_ratio",
    ):
        assert key in res, key
        for rule in RULES:
            assert key in res["fusion"]["by_rule"][rule], (key, rule)
    assert res["fusion_rule"] == fusion.DEFAULT_RULE
    assert sorted(Path(p).name for p in res["plots"]) == sorted(PLOT_FILES)
    assert all((plots / name).read_bytes()[:8] == PNG_MAGIC for name in PLOT_FILES)
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    assert "1:N with fusion" in r.stdout and "multi_probe_2" in r.stdout


@pytest.mark.slow
def test_full_lfw_fusion(lfw: Path, tmp_path: Path) -> None:
    """#14 item 5 on all of LFW (the default pipeline's cached embeddings): the fused keys,
    the single-photo numbers unchanged, fused subjects and 2-photo probes at least 0.02 above
    single photos at rank 1 (the issue's target), the subject calibration within 2x, and the
    shipped probe fits within 2x for multi-photo probes with LFW's labelling errors aside."""
    from faceledger.evaluation.lfw import lfw_setup
    from faceledger.gallery.ingest import default_workers

    _, _, model_id, cache = lfw_embeddings(flip=True)
    factory, _, _ = lfw_setup("hog+cnn", "default", cache.parents[1], None, "cpu")
    res = evaluation.run_lfw(
        lfw, factory, model_id, cache, default_workers(), plots=tmp_path / "plots"
    )
    assert res["gallery_size"] == 3678
    protocols = res["fusion"]["protocols"]
    for name in ("subject", "multi_probe_2", "multi_probe_3"):
        base = protocols[name]["single_same_probes"]
        assert res[f"rank1_{name}"] >= base["rank1"] + 0.02, name
        assert res[f"fnir_at_fpir_0_01_{name}"] < base["fnir_at_fpir_0_01"], name
    assert (
        res["fnir_at_fpir_0_003_subject"]
        < protocols["subject"]["single_same_probes"]["fnir_at_fpir_0_003"]
    )
    assert 0.5 <= res["calibration_fused_ratio_subject"] <= 2.0
    # the product's probe fits (as shipped) predict the multi-photo FPIR within 2x once LFW's
    # labelling errors (not impostors: they set the strict thresholds) are set aside
    for name in ("multi_probe_2", "multi_probe_3"):
        template = protocols[name]["rules"]["template"]
        for key in ("", "_0_01"):
            ratio = template[f"calibration_ratio{key}_size_fits_label_errors_aside"]
            assert 0.5 <= ratio <= 2.0, (name, key, ratio)
    assert all((tmp_path / "plots" / n).is_file() for n in PLOT_FILES)
