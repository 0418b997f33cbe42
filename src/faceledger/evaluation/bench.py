"""Search benchmark on synthetic faces that score like real ones.

Generator (:class:`FaceModel`). Real face embeddings are not spread evenly over the sphere:
they crowd into a cone around a common mean direction, identities differ along a few strong
directions and many weak ones, people fall into broad look-alike groups (the demographic
structure every face model picks up), and photos of one person scatter around that person's
centre by an amount that varies from photo to photo (pose, light, blur). The model draws

    centre_j = m u + B (sqrt(lambda_c) * (sqrt(gamma) h_k(j) + sqrt(1 - gamma) z_j))
    face_ji  = normalise(centre_j + s_ji B (sqrt(lambda_w) * e_ji))
    s_ji     = sigma_w exp(tau g_ji - tau^2 / 2)

with z, e, h ~ N(0, I), g ~ N(0, 1); ``u`` a fixed random unit vector, ``B`` a fixed random
rotation, ``h_1..h_G`` fixed group offsets and ``k(j)`` a uniformly drawn group; power-law
spectra ``lambda_c[i] ~ i^-alpha``, ``lambda_w[i] ~ i^-beta`` (each summing to 1).

Calibration (:func:`calibrate_from`, ``--calibrate-from FILE``): ``beta`` is the log-log
slope of the within-identity covariance spectrum of the real embeddings; ``m``, ``alpha``,
``sigma_w``, ``tau`` and ``gamma`` are solved (damped Gauss-Newton on a fixed-seed
simulation) so that the genuine (same person) and impostor (different people) cosine scores
have the real means and standard deviations and the impostor scores the real skewness; the
group count ``G`` is then the one (of 4, 8, 16, 32) whose fitted model best matches the real
impostor 99.9th percentile — the upper tail, where an impostor outranks a mate and where an
approximate index has to find the right neighbours. The defaults below were fitted that way
once. Without groups and skewness (a plain Gaussian cone) the same means and deviations give
an impostor tail far lighter than real faces have.

Identities have ``1 + Geometric`` faces (mean :data:`FACES_PER_IDENTITY`); probes are fresh
faces of gallery identities, as in a real search.

Benchmark (:func:`run_search_bench`): the gallery goes through the same
:class:`~faceledger.gallery.index.FaceIndex` code the manager uses (float32 rows in a memory-mapped
file, chosen kind built over them); exact top-k of every probe is computed by brute force
in the same run, and recall@1/@10, single-query p50/p99 latency of the index and of exact
search, build time, bytes per face and process memory are reported.

Fused probes (``probes`` K > 1, issue #14): each query is then K fresh faces of one gallery
identity, fused into one vector by the product's ``template`` rule and searched once; its
latency is reported next to the single-photo search's on the same index and queries, with
its recall against exact search of the fused vector and the rank-1 identity hit rate of
both (:func:`_fused_probe_bench`).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypedDict

import faiss
import numpy as np

from faceledger.evaluation.milvus_bench import drop, milvus_index, milvus_target
from faceledger.gallery.index import (
    DEFAULT_ANN_KIND,
    EXACT_MAX_FACES,
    IVF_KINDS,
    AnnParams,
    FaceIndex,
    RowStore,
    auto_nprobe,
    choose_kind,
)
from faceledger.search.fusion import Groups, templates

# --- calibration constants ---------------------------------------------------------------
# Real faces: dlib_resnet_v1 embeddings (HOG detector, CNN fallback) of the 13,233 LFW images
# (13,232 with a detected face, 5,748 people), file lfw_dlib_resnet_v1_dlib_hog-cnn.npz,
# measured by ``lfw_score_stats``: genuine = 20,000 random pairs of two photos of one person
# (person uniform among those with two or more photos), impostor = 100,000 random pairs of
# photos of two different people, seed 0.
LFW_GENUINE_MEAN = 0.953788
LFW_GENUINE_STD = 0.0166839
LFW_IMPOSTOR_MEAN = 0.834323
LFW_IMPOSTOR_STD = 0.0349775
LFW_IMPOSTOR_SKEW = -0.223104
LFW_IMPOSTOR_Q999 = 0.926429
# log-log slope of the top 64 within-identity covariance eigenvalues of the same embeddings
LFW_WITHIN_DECAY = 0.406446


class _FitParams(TypedDict):
    """The fitted :class:`FaceModel` parameters (``_FIT_FIELDS``), as keyword arguments."""

    mean_weight: float
    centre_decay: float
    noise: float
    noise_spread: float
    group_share: float


# Models solved from the statistics above by ``calibrate_from`` (``fit_face_model``, seed 1
# simulation of 4,000 identities; G picked by the 99.9th impostor percentile):
DEFAULT_GROUPS = 8  # tried 4, 8, 16, 32: q99.9 0.9203, 0.9266, 0.9357, 0.9462
DEFAULT_MODELS: dict[int, _FitParams] = {
    128: {
        "mean_weight": 2.54102,
        "centre_decay": 0.615783,
        "noise": 0.587545,
        "noise_spread": 0.229001,
        "group_share": 0.437373,
    },
    # 512-d (ArcFace-sized) vectors with the same LFW score statistics, fitted from the
    # 128-d model with the same G and beta
    512: {
        "mean_weight": 2.52208,
        "centre_decay": 0.92727,
        "noise": 0.583131,
        "noise_spread": 0.246743,
        "group_share": 0.476793,
    },
}

# Assumed, not calibrated (LFW's own counts follow how news photos were collected, not how a
# gallery is): mean faces per identity in the synthetic gallery.
FACES_PER_IDENTITY = 4.0

FIT_IDENTITIES = 4000  # identities simulated per evaluation while fitting
IMPOSTOR_PAIRS = 100_000  # skewness and tail need more pairs than mean and deviation
SKEW_WEIGHT = 0.02  # skewness is O(1) where the other statistics are O(0.01)
GROUP_CHOICES = (4, 8, 16, 32)


@dataclass(frozen=True)
class ScoreStats:
    genuine_mean: float
    genuine_std: float
    impostor_mean: float
    impostor_std: float
    impostor_skew: float
    impostor_q999: float = float("nan")  # reported, and used to pick G; not fitted

    def vector(self) -> np.ndarray:
        """The fitted statistics, scaled for the solver."""
        return np.array(
            [
                self.genuine_mean,
                self.genuine_std,
                self.impostor_mean,
                self.impostor_std,
                self.impostor_skew * SKEW_WEIGHT,
            ]
        )


LFW_STATS = ScoreStats(
    LFW_GENUINE_MEAN,
    LFW_GENUINE_STD,
    LFW_IMPOSTOR_MEAN,
    LFW_IMPOSTOR_STD,
    LFW_IMPOSTOR_SKEW,
    LFW_IMPOSTOR_Q999,
)


@dataclass(frozen=True)
class FaceModel:
    """Parameters of the synthetic face generator (see the module docstring)."""

    dim: int = 128
    mean_weight: float = 2.5  # m
    centre_decay: float = 0.7  # alpha
    noise: float = 0.6  # sigma_w
    noise_spread: float = 0.2  # tau
    group_share: float = 0.5  # gamma
    groups: int = 16  # G
    noise_decay: float = 0.4  # beta
    faces_per_identity: float = FACES_PER_IDENTITY
    seed: int = 0  # fixes u, B and the group offsets

    def _spectrum(self, decay: float) -> np.ndarray:
        lam = np.arange(1, self.dim + 1, dtype=np.float64) ** -decay
        return np.sqrt(lam / lam.sum()).astype(np.float32)

    @functools.cached_property
    def _fixed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.dim, 7919])
        q, r = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        basis = (q * np.sign(np.diag(r))).astype(np.float32)
        u = rng.standard_normal(self.dim)
        u = (u / np.linalg.norm(u)).astype(np.float32)
        groups = rng.standard_normal((max(self.groups, 1), self.dim)).astype(np.float32)
        sc, sw = self._spectrum(self.centre_decay), self._spectrum(self.noise_decay)
        return basis, u, groups, sc, sw

    def centres(self, rng: np.random.Generator, n: int) -> np.ndarray:
        basis, u, groups, sc, _ = self._fixed
        z = rng.standard_normal((n, self.dim), dtype=np.float32)
        h = groups[rng.integers(0, len(groups), size=n)]
        gamma = float(np.clip(self.group_share, 0.0, 1.0))
        o = (np.sqrt(gamma) * h + np.sqrt(1.0 - gamma) * z) * sc
        return o @ basis.T + self.mean_weight * u

    def faces(self, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
        """One face per row of ``centres`` (repeat rows for several faces of one person)."""
        basis, _, _, _, sw = self._fixed
        n = len(centres)
        e = rng.standard_normal((n, self.dim), dtype=np.float32) * sw
        g = rng.standard_normal(n).astype(np.float32)
        s = self.noise * np.exp(self.noise_spread * g - self.noise_spread**2 / 2)
        v = centres + (e @ basis.T) * s[:, None]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.astype(np.float32, copy=False)


# --- score statistics ----------------------------------------------------------------------
def pair_stats(
    vectors: np.ndarray,
    labels: np.ndarray,
    pairs: int,
    seed: int,
    impostor_pairs: int = IMPOSTOR_PAIRS,
) -> ScoreStats:
    """Genuine/impostor cosine statistics over random pairs (person uniform for genuine)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    _, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    multi = np.flatnonzero(count >= 2)
    who = rng.choice(multi, size=pairs)
    a = rng.integers(0, count[who])
    b = (a + rng.integers(1, count[who])) % count[who]
    ga, gb = order[start[who] + a], order[start[who] + b]
    genuine = np.einsum("ij,ij->i", vectors[ga], vectors[gb])
    ia = rng.integers(0, len(labels), size=impostor_pairs * 2)
    ib = rng.integers(0, len(labels), size=impostor_pairs * 2)
    keep = np.flatnonzero(labels[ia] != labels[ib])[:impostor_pairs]
    impostor = np.einsum("ij,ij->i", vectors[ia[keep]], vectors[ib[keep]])
    z = (impostor - impostor.mean()) / impostor.std()
    return ScoreStats(
        float(genuine.mean()),
        float(genuine.std()),
        float(impostor.mean()),
        float(impostor.std()),
        float((z**3).mean()),
        float(np.quantile(impostor, 0.999)),
    )


def load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, identity labels) from a cache file with ``paths`` ("Name/Name_0001.jpg")
    and ``vectors``; rows flagged not ``detected`` are left out when that key is present."""
    with np.load(path, allow_pickle=False) as data:
        vectors = np.asarray(data["vectors"], dtype=np.float32)
        paths = np.asarray(data["paths"]).astype(str)
        keep = np.asarray(data["detected"], bool) if "detected" in data.files else None
    if keep is not None and keep.shape == (len(vectors),):
        vectors, paths = vectors[keep], paths[keep]
    ok = np.isfinite(vectors).all(axis=1) & (np.linalg.norm(vectors, axis=1) > 0)
    vectors, paths = vectors[ok], paths[ok]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = np.array([p.replace("\\", "/").split("/")[0] for p in paths])
    _, labels = np.unique(names, return_inverse=True)
    return vectors, labels


def lfw_score_stats(vectors: np.ndarray, labels: np.ndarray) -> ScoreStats:
    return pair_stats(vectors, labels, pairs=20_000, seed=0)


def within_decay(vectors: np.ndarray, labels: np.ndarray, fit_dims: int = 64) -> float:
    """Log-log slope of the within-identity covariance spectrum (top ``fit_dims`` values)."""
    order = np.argsort(labels, kind="stable")
    _, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    resid = []
    for s, c in zip(start, count, strict=True):
        if c >= 2:
            v = vectors[order[s : s + c]]
            resid.append(v - v.mean(axis=0))
    r = np.concatenate(resid)
    eig = np.sort(np.linalg.eigvalsh(r.T @ r / len(r)))[::-1][:fit_dims]
    i = np.arange(1, len(eig) + 1)
    slope = np.polyfit(np.log(i), np.log(np.maximum(eig, 1e-12)), 1)[0]
    return float(-slope)


def simulate_stats(model: FaceModel, identities: int = FIT_IDENTITIES, seed: int = 1) -> ScoreStats:
    """Score statistics of the model: two faces per identity, fixed seed."""
    rng = np.random.default_rng(seed)
    c = model.centres(rng, identities)
    f = model.faces(rng, np.repeat(c, 2, axis=0))
    labels = np.repeat(np.arange(identities), 2)
    return pair_stats(f, labels, pairs=identities, seed=seed + 1)


# fitted parameters and their unconstrained coordinates (log, or logit for the share)
_FIT_FIELDS = ("mean_weight", "centre_decay", "noise", "noise_spread", "group_share")


def _to_x(model: FaceModel) -> np.ndarray:
    x = [np.log(max(getattr(model, f), 1e-3)) for f in _FIT_FIELDS[:-1]]
    g = float(np.clip(model.group_share, 1e-3, 1 - 1e-3))
    return np.array([*x, np.log(g / (1 - g))])


def _from_x(base: FaceModel, x: np.ndarray) -> FaceModel:
    vals = [float(np.exp(v)) for v in x[:-1]] + [float(1 / (1 + np.exp(-x[-1])))]
    fitted: dict[str, Any] = dict(zip(_FIT_FIELDS, vals, strict=True))
    return replace(base, **fitted)


def fit_face_model(
    target: ScoreStats,
    start: FaceModel,
    iterations: int = 40,
    tol: float = 3e-4,
) -> FaceModel:
    """Solve m, alpha, sigma_w, tau, gamma so the simulated statistics match ``target``.

    Damped Gauss-Newton with finite differences; ``start`` fixes dim, G and beta. The
    simulation uses a fixed seed, so it is a smooth deterministic function of the parameters.
    """
    x = _to_x(start)
    want = target.vector()

    def resid(x: np.ndarray) -> np.ndarray:
        return simulate_stats(_from_x(start, x)).vector() - want

    r = resid(x)
    for _ in range(iterations):
        if np.abs(r).max() < tol:
            break
        h = 1e-3
        jac = np.stack([(resid(x + h * e) - r) / h for e in np.eye(len(x))], axis=1)
        step = np.linalg.lstsq(jac, -r, rcond=None)[0]
        step *= min(1.0, 0.5 / max(np.abs(step).max(), 1e-12))  # trust region
        for _ in range(8):
            r_new = resid(x + step)
            if np.linalg.norm(r_new) < np.linalg.norm(r):
                x, r = x + step, r_new
                break
            step /= 2
        else:
            break
    return _from_x(start, x)


def fit_with_groups(
    target: ScoreStats,
    dim: int,
    noise_decay: float,
    start: FaceModel | None = None,
    choices: tuple[int, ...] = GROUP_CHOICES,
) -> tuple[FaceModel, list[dict[str, Any]]]:
    """Fit for every group count in ``choices``; keep the best 99.9th impostor percentile."""
    base = replace(start or FaceModel(), dim=dim, noise_decay=noise_decay)
    tried: list[dict[str, Any]] = []
    for groups in choices:
        model = fit_face_model(target, replace(base, groups=groups))
        got = simulate_stats(model)
        tried.append({"groups": groups, "model": model, "stats": got})
    best = min(tried, key=lambda t: abs(t["stats"].impostor_q999 - target.impostor_q999))
    report = [
        {"groups": t["groups"], "fitted": asdict(t["stats"]), "chosen": t is best} for t in tried
    ]
    return best["model"], report


@functools.lru_cache(maxsize=8)
def default_face_model(dim: int = 128) -> FaceModel:
    """The LFW-calibrated model for ``dim`` (stored constants; other dims fitted on first use)."""
    if dim in DEFAULT_MODELS:
        return FaceModel(
            dim=dim, groups=DEFAULT_GROUPS, noise_decay=LFW_WITHIN_DECAY, **DEFAULT_MODELS[dim]
        )
    if 128 not in DEFAULT_MODELS:
        raise RuntimeError("no default 128-d model: run calibrate_from on real embeddings")
    start = replace(default_face_model(128), dim=dim)
    return fit_face_model(LFW_STATS, start)


def calibrate_from(
    path: Path, dim: int = 128, group_choices: tuple[int, ...] = GROUP_CHOICES
) -> tuple[FaceModel, dict[str, Any]]:
    """Fit the generator to a file of real embeddings; the model and the fit report out."""
    vectors, labels = load_embeddings(path)
    target = lfw_score_stats(vectors, labels)
    beta = within_decay(vectors, labels)
    start = default_face_model(128) if DEFAULT_MODELS else None
    model, tried = fit_with_groups(target, dim, beta, start=start, choices=group_choices)
    got = simulate_stats(model, identities=2 * FIT_IDENTITIES, seed=5)  # fresh draw
    report = {
        "file": str(path),
        "faces": len(vectors),
        "identities": int(labels.max() + 1),
        "target": asdict(target),
        "within_decay": beta,
        "groups_tried": tried,
        "fitted_fresh_draw": asdict(got),
        "model": asdict(model),
    }
    return model, report


# --- synthetic gallery -----------------------------------------------------------------------
@dataclass
class Chunk:
    vectors: np.ndarray  # gallery faces
    labels: np.ndarray  # identity of each gallery face
    probes: np.ndarray  # fresh faces of gallery identities in this chunk
    probe_labels: np.ndarray
    # (queries, K - 1, dim): each probe's further fresh faces of the same identity, for a
    # K-photo probe; None when K = 1
    more_probes: np.ndarray | None = None


def generate(
    model: FaceModel,
    faces: int,
    queries: int,
    seed: int = 0,
    chunk_faces: int = 1 << 18,
    probes_per_query: int = 1,
) -> Iterator[Chunk]:
    """Gallery faces in chunks, with probes spread over the chunks in proportion.

    With ``probes_per_query`` K > 1 every probe also gets K - 1 further fresh faces of its
    identity (``Chunk.more_probes``), drawn from a stream of their own: the gallery and each
    query's first face are the same as with K = 1.
    """
    if probes_per_query < 1:
        raise ValueError("probes_per_query must be at least 1")
    rng = np.random.default_rng(seed)
    more_rng = np.random.default_rng([seed, probes_per_query, 104729])
    p = 1.0 / max(model.faces_per_identity, 1.0)
    done, next_label, probes_done = 0, 0, 0
    while done < faces:
        want = min(chunk_faces, faces - done)
        n_id = max(1, int(want / model.faces_per_identity * 1.2) + 8)
        counts = rng.geometric(p, size=n_id)
        cum = np.cumsum(counts)
        n_id = int(np.searchsorted(cum, want) + 1)
        counts = counts[:n_id]
        counts[-1] -= int(cum[n_id - 1] - want)  # the last identity is cut to fit
        centres = model.centres(rng, n_id)
        local = np.repeat(np.arange(n_id), counts)
        vectors = model.faces(rng, centres[local])
        done += want
        q = round(queries * done / faces) - probes_done
        probes_done += q
        who = rng.integers(0, n_id, size=q)
        more = None
        if probes_per_query > 1:
            extra = probes_per_query - 1
            more = model.faces(more_rng, np.repeat(centres[who], extra, axis=0))
            more = more.reshape(q, extra, model.dim)
        yield Chunk(
            vectors=vectors,
            labels=(local + next_label).astype(np.int64),
            probes=model.faces(rng, centres[who]),
            probe_labels=(who + next_label).astype(np.int64),
            more_probes=more,
        )
        next_label += n_id


# --- benchmark ---------------------------------------------------------------------------
def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def _percentile_ms(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, dtype=np.float64), q) / 1e6)


def run_search_bench(
    faces: int,
    dim: int = 128,
    queries: int = 1000,
    k: int = 10,
    kind: str = "auto",
    params: AnnParams | None = None,
    model: FaceModel | None = None,
    threads: int = 1,
    seed: int = 0,
    workdir: Path | None = None,
    exact_budget_s: float = 10.0,
    exact_max: int = EXACT_MAX_FACES,
    log: Any = None,
    sweep_nprobe: tuple[int, ...] | None = None,
    probes: int = 1,
    index_uri: str | None = None,
    milvus_server: bool = False,
) -> dict[str, Any]:
    """Build an index over ``faces`` synthetic faces and measure it against brute force.

    ``index_uri`` (``milvus://host:port``; or ``milvus_server``: a bundled server started for
    the run) also loads the same faces into Milvus and measures it on the same queries
    (``out["milvus"]``, with its p50 and recall@10 over the FAISS index's).

    ``probes`` K > 1 adds the fused K-photo probe (:func:`_fused_probe_bench`); every other
    figure is the single-photo search, as with K = 1.
    """
    if probes < 1:
        raise ValueError(f"a probe needs at least 1 photo, got probes={probes}")
    say = log or (lambda msg: None)
    model = model or default_face_model(dim)
    if model.dim != dim:
        model = replace(model, dim=dim)
    params = params or AnnParams()
    kind = choose_kind(faces, exact_max, DEFAULT_ANN_KIND) if kind == "auto" else kind
    base = Path(workdir) if workdir else None
    tmp = Path(tempfile.mkdtemp(prefix="faceledger-bench-", dir=base))
    all_threads = faiss.omp_get_max_threads()
    try:
        rows = RowStore.create(tmp / "faces.f32", dim)
        index = FaceIndex(rows, "flat", None, params)
        probe_faces, probe_labels, labels = [], [], []
        more_faces: list[np.ndarray] = []
        t_gen = t_add = 0.0
        next_id = 1
        t0 = time.perf_counter()
        for chunk in generate(model, faces, queries, seed=seed, probes_per_query=probes):
            t1 = time.perf_counter()
            t_gen += t1 - t0
            ids = np.arange(next_id, next_id + len(chunk.vectors), dtype=np.int64)
            index.add(ids, chunk.vectors)
            next_id += len(ids)
            t0 = time.perf_counter()
            t_add += t0 - t1
            probe_faces.append(chunk.probes)
            if chunk.more_probes is not None:
                more_faces.append(chunk.more_probes)
            probe_labels.append(chunk.probe_labels)
            labels.append(chunk.labels)
        say(f"generated {faces} faces in {t_gen:.1f}s, stored in {t_add:.1f}s")
        q = np.ascontiguousarray(np.concatenate(probe_faces))
        probe_labels_a = np.concatenate(probe_labels)
        labels_a = np.concatenate(labels)
        del probe_faces, labels
        t1 = time.perf_counter()
        index.build_ann(kind)
        t_build = time.perf_counter() - t1
        say(f"built {kind} in {t_build:.1f}s")
        exact = FaceIndex(rows, "flat")

        # ground truth: exact brute force, batched, all threads
        t1 = time.perf_counter()
        true_s = np.empty((len(q), k), np.float32)
        true_i = np.empty((len(q), k), np.int64)
        for s in range(0, len(q), 256):
            true_s[s : s + 256], true_i[s : s + 256] = exact.search(q[s : s + 256], k)
        t_truth = time.perf_counter() - t1
        say(f"ground truth in {t_truth:.1f}s")
        photos = None
        if probes > 1:  # (queries, K, dim): each query's first face and its K - 1 others
            photos = np.concatenate([q[:, None, :], np.concatenate(more_faces)], axis=1)

        faiss.omp_set_num_threads(threads)

        def timed(idx: Any) -> tuple[np.ndarray, list[int]]:
            """Single-query latency of ``idx`` (a FAISS or Milvus index) over all probes, and
            its results."""
            for i in range(min(20, len(q))):  # warm-up
                idx.search(q[i : i + 1], k)
            got = np.empty((len(q), k), np.int64)
            ns: list[int] = []
            for i in range(len(q)):
                t = time.perf_counter_ns()
                _, ids = idx.search(q[i : i + 1], k)
                ns.append(time.perf_counter_ns() - t)
                got[i] = ids[0]
            return got, ns

        def recall(got: np.ndarray) -> tuple[float, float]:
            r10 = np.mean([np.isin(true_i[j], got[j]).mean() for j in range(len(q))])
            return float(np.mean(got[:, 0] == true_i[:, 0])), float(r10)

        def figures(idx: Any) -> dict[str, float]:
            """recall@1/@10 and single-query p50/p99 of ``idx``."""
            got, ns = timed(idx)
            r1, r10 = recall(got)
            return {
                "recall_at_1": r1,
                "recall_at_10": r10,
                "p50_ms": _percentile_ms(ns, 50),
                "p99_ms": _percentile_ms(ns, 99),
            }

        sweep = []
        if index.kind in IVF_KINDS:
            for nprobe in sweep_nprobe or ():
                index.params = replace(params, nprobe=nprobe)
                row = {"nprobe": nprobe, **figures(index)}
                sweep.append(row)
                r10_here, p50_here = row["recall_at_10"], row["p50_ms"]
                say(f"nprobe {nprobe}: recall@10 {r10_here:.4f}, p50 {p50_here:.3f} ms")
            index.params = params
        got_i, lat = timed(index)
        # single-query latency of exact search (FAISS brute-force kernel), time-boxed
        ex_lat: list[int] = []
        deadline = time.perf_counter() + exact_budget_s
        for i in range(len(q)):
            t = time.perf_counter_ns()
            exact.search(q[i : i + 1], k)
            ex_lat.append(time.perf_counter_ns() - t)
            if i >= 9 and time.perf_counter() > deadline:
                break
        fused: dict[str, Any] = {}
        if photos is not None:
            faiss.omp_set_num_threads(all_threads)  # the fused vectors' ground truth
            fused = _fused_probe_bench(index, exact, photos, labels_a, probe_labels_a, k, threads)
            say(
                f"fused {probes}-photo probe: p50 {fused['fused_p50_ms']:.3f} ms vs single "
                f"{fused['single_p50_ms']:.3f} ms, recall@10 {fused['fused_recall_at_10']:.4f}"
            )
        faiss.omp_set_num_threads(all_threads)

        cand_recall = None
        if index.ann is not None:
            cand = index.candidate_rows(q, k)
            cand_ids = np.where(cand >= 0, rows.ids[np.maximum(cand, 0)], -1)
            cand_recall = float(
                np.mean([np.isin(true_i[j], cand_ids[j]).mean() for j in range(len(q))])
            )
        r1, r10 = recall(got_i)
        mate1 = float(np.mean(labels_a[true_i[:, 0] - 1] == probe_labels_a))
        mem = index.memory()
        status = _proc_status()
        p50, ex_p50 = _percentile_ms(lat, 50), _percentile_ms(ex_lat, 50)
        out: dict[str, Any] = {
            "faces": faces,
            "dim": dim,
            "queries": len(q),
            "k": k,
            "kind": index.kind,
            "threads": threads,
            "recall_at_1": r1,
            "recall_at_10": r10,
            "candidate_recall_at_10": cand_recall,
            "p50_ms": p50,
            "p99_ms": _percentile_ms(lat, 99),
            "exact_p50_ms": ex_p50,
            "exact_p99_ms": _percentile_ms(ex_lat, 99),
            "exact_queries_timed": len(ex_lat),
            "speedup": ex_p50 / p50 if p50 > 0 else None,
            "build_seconds": t_add + t_build,
            "store_seconds": t_add,
            "ann_build_seconds": t_build,
            "generate_seconds": t_gen,
            "ground_truth_seconds": t_truth,
            "bytes_per_face": (mem["ram"] + mem["mapped"]) / faces,
            "ram_bytes_per_face": mem["ram"] / faces,
            "mapped_bytes_per_face": mem["mapped"] / faces,
            "index_ram_bytes": mem["ram"],
            "index_mapped_bytes": mem["mapped"],
            "rss_bytes": status.get("VmRSS"),
            "rss_anon_bytes": status.get("RssAnon"),
            "rss_file_bytes": status.get("RssFile"),
            "peak_rss_bytes": status.get("VmHWM"),
            "exact_mate_at_1": mate1,
            "params": _effective_params(index, params),
            "generator": asdict(model),
        }
        if sweep:
            out["nprobe_sweep"] = sweep
        out.update(fused)
        with milvus_target(index_uri, milvus_server, base, say) as uri:
            if uri:
                m_index, m_row = milvus_index(uri, rows, say)
                try:
                    m_row.update(figures(m_index))
                finally:
                    drop(m_index)
                m_row["p50_over_faiss"] = m_row["p50_ms"] / p50 if p50 > 0 else None
                m_row["recall_at_10_over_faiss"] = m_row["recall_at_10"] / r10 if r10 else None
                out["milvus"] = m_row
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fused_probe_bench(
    index: FaceIndex,
    exact: FaceIndex,
    photos: np.ndarray,
    labels: np.ndarray,
    probe_labels: np.ndarray,
    k: int,
    threads: int,
) -> dict[str, Any]:
    """The fused K-photo probe against the single photo, on the same index and queries.

    ``photos`` is (queries, K, dim), K >= 2, every row K fresh faces of the identity
    ``probe_labels[i]``; gallery face id ``j + 1`` is of identity ``labels[j]``. A fused query
    is timed as the product runs one (:mod:`faceledger.core.video`): the ``template`` fusion
    of its K vectors (:func:`faceledger.search.fusion.templates`) and one index search of
    the fused vector. The single-photo query is the index search of the first photo. The two
    are timed one after the other for each query, the order alternating, so that both meet
    the same machine state. Not timed: the subject ranking that follows either search
    (:func:`faceledger.search.subjects.rank_subjects` reads subjects and their vectors from
    the database), which is the same work for one fused vector as for one photo's.

    Recall is the fused query's index results against exact search of the same fused
    vector (computed with the threads in force when called; timing uses ``threads``);
    rank-1 identity is whether the index's first face is of the probe's identity.
    """
    n, n_photos, _ = photos.shape
    group = Groups.of([range(n_photos)])
    fused_q = np.concatenate([templates(p, group) for p in photos])
    true_i = np.empty((n, k), np.int64)
    for s in range(0, n, 256):
        true_i[s : s + 256] = exact.search(fused_q[s : s + 256], k)[1]
    faiss.omp_set_num_threads(threads)

    def single(i: int) -> tuple[int, np.ndarray]:
        t = time.perf_counter_ns()
        _, ids = index.search(photos[i, :1], k)
        return time.perf_counter_ns() - t, ids[0]

    def fused(i: int) -> tuple[int, int, np.ndarray]:
        t = time.perf_counter_ns()
        vector = templates(photos[i], group)
        t_fuse = time.perf_counter_ns()
        _, ids = index.search(vector, k)
        t_end = time.perf_counter_ns()
        return t_end - t, t_fuse - t, ids[0]

    for i in range(min(20, n)):  # warm-up
        single(i)
        fused(i)
    got_single = np.empty((n, k), np.int64)
    got_fused = np.empty((n, k), np.int64)
    single_ns: list[int] = []
    fused_ns: list[int] = []
    fuse_ns: list[int] = []
    for i in range(n):
        if i % 2:
            f_ns, fu_ns, got_fused[i] = fused(i)
            s_ns, got_single[i] = single(i)
        else:
            s_ns, got_single[i] = single(i)
            f_ns, fu_ns, got_fused[i] = fused(i)
        single_ns.append(s_ns)
        fused_ns.append(f_ns)
        fuse_ns.append(fu_ns)
    fused_p50, single_p50 = _percentile_ms(fused_ns, 50), _percentile_ms(single_ns, 50)
    r10 = np.mean([np.isin(true_i[j], got_fused[j]).mean() for j in range(n)])
    return {
        "probes": n_photos,
        "fused_p50_ms": fused_p50,
        "fused_p99_ms": _percentile_ms(fused_ns, 99),
        "fuse_p50_ms": _percentile_ms(fuse_ns, 50),
        "single_p50_ms": single_p50,
        "single_p99_ms": _percentile_ms(single_ns, 99),
        "fused_per_photo_ratio": fused_p50 / n_photos / single_p50 if single_p50 > 0 else None,
        "fused_ratio": fused_p50 / single_p50 if single_p50 > 0 else None,
        "fused_recall_at_1": float(np.mean(got_fused[:, 0] == true_i[:, 0])),
        "fused_recall_at_10": float(r10),
        "rank1_identity_single": float(np.mean(labels[got_single[:, 0] - 1] == probe_labels)),
        "rank1_identity_fused": float(np.mean(labels[got_fused[:, 0] - 1] == probe_labels)),
    }


def _effective_params(index: FaceIndex, params: AnnParams) -> dict[str, Any]:
    out: dict[str, Any] = {"candidates": params.candidates(10, index.rows.rows)}
    if index.kind in IVF_KINDS and index.ann is not None:
        nlist = faiss.extract_index_ivf(index.ann).nlist
        out.update(nlist=nlist, nprobe=params.nprobe or auto_nprobe(nlist))
    elif index.kind == "hnsw_sq8":
        out.update(m=params.hnsw_m, ef_construction=params.ef_construction)
        out.update(ef_search=max(params.ef_search, out["candidates"]))
    return out
