"""#11 item 13: small requests cannot exhaust the server.

A 124 KB 7999x7999 16-bit PNG decodes to 64 MP: before, one such upload to ``/detect`` took
the server from 0.4 to 2 GB, three at once to 5 GB. Probes now have a pixel budget checked
from the header before decoding (``FACELEDGER_MAX_PROBE_MEGAPIXELS``), are decoded in a
bounded process-wide pool, without full-size float or intermediate copies, and their memory
goes back to the system. The memory tests run a real ``faceledger serve`` in a subprocess and
read its resident memory (VmRSS before, peak VmHWM after) from /proc. Face boxes that are
not finite or absurdly large are a 400, not a 500.
"""

from __future__ import annotations

import functools
import io
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import faceledger
from conftest import lfw_image
from conftest_api import PW, entries, seed
from faceledger.core import Faceledger
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.vision.decode import (
    DEFAULT_MAX_PROBE_PIXELS,
    DecodeError,
    configure_probes,
    decode_image,
    decode_probe,
    probe_limits,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests another httpx package; irrelevant here
    from fastapi.testclient import TestClient

GIB = 1024 * 1024 * 1024
SRC = Path(faceledger.__file__).resolve().parents[1]  # the server runs the code under test
CASE = {
    "case_number": "CASE-13",
    "purpose": "violent-crime",
    "justification": "CCTV still from the robbery on the high street",
}


def with_src(env: dict[str, str] | os._Environ[str]) -> str:
    """$PYTHONPATH with the sources under test first, for a subprocess."""
    return os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])


@functools.cache
def png16(side: int) -> bytes:
    """A side x side 16-bit grey PNG of zeros, compressed row by row (a few hundred KB)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return len(data).to_bytes(4, "big") + tag + data + crc.to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = bytes(1 + 2 * side)  # filter byte, then 2 bytes a pixel
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([16, 0, 0, 0, 0])  # 16 bits, grey
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


@dataclass
class Seeded:
    fl: Faceledger
    base: Path
    lfw: Path
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def seeded(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    base = tmp_path_factory.mktemp("probe")
    fl = seed(lfw, base, analyzer)
    ivy = fl.login("ivy", PW)
    return Seeded(fl, base, lfw, fl.create_token(ivy, "ivy", "probe-limits")[1])


@pytest.fixture(scope="module")
def client(seeded: Seeded) -> Iterator[TestClient]:
    settings = ApiSettings(search_rate_per_minute=0, rate_per_minute=0)
    app = create_app(seeded.fl.data_dir, faceledger=seeded.fl, settings=settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def default_probe_limits() -> Iterator[None]:
    """Tests that change the process-wide probe limits leave the defaults behind."""
    configure_probes()
    yield
    configure_probes()


# -- a real server in a subprocess, and its memory ------------------------------------------------


def memory_bytes(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


Answer = tuple[int, dict[str, Any], float]  # status, JSON body, seconds


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    headers: dict[str, str]

    def at_once(
        self, blob: bytes, n: int = 3
    ) -> tuple[list[tuple[int, dict[str, Any], float]], int]:
        """Post ``blob`` to /detect ``n`` times at the same moment: the answers (status, JSON,
        seconds) and how far the server's peak memory rose above its memory before."""
        before = memory_bytes(self.proc.pid)["VmRSS"]
        barrier = threading.Barrier(n)
        answers: list[Answer] = []

        def post() -> None:
            with httpx.Client(timeout=300) as http:
                barrier.wait()
                t0 = time.perf_counter()
                r = http.post(
                    f"{self.base}/detect", headers=self.headers, files={"photo": ("p.png", blob)}
                )
                answers.append((r.status_code, r.json(), time.perf_counter() - t0))

        threads = [threading.Thread(target=post) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answers, memory_bytes(self.proc.pid)["VmHWM"] - before


@pytest.fixture(scope="module")
def server(seeded: Seeded) -> Iterator[Server]:
    """``faceledger serve`` on 127.0.0.1 over the seeded data dir, with default probe limits,
    warmed up (models loaded) by one ordinary detect."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACELEDGER_")}
    env |= {
        "PYTHONPATH": with_src(env),
        "FACELEDGER_SEARCH_RATE_PER_MINUTE": "100000",
    }
    log = (seeded.base / "server.log").open("wb")
    command = ["serve", "--data-dir", str(seeded.fl.data_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "faceledger.cli", *command], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (seeded.base / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        photo = lfw_image(seeded.lfw, "Al_Gore", 2).read_bytes()
        r = httpx.post(
            f"{base}/detect", headers=seeded.headers, files={"photo": ("a.jpg", photo)}, timeout=60
        )
        assert r.status_code == 200 and len(r.json()["faces"]) == 1, r.text
        time.sleep(0.3)
        yield Server(proc, base, seeded.headers)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.nopg  # a server's decode memory: the database only holds the user
def test_three_oversized_16bit_pngs_at_once_are_refused_from_the_header(server: Server) -> None:
    """#11 item 13: three 7999x7999 16-bit PNGs posted to /detect at once add under 1 GiB to
    the server (before: 4.6 GB added, 15 s each), each refused at once with a 422."""
    blob = png16(7999)
    assert len(blob) < 200_000
    answers, added = server.at_once(blob)
    assert [(status, body["code"]) for status, body, _ in answers] == [(422, "too-many-pixels")] * 3
    assert "limit for probe photos" in answers[0][1]["message"]
    assert max(seconds for _, _, seconds in answers) < 3.0  # from the header, not decoded
    assert added < GIB, f"{added / 2**20:.0f} MiB"


@pytest.mark.nopg  # a server's decode memory: the database only holds the user
def test_three_probes_at_the_pixel_budget_at_once_add_under_1_gib(server: Server) -> None:
    """#11 item 13: the largest 16-bit PNG probe the server accepts, three at once, is
    decoded and analysed in the bounded pool and adds under 1 GiB (measured: about 0.4 GiB;
    before: 2 GiB)."""
    side = math.isqrt(DEFAULT_MAX_PROBE_PIXELS)
    answers, added = server.at_once(png16(side))
    assert [status for status, _, _ in answers] == [200] * 3, answers
    assert all(body["width"] == side and body["faces"] == [] for _, body, _ in answers)
    assert added < GIB, f"{added / 2**20:.0f} MiB"


@pytest.mark.nodb
def test_sixteen_bit_decode_needs_no_full_size_float_copy(tmp_path: Path) -> None:
    """#11 item 13: decoding a 64 MP 16-bit PNG (the gallery's cap, e.g. at ingest) takes
    the 16-bit image plus the RGB result, about 5 bytes a pixel (before: 25, float64 copies)."""
    path = tmp_path / "big.png"
    path.write_bytes(png16(7999))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from faceledger.vision.decode import decode_image\n"
        "data = Path(sys.argv[1]).read_bytes()\n"
        "def status(key):\n"
        "    for line in Path('/proc/self/status').read_text().splitlines():\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "before = status('VmRSS')\n"
        "img = decode_image(data)\n"
        "assert img.pixels.shape == (7999, 7999, 3)\n"
        "print(status('VmHWM') - before)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    added = int(out.stdout)
    assert added < 7 * 7999 * 7999, f"{added / 2**20:.0f} MiB"


# -- the budget, the pool ------------------------------------------------------------------------


@pytest.mark.nodb
def test_probe_decodes_wait_for_the_pool_and_oversized_ones_do_not(
    lfw: Path, default_probe_limits: None
) -> None:
    """#11 item 13: a probe is decoded only when the process-wide pool has room; a probe
    over the budget is refused from its header at once, even while the pool is busy."""
    photo = lfw_image(lfw, "Al_Gore", 2).read_bytes()
    oversized = png16(7999)
    limits = probe_limits()
    assert limits.decoders == 1 and limits.max_pixels == DEFAULT_MAX_PROBE_PIXELS
    done: list[Any] = []
    refused: list[tuple[str, float]] = []

    def refuse() -> None:
        t0 = time.perf_counter()
        try:
            decode_probe(oversized)
        except DecodeError as exc:
            refused.append((exc.reason, time.perf_counter() - t0))

    with limits.pool:  # the one decoder is busy
        waiting = threading.Thread(target=lambda: done.append(decode_probe(photo)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not done  # waits for the pool
        oversize = threading.Thread(target=refuse)
        oversize.start()
        oversize.join(10)  # (a thread: were it to wait for the pool, the test fails, not hangs)
        assert len(refused) == 1 and refused[0][0] == "too-many-pixels" and refused[0][1] < 1
        assert not done
    waiting.join(30)
    assert len(done) == 1 and done[0].pixels.shape == (250, 250, 3)
    # the gallery keeps its own, larger cap
    assert decode_image(png16(7000)).width == 7000


def test_probe_limits_come_from_the_environment(seeded: Seeded, default_probe_limits: None) -> None:
    """#11 item 13: FACELEDGER_MAX_PROBE_MEGAPIXELS and FACELEDGER_PROBE_DECODERS set the
    server's budget and pool; a probe over the budget is a 422 ``too-many-pixels`` on
    /detect, /searches and /verify, and the refused search is recorded."""
    with pytest.raises(ValueError, match="FACELEDGER_MAX_PROBE_MEGAPIXELS"):
        ApiSettings.from_env({"FACELEDGER_MAX_PROBE_MEGAPIXELS": "0"})
    with pytest.raises(ValueError, match="FACELEDGER_PROBE_DECODERS"):
        ApiSettings.from_env({"FACELEDGER_PROBE_DECODERS": "0"})
    settings = ApiSettings.from_env(
        {
            "FACELEDGER_MAX_PROBE_MEGAPIXELS": "0.05",  # 50,000 px: an LFW photo has 62,500
            "FACELEDGER_PROBE_DECODERS": "2",
            "FACELEDGER_SEARCH_RATE_PER_MINUTE": "0",
        }
    )
    assert (settings.max_probe_pixels, settings.probe_decoders) == (50_000, 2)
    app = create_app(seeded.fl.data_dir, faceledger=seeded.fl, settings=settings)
    assert (probe_limits().max_pixels, probe_limits().decoders) == (50_000, 2)
    photo = lfw_image(seeded.lfw, "Al_Gore", 2).read_bytes()
    with TestClient(app) as c:
        h = seeded.headers
        r = c.post("/api/v1/detect", headers=h, files={"photo": ("a.jpg", photo)})
        assert r.status_code == 422 and r.json()["code"] == "too-many-pixels", r.text
        r = c.post("/api/v1/searches", headers=h, data=CASE, files={"probe": ("a.jpg", photo)})
        assert r.status_code == 422 and r.json()["code"] == "too-many-pixels", r.text
        assert entries(seeded.fl, "search.bad_probe")[-1].details["error"] == "too-many-pixels"
        two = {"photo_a": ("a.jpg", photo), "photo_b": ("b.jpg", photo)}
        r = c.post("/api/v1/verify", headers=h, data=CASE, files=two)
        assert r.status_code == 422 and r.json()["code"] == "too-many-pixels", r.text


# -- results unchanged ---------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.nodb
def test_conversions_keep_their_values(lfw: Path) -> None:
    """#11 item 13 (guard): the strip-by-strip conversion gives the values the whole-image
    one gave: 16-bit scaled by 65535 (or by the highest value when none exceeds 255), float
    stretched, alpha over white, JPEG pixels as Pillow decodes them."""
    rng = np.random.default_rng(13)
    wide = (rng.random((700, 1300)) * 65535).astype(np.uint16)  # several strips
    got = decode_probe(_encode(Image.fromarray(wide))).pixels
    want = np.clip(wide.astype(np.float64) * (255.0 / 65535.0), 0, 255).astype(np.uint8)
    assert np.array_equal(got, np.repeat(want[..., None], 3, axis=2))
    low = (rng.random((300, 200)) * 200).astype(np.uint16)
    got = decode_probe(_encode(Image.fromarray(low))).pixels[..., 0]
    want = np.clip(low * (255.0 / low.max()), 0, 255).astype(np.uint8)
    assert np.array_equal(got, want)
    flt = (rng.random((300, 200)) * 7 - 2).astype(np.float32)
    got = decode_probe(_encode(Image.fromarray(flt), "TIFF")).pixels[..., 0]
    f64 = flt.astype(np.float64)
    want = ((f64 - f64.min()) / (f64.max() - f64.min()) * 255.0).astype(np.uint8)
    assert np.array_equal(got, want)
    rgba = (rng.random((300, 200, 4)) * 255).astype(np.uint8)
    white = Image.new("RGBA", (200, 300), (255, 255, 255, 255))
    want = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba)).convert("RGB"))
    assert np.array_equal(decode_probe(_encode(Image.fromarray(rgba))).pixels, want)
    for name in ("Al_Gore", "Adrien_Brody", "Aaron_Peirsol", "Abdullah_Gul"):
        path = lfw_image(lfw, name, 2)
        want = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(decode_probe(path.read_bytes()).pixels, want)


def test_lfw_probe_searches_as_before(seeded: Seeded, client: TestClient) -> None:
    """#11 item 13 (guard): an ordinary LFW probe through the bounded probe decoder finds
    the same candidates with the same scores as the core's search of the same photo."""
    photo = lfw_image(seeded.lfw, "Al_Gore", 2).read_bytes()
    r = client.post(
        "/api/v1/searches", headers=seeded.headers, data=CASE, files={"probe": ("a.jpg", photo)}
    )
    assert r.status_code == 200, r.text
    got = [(c["face_id"], round(c["score"], 5)) for c in r.json()["faces"][0]["candidates"]]
    direct = seeded.fl.searcher().search_bytes(photo)
    want = [(c.face_id, round(c.score, 5)) for c in direct.faces[0].candidates]
    assert got == want
    top = r.json()["faces"][0]["candidates"][0]
    assert "Al_Gore" in top["provenance"][0]["original_path"]


# -- face boxes ----------------------------------------------------------------------------------

BAD_BOXES = ["0,0,inf,5", "-inf,0,5,5", "0,0,1e400,5", "nan,0,5,5", "0,0,2000000,5", "0,0,5,1e300"]


@pytest.mark.parametrize("box", BAD_BOXES)
def test_non_finite_or_absurd_face_box_is_a_400(
    seeded: Seeded, client: TestClient, box: str
) -> None:
    """#11 item 13: a face box that is not finite or absurdly large (over 10^6 px) is a 400
    ``bad-face-box`` for /searches (face_box) and /verify (face_box_a), never a 500 (before:
    ``inf`` was a 500, and /verify compared faces with a box a million pixels wide)."""
    photo = lfw_image(seeded.lfw, "Al_Gore", 2).read_bytes()
    h = seeded.headers
    r = client.post(
        "/api/v1/searches",
        headers=h,
        data={**CASE, "face_box": box},
        files={"probe": ("a.jpg", photo)},
    )
    assert r.status_code == 400 and r.json()["code"] == "bad-face-box", r.text
    two = {"photo_a": ("a.jpg", photo), "photo_b": ("b.jpg", photo)}
    r = client.post("/api/v1/verify", headers=h, data={**CASE, "face_box_a": box}, files=two)
    assert r.status_code == 400 and r.json()["code"] == "bad-face-box", r.text
    assert "face_box_a" in r.json()["message"]
