"""The paths the default product takes, tested as such (#17 item 6).

The other API tests inject a HOG-only analyzer (``conftest_api.seed``); here the data dir is
built and searched with nothing injected, so the core's own defaults decide the detector and
the embedder. Real LFW photos, a real SQLite data dir, the FastAPI app through TestClient and
the CLI through Typer's runner.
"""

from __future__ import annotations

import io
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlib
import numpy as np
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from conftest import RawDB, lfw_image
from conftest_api import PW, entries, own_token
from faceledger.cli import app as cli_app
from faceledger.core import Faceledger, SearchRequest
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_paths
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.vision.detection import create_detector

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

CASE = {"case_number": "CASE-17", "purpose": "violent-crime", "justification": "CCTV still"}
GALLERY = [("Al_Gore", 1), ("Adrien_Brody", 1), ("Aaron_Peirsol", 1), ("Abdullah_Gul", 1)]
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


@dataclass
class Env:
    fl: Faceledger
    client: TestClient
    tokens: dict[str, str]
    lfw: Path
    base: Path

    def h(self, user: str = "ivy") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def search(self, photo: bytes) -> Any:
        return self.client.post(
            "/api/v1/searches",
            headers=self.h(),
            data=CASE,
            files={"probe": ("p.jpg", photo, "image/jpeg")},
        )

    def detect(self, photo: bytes) -> Any:
        r = self.client.post(
            "/api/v1/detect",
            headers=self.h(),
            data={"case_number": "CASE-17"},
            files={"photo": ("p.jpg", photo, "image/jpeg")},
        )
        assert r.status_code == 200, r.text
        return r.json()

    def face_of(self, name: str) -> int:
        raw = RawDB(self.fl.data_dir)
        try:
            row = raw.execute(
                "select f.id from faces f join provenance p on p.image_sha = f.image_sha "
                "where p.original_path like ?",
                (f"%{name}%",),
            ).fetchone()
        finally:
            raw.conn.close()
        assert row is not None, name
        return int(row[0])


def _folder(lfw: Path, dest: Path, photos: list[tuple[str, int]]) -> Path:
    dest.mkdir()
    for name, n in photos:
        shutil.copy(lfw_image(lfw, name, n), dest)
    return dest


@pytest.fixture(scope="module")
def env(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A data dir ingested and searched with the defaults: no analyzer factory is set."""
    base = tmp_path_factory.mktemp("default")
    fl = Faceledger(base / "data")
    root = fl.init_admin("root", PW)
    fl.add_user(root, "ivy", PW, "investigator", "north")
    fl.ingest(
        root,
        iter_paths([_folder(lfw, base / "g", GALLERY)], "archive", "test fixture"),
        PipelineSettings(),
    )
    fl.save_policy(root, fl.policy().with_value("daily_quota", "0"))
    assert fl._analyzer_factory is None  # the default analyzer, as `faceledger serve` runs
    tokens = {u: own_token(fl, u)[1] for u in ("root", "ivy")}
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as client:
        yield Env(fl, client, tokens, lfw, base)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _candidates(res: dict[str, Any]) -> list[int]:
    return [c["face_id"] for f in res["faces"] for c in f["candidates"]]


# -- the default analyzer ---------------------------------------------------------------------


def test_default_analyzer_api_search_finds_the_person(env: Env) -> None:
    """#17 item 6: an API search through the default analyzer (nothing injected) finds the
    gallery's photo of the person in another photo of them."""
    r = env.search(lfw_image(env.lfw, "Al_Gore", 2).read_bytes())
    assert r.status_code == 200, r.text
    res = r.json()
    assert len(res["faces"]) == 1
    assert _candidates(res)[0] == env.face_of("Al_Gore")
    assert env.fl.searcher().analyzer.model_id == env.fl.store.model_id()


def test_default_api_search_uses_the_cnn_where_hog_finds_no_face(env: Env) -> None:
    """#17 item 6, #15 item 3: a photo HOG misses and the MMOD CNN finds (Al Gore turned 45
    degrees), checked on both detectors directly, is searched through the default analyzer
    (probes: HOG, then the CNN on ONNX Runtime where HOG finds nothing)."""
    photo = Image.open(lfw_image(env.lfw, "Al_Gore", 2)).convert("RGB")
    turned = photo.rotate(45, resample=Image.BICUBIC, fillcolor=(128, 128, 128))
    pixels = np.asarray(turned)
    # the detectors as FaceAnalyzer() makes them when none is given (the default min_face)
    assert create_detector("hog").detect(pixels) == []
    assert len(create_detector("cnn").detect(pixels)) == 1
    r = env.search(_jpeg(turned))
    assert r.status_code == 200, r.text
    assert env.face_of("Al_Gore") in _candidates(r.json())


# -- quality warnings on /detect --------------------------------------------------------------


def test_quality_warnings_fire_on_photos_made_for_them(env: Env) -> None:
    """#17 item 6: POST /api/v1/detect warns "small" on a downscaled face, "blurred" on a
    Gaussian-blurred one and "turned" on a turned one, and none of them on the plain photo."""

    def warns(img: Image.Image) -> list[str]:
        faces = env.detect(_jpeg(img))["faces"]
        assert len(faces) == 1, faces
        return list(faces[0]["warnings"])

    plain = Image.open(lfw_image(env.lfw, "Al_Gore", 4)).convert("RGB")  # sharp, frontal
    assert warns(plain) == []
    assert warns(plain.resize((140, 140), Image.LANCZOS)) == ["small"]  # a ~52 px face
    assert warns(plain.filter(ImageFilter.GaussianBlur(2.5))) == ["blurred"]
    # a face turned about 30 degrees (yaw proxy ~0.28; "turned" from 0.24), sharp and large
    assert warns(Image.open(lfw_image(env.lfw, "Alfred_Ford", 1)).convert("RGB")) == ["turned"]


# -- the 68-point model -----------------------------------------------------------------------

_OPENED: list[str] = []
_WATCHING = [False]
_HOOKED: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCHING[0] and event == "open" and args and isinstance(args[0], str | bytes | Path):
        _OPENED.append(str(args[0]))


def test_the_68_point_model_is_never_loaded(
    lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#17 item 6: ingest, search and `faceledger embed`, each with its default analyzer built
    fresh, load no file of the non-commercial 68-point landmark model. Python's opens are
    watched with an audit hook; dlib's model loaders (C++, which no audit hook sees) are
    wrapped to record their path and then do their real work."""
    loaded: list[str] = []
    for name in ("shape_predictor", "cnn_face_detection_model_v1", "face_recognition_model_v1"):
        real = getattr(dlib, name)

        def record(path: str, *a: Any, _real: Any = real, **kw: Any) -> Any:
            loaded.append(str(path))
            return _real(path, *a, **kw)

        monkeypatch.setattr(dlib, name, record)
    if not _HOOKED:  # an audit hook cannot be removed: add it once, switch it with _WATCHING
        sys.addaudithook(_audit)
        _HOOKED.append(True)
    _OPENED.clear()
    _WATCHING[0] = True
    try:
        fl = Faceledger(tmp_path / "data")
        root = fl.init_admin("root", PW)
        fl.add_user(root, "ivy", PW, "investigator", "north")
        fl.ingest(
            root,
            iter_paths([_folder(lfw, tmp_path / "g", GALLERY[:1])], "s", "t"),
            PipelineSettings(),
        )
        ivy = fl.login("ivy", PW)
        probe = lfw_image(lfw, "Al_Gore", 2)
        res = fl.search(
            ivy, probe.read_bytes(), SearchRequest("CASE-17", "violent-crime", "CCTV still")
        )
        assert _candidates(res)
        out = CliRunner().invoke(cli_app, ["embed", str(probe)])
        assert out.exit_code == 0, out.output
    finally:
        _WATCHING[0] = False
    seen = loaded + _OPENED
    # the observation works: the 5-point model was loaded by each of the three paths
    assert sum("shape_predictor_5_face_landmarks" in p for p in loaded) >= 3, loaded
    assert not [p for p in seen if "68_face_landmarks" in p]


# -- purge at each ingest ---------------------------------------------------------------------


def test_purge_runs_at_each_ingest(env: Env) -> None:
    """#17 item 6: an image past its expiry is gone after the next ingest (no `purge` run
    by anyone), with a `purge` ledger entry by the system naming it."""
    fl, root = env.fl, env.fl.login("root", PW)
    short = _folder(env.lfw, env.base / "short", [("Alejandro_Toledo", 1)])
    fl.ingest(
        root,
        iter_paths([short], "short-lived", "test", expires_at="2001-01-01"),
        PipelineSettings(),
    )
    sha = fl.store.candidates([env.face_of("Alejandro_Toledo")])[
        env.face_of("Alejandro_Toledo")
    ].image_sha
    purges = len(entries(fl, "purge"))
    fl.ingest(
        root,
        iter_paths([_folder(env.lfw, env.base / "next", [("Aaron_Sorkin", 1)])], "a", "t"),
        PipelineSettings(),
    )
    raw = RawDB(fl.data_dir)
    try:
        assert (
            raw.execute("select count(*) from images where sha256 = ?", (sha,)).fetchone()[0] == 0
        )
        assert (
            raw.execute(
                "select count(*) from provenance where original_path like '%Aaron_Sorkin%'"
            ).fetchone()[0]
            == 1
        )
    finally:
        raw.conn.close()
    new = entries(fl, "purge")[purges:]
    assert len(new) == 1 and new[0].actor == "system" and new[0].details["images"] == [sha]


# -- a tampered policy file -------------------------------------------------------------------


def test_tampered_policy_makes_the_cli_exit_5_until_an_admin_sets_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#17 item 6: with the policy file edited behind faceledger's back the CLI refuses with
    exit 5; an admin's `faceledger policy set` recovers and a search works again."""
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    data = str(env.fl.data_dir)
    probe = str(lfw_image(env.lfw, "Al_Gore", 2))
    search = [
        "search", probe, "--case", "CASE-17", "--purpose", "violent-crime",
        "--justification", "CCTV still", "--data-dir", data, "--as", "ivy", "--json",
    ]  # fmt: skip
    runner = CliRunner()
    path = env.fl.data_dir / "policy.json"
    text = path.read_text()
    tampered = text.replace('"daily_quota": 0', '"daily_quota": 7000')
    assert tampered != text
    path.write_text(tampered)
    r = runner.invoke(cli_app, search)
    assert r.exit_code == 5, r.output
    r = runner.invoke(
        cli_app, ["policy", "set", "daily_quota", "0", "--data-dir", data, "--as", "root"]
    )
    assert r.exit_code == 0, r.output
    assert entries(env.fl, "policy.set")[-1].actor == "root"
    r = runner.invoke(cli_app, search)
    assert r.exit_code == 0, r.output
    assert env.search(lfw_image(env.lfw, "Al_Gore", 2).read_bytes()).status_code == 200
