"""More crash tests: an erasure or an index save killed half-way, and ingest into a data dir
that is full or read-only.

(a) Erasure: a subprocess erases the face of a single-face photo (the image must go) and one
face of a three-face photo (that face must be blurred out of it), and dies (``os._exit``) at
a chosen point: inside the transaction before it commits, right after the commit, and before
each of the journalled file operations; plus SIGKILLs at random moments. Opening the data
dir again finishes the journal; the erasure then happened fully or not at all (no face rows,
crops, image or index entries left, the face blurred, its ledger entry there; or everything
byte-identical and no entry), no stray files remain, and the ledger verifies. Also: a
server opened before the crash erases another face of the same photo before anything
restarts, and both faces end up blurred.

(b) Index save: a subprocess dies at each step of ``IndexManager`` saving (torn and missing
files of every kind, the vector file half-appended or already replaced), for the exact and
an approximate kind; plus SIGKILLs at random moments of a loop of adds, erasures and
rebuilds. The next ``IndexManager(store).sync()`` must hold exactly the database's faces
and find each sampled face first.

(c) Disk full and read-only: writes fail with ENOSPC / EROFS through a test hook (always
run), and for real on a small tmpfs when this machine lets the tests mount one (root in a
privileged container; skipped otherwise). The CLI ingest must stop with exit code 6 and a
message that names the problem and the data dir (an API ingest job: status failed, code
``storage-error``); nothing already stored may change, no partial or orphan file may be
left, and the same ingest run again after the problem is gone must complete.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import PG_ADMIN, RawDB, copy_data_dir, lfw_image, not_here, side_by_side
from faceledger.core import Faceledger
from faceledger.gallery.index import IndexManager
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_paths
from faceledger.ledger import audit

PW = "crash test password"
CRASH = 77  # exit code of an injected crash
SINGLES = ["Aaron_Peirsol", "Abdullah_Gul", "Al_Gore"]
TRIO = ["Colin_Powell", "Amelie_Mauresmo", "Tony_Blair"]  # one photo, three faces
STORAGE_EXIT = 6  # the CLI's exit code for a data dir that cannot be written


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: Path) -> set[str]:
    return (
        {str(p.relative_to(root.parent)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def _db(data: Path) -> RawDB:
    return RawDB(data)


def _check_files_match_db(data: Path) -> None:
    """Every image and crop file is known to the database and every known one is there."""
    raw = _db(data)
    try:
        assert raw.integrity_ok()
        stored = {r[0] for r in raw.execute("select stored_path from images")}
        crops = {r[0] for r in raw.execute("select crop_path from faces")}
        assert not raw.execute("select count(*) from pending_files").fetchone()[0]
    finally:
        raw.close()
    assert _files(data / "images") == stored, "orphan, stray or missing image files"
    assert _files(data / "crops") == crops, "orphan, stray or missing crops"


def _check_index(store: Any, **kw: Any) -> Any:
    """The index (after a sync) holds exactly the database's faces and finds each first."""
    index = IndexManager(store, **kw).sync()
    batches = list(store.iter_vectors())
    ids = np.concatenate([b[0] for b in batches]) if batches else np.zeros(0, np.int64)
    assert len(index) == len(ids)
    assert sorted(index.rows.ids[index.rows.alive].tolist()) == ids.tolist()
    if len(ids):
        vecs = np.concatenate([b[1] for b in batches])
        sample = np.unique(np.linspace(0, len(ids) - 1, 40).astype(int))
        _, found = index.search(vecs[sample], 1)
        assert (found[:, 0] == ids[sample]).all()
    return index


# -- a small gallery, built once and copied per test ------------------------------------------


@pytest.fixture(scope="module")
def template(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir: admin ``root``, three single-face photos and one photo of three faces."""
    base = tmp_path_factory.mktemp("crash-more")
    photos = base / "photos"
    photos.mkdir()
    for name in SINGLES:
        shutil.copy(lfw_image(lfw, name), photos)
    (photos / "trio.jpg").write_bytes(side_by_side([lfw_image(lfw, n) for n in TRIO]))
    fl = Faceledger(base / "data")
    root = fl.init_admin("root", PW)
    fl.ingest(root, iter_paths([photos], "archive", "crash test"), PipelineSettings("hog", "dlib"))
    fl.store.close()
    return base / "data"


def _copy(template: Path, dest: Path) -> Path:
    return copy_data_dir(template, dest)


# == (a) erasure =================================================================================

ERASE_SCRIPT = r"""
import json, os, pathlib, sys
from pathlib import Path

data, point, ids = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
from faceledger.core import erasure as privacy
from faceledger.core import Faceledger

fl = Faceledger(data)
root = fl.login("root", sys.argv[4])

def die():
    os._exit(77)

if point == "before-commit":  # the erasure's ledger entry is the last write of its transaction
    real_append = privacy.audit.append
    def append(conn, actor, action, *args, **kwargs):
        if action == "erase":
            die()
        return real_append(conn, actor, action, *args, **kwargs)
    privacy.audit.append = append
elif point == "after-commit":
    privacy.finish_pending_files = lambda store: die()
elif point.startswith("before-file-op-"):  # die before the journal's n-th file operation
    allowed = [int(point.rsplit("-", 1)[1]) - 1]
    real_finish, real_unlink, real_replace = (
        privacy.finish_pending_files, pathlib.Path.unlink, os.replace
    )
    def counted(fn):
        def wrapper(*args, **kwargs):
            if allowed[0] == 0:
                die()
            allowed[0] -= 1
            return fn(*args, **kwargs)
        return wrapper
    def finish(store):
        pathlib.Path.unlink = counted(real_unlink)
        os.replace = counted(real_replace)
        return real_finish(store)
    privacy.finish_pending_files = finish
print("erasing", flush=True)
fl.erase(root, face_ids=ids, reason="crash test")
print("done", flush=True)
"""


@dataclass
class Before:
    faces: dict[int, tuple[str, str, np.ndarray, list[int]]]  # id: sha, crop, vector, bbox
    images: dict[str, tuple[str, str]]  # sha: stored path, sha256 of the file
    originals: dict[str, bytes]  # sha: the stored file
    single: str  # a one-face photo: erasing its face deletes it
    trio: str  # a three-face photo: erasing a face blurs it
    in_trio: list[int]  # its faces, left to right

    @property
    def targets(self) -> list[int]:
        """The erasure under test: the single photo's face and the trio's first face."""
        return sorted([self.single_face, self.in_trio[0]])

    @property
    def single_face(self) -> int:
        return next(f for f, v in self.faces.items() if v[0] == self.single)


def _before(data: Path) -> Before:
    raw = _db(data)
    faces = {
        int(i): (sha, crop, np.frombuffer(emb, "<f4").copy(), json.loads(bbox))
        for i, sha, crop, emb, bbox in raw.execute(
            "select id, image_sha, crop_path, embedding, bbox_json from faces"
        )
    }
    stored = dict(raw.execute("select sha256, stored_path from images").fetchall())
    origin = dict(raw.execute("select image_sha, original_path from provenance").fetchall())
    raw.close()
    originals = {sha: (data / path).read_bytes() for sha, path in stored.items()}
    images = {sha: (path, _sha(originals[sha])) for sha, path in stored.items()}
    single = next(s for s, p in origin.items() if p.endswith("Abdullah_Gul_0001.jpg"))
    trio = next(s for s, p in origin.items() if p.endswith("trio.jpg"))
    in_trio = sorted((f for f in faces if faces[f][0] == trio), key=lambda f: faces[f][3][0])
    assert len(in_trio) == 3, "the fixture's group photo should show three faces"
    assert sum(v[0] == single for v in faces.values()) == 1
    return Before(faces, images, originals, single, trio, in_trio)


def _region_diff(a: Image.Image, b: Image.Image, box: list[int]) -> float:
    pa = np.asarray(a.convert("RGB").crop(box), np.float32)
    pb = np.asarray(b.convert("RGB").crop(box), np.float32)
    return float(np.abs(pa - pb).mean())


def _check_blurred(data: Path, before: Before, erased: list[int]) -> None:
    """The trio photo has exactly the ``erased`` faces of it blurred out."""
    path, digest = before.images[before.trio]
    new_bytes = (data / path).read_bytes()
    assert _sha(new_bytes) != digest
    new = Image.open(io.BytesIO(new_bytes))
    old = Image.open(io.BytesIO(before.originals[before.trio]))
    assert new.size == old.size
    diffs = {f: _region_diff(new, old, before.faces[f][3]) for f in before.in_trio}
    kept = max(diffs[f] for f in before.in_trio if f not in erased)  # JPEG re-encoding only
    for f in erased:
        assert diffs[f] > 8 * kept, (f, diffs)


def _check_after_reopen(data: Path, before: Before, erased: set[int]) -> None:
    """Opening the data dir finishes the journal; then rows, files, index and ledger agree
    that exactly ``erased`` are gone."""
    fl = Faceledger(data)  # finishes journalled file operations
    try:
        raw = _db(data)
        face_ids = {r[0] for r in raw.execute("select id from faces")}
        image_shas = {r[0] for r in raw.execute("select sha256 from images")}
        raw.close()
        assert face_ids == set(before.faces) - erased
        single_gone = before.single_face in erased
        assert image_shas == set(before.images) - ({before.single} if single_gone else set())
        _check_files_match_db(data)
        assert not list(data.glob("pending/*")), "blurred copies left behind"
        assert not list(data.glob("**/*.tmp")), "temporary files left behind"
        for sha, (path, digest) in before.images.items():
            if sha == before.single and single_gone:
                assert not (data / path).exists()
            elif sha == before.trio and erased & set(before.in_trio):
                _check_blurred(data, before, sorted(erased & set(before.in_trio)))
            else:
                assert _sha((data / path).read_bytes()) == digest, f"{path} changed"
        assert audit.verify(fl.store).ok
        index = _check_index(fl.store)
        for fid in [*before.in_trio, before.single_face]:
            _, found = index.search(before.faces[fid][2][None, :], 10)
            assert (fid in found[0].tolist()) == (fid not in erased)
    finally:
        fl.store.close()


def _check_erasure(data: Path, before: Before) -> bool:
    """True if the erasure happened (fully), False if not at all; anything else fails."""
    fl = Faceledger(data)  # finishes journalled file operations
    erasures = list(audit.iter_entries(fl.store, action="erase"))
    fl.store.close()
    assert len(erasures) <= 1
    happened = bool(erasures)
    if happened:
        assert erasures[0].details["face_ids"] == before.targets
    _check_after_reopen(data, before, set(before.targets) if happened else set())
    return happened


def _erase_proc(data: Path, point: str, ids: list[int], tmp: Path) -> subprocess.Popen[str]:
    script = tmp / "erase.py"
    script.write_text(ERASE_SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), str(data), point, json.dumps(ids), PW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("point", "expect"),
    [
        ("before-commit", False),
        ("after-commit", True),
        ("before-file-op-1", True),
        ("before-file-op-2", True),
        ("before-file-op-3", True),
        ("before-file-op-4", True),
    ],
)
def test_erasure_crash_at_each_step(
    template: Path, tmp_path: Path, point: str, expect: bool
) -> None:
    data = _copy(template, tmp_path / "data")
    before = _before(data)
    proc = _erase_proc(data, point, before.targets, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == CRASH, (point, out, err)  # the crash point was reached
    assert _check_erasure(data, before) is expect
    if not expect:  # the erasure can simply be asked for again
        fl = Faceledger(data)
        fl.erase(fl.login("root", PW), face_ids=before.targets, reason="again")
        fl.store.close()
        assert _check_erasure(data, before)


def test_erasure_sigkill_at_random_moments(template: Path, tmp_path: Path) -> None:
    rng = random.Random(4321)
    for attempt in range(4):
        data = _copy(template, tmp_path / f"data{attempt}")
        before = _before(data)
        proc = _erase_proc(data, "random", before.targets, tmp_path)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "erasing"
        time.sleep(rng.uniform(0.0, 0.06))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        _check_erasure(data, before)  # either outcome, but nothing in between


def test_second_erasure_while_a_crashed_ones_files_are_pending(
    template: Path, tmp_path: Path
) -> None:
    """A server (opened before the crash) erases another face of the same photo before
    anything restarts: the first erasure's blur must survive the second one's."""
    data = _copy(template, tmp_path / "data")
    before = _before(data)
    server = Faceledger(data)  # already running: its start-up journal pass is behind it
    proc = _erase_proc(data, "after-commit", before.targets, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == CRASH, (out, err)
    second = before.in_trio[1]
    server.erase(server.login("root", PW), face_ids=[second], reason="second request")
    server.store.close()
    _check_after_reopen(data, before, {*before.targets, second})


# == (b) index save ===============================================================================

INDEX_SCRIPT = r"""
import os, sys
from pathlib import Path

data, kind, action, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
import faiss
from faceledger.gallery.index import manager as ix
from faceledger.db.store import Store

store = Store(data)
mgr = ix.IndexManager(store, kind=kind)

def die():
    os._exit(77)

def torn(path, data):
    with open(path, "wb") as fh:  # what a non-atomic write leaves when the power goes
        fh.write(data[: len(data) // 2])
    die()

real_write = ix.atomic_write
def atomic_write(path, data):
    target = {"ids": mgr.ids_path, "meta": mgr.meta_path}.get(point.split("-")[0])
    if path == target:
        if point.endswith("-before"):
            die()
        torn(path, data)
    return real_write(path, data)
ix.atomic_write = atomic_write

if point == "vectors-replaced":
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst) == mgr.vectors_path:
            die()
    os.replace = replace
elif point == "append-torn":  # the new rows only half written to the vector file
    real_pwrite = os.pwrite
    def pwrite(fd, data, offset):
        real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
        die()
    os.pwrite = pwrite
elif point == "ann-torn":
    real_write_index = faiss.write_index
    def write_index(index, path):
        real_write_index(index, path)
        torn(mgr.path, Path(path).read_bytes())
    faiss.write_index = write_index
elif point == "killed-flushed":
    real_flush = ix.RowStore.flush
    def flush(self):
        real_flush(self)
        die()
    ix.RowStore.flush = flush

if action == "rebuild":
    mgr.rebuild()
    mgr.save()
else:
    mgr.sync()
print("no crash", flush=True)
"""

LOOP_SCRIPT = r"""
import os, secrets, sys
from pathlib import Path
import numpy as np
from faceledger.gallery.index import IndexManager
from faceledger.gallery.sources import Provenance
from faceledger.db.store import Store
from faceledger.types import BBox, Detection, Face

store = Store(Path(sys.argv[1]))
rng = np.random.default_rng(int(sys.argv[2]))
mgr = IndexManager(store, kind=sys.argv[3])
det = Detection(bbox=BBox(0, 0, 50, 50), score=1.0, detector="test")
print("ready", flush=True)
step = 0
while True:
    step += 1
    v = rng.standard_normal((150, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sha = secrets.token_hex(32)
    prov = Provenance(source="t", legal_basis="t", original_path=sha)
    rows = [(Face(det, x, "synthetic", 1.0, 50, 100.0, 0.0), "c.jpg") for x in v]
    store.add_image(sha, 10, 10, "JPEG", 1, sha, prov, rows, None)
    mgr.sync()
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("select id from faces")]
    gone = rng.choice(ids, size=min(40, len(ids)), replace=False).tolist()
    with store.writer.begin() as conn:
        store.delete_faces(conn, [int(i) for i in gone])
    mgr.sync()
    if step % 4 == 0:
        mgr.rebuild()
        mgr.save()
"""


def _synthetic_store(data: Path, n: int, seed: int = 0) -> Any:
    """A store with ``n`` random unit vectors as faces (no images needed for the index)."""
    from faceledger.db.store import Store

    store = Store(data)
    store.bind_model("synthetic", 128)
    _add_synthetic(store, n, seed)
    return store


def _add_synthetic(store: Any, n: int, seed: int) -> None:
    import secrets

    from faceledger.gallery.sources import Provenance
    from faceledger.types import BBox, Detection, Face

    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    det = Detection(bbox=BBox(0, 0, 50, 50), score=1.0, detector="test")
    for s in range(0, n, 500):
        sha = secrets.token_hex(32)
        prov = Provenance(source="t", legal_basis="t", original_path=sha)
        rows = [(Face(det, x, "synthetic", 1.0, 50, 100.0, 0.0), "c.jpg") for x in v[s : s + 500]]
        store.add_image(sha, 10, 10, "JPEG", 1, sha, prov, rows, None)


def _delete_some(store: Any, fraction: float, seed: int) -> None:
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("select id from faces")]
    rng = np.random.default_rng(seed)
    gone = rng.choice(ids, size=int(len(ids) * fraction), replace=False)
    with store.writer.begin() as conn:
        store.delete_faces(conn, [int(i) for i in gone])


INDEX_CASES = [
    ("flat", "add", "append-torn"),
    ("flat", "add", "ids-before"),
    ("flat", "add", "ids-torn"),
    ("flat", "add", "meta-before"),
    ("flat", "add", "meta-torn"),
    ("flat", "erase", "killed-flushed"),
    ("flat", "erase", "ids-torn"),
    ("flat", "erase", "meta-before"),
    ("flat", "rebuild", "vectors-replaced"),
    ("flat", "rebuild", "ids-before"),
    ("flat", "rebuild", "meta-torn"),
    ("ivf_sq8", "add", "ann-torn"),
    ("ivf_sq8", "add", "meta-before"),
    ("ivf_sq8", "erase", "meta-torn"),
    ("ivf_sq8", "rebuild", "vectors-replaced"),
    ("ivf_sq8", "rebuild", "ann-torn"),
]


# The index files' crash safety: the database only supplies the rows (nopg).
@pytest.mark.nopg
@pytest.mark.parametrize(("kind", "action", "point"), INDEX_CASES)
def test_index_save_crash_at_each_step(tmp_path: Path, kind: str, action: str, point: str) -> None:
    store = _synthetic_store(tmp_path / "data", 1500)
    _check_index(store, kind=kind)  # built and saved
    if action == "add":
        _add_synthetic(store, 700, seed=1)
    elif action == "erase":
        _delete_some(store, 0.05, seed=2)  # few: erased rows stay in the files (no compaction)
    script = tmp_path / "index.py"
    script.write_text(INDEX_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(store.data_dir), kind, action, point],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == CRASH, (proc.stdout, proc.stderr)
    store.close()
    from faceledger.db.store import Store

    store = Store(tmp_path / "data")
    _check_index(store, kind=kind)  # the same settings as the crashed writer
    _check_index(store)  # and a default manager


@pytest.mark.nopg
@pytest.mark.parametrize("kind", ["flat", "ivf_sq8"])
def test_index_sigkill_at_random_moments(tmp_path: Path, kind: str) -> None:
    store = _synthetic_store(tmp_path / "data", 1200)
    _check_index(store, kind=kind)
    script = tmp_path / "loop.py"
    script.write_text(LOOP_SCRIPT)
    rng = random.Random(99)
    for attempt in range(3):
        proc = subprocess.Popen(
            # seeds unlike the gallery's (0): identical vectors would make "itself first" moot
            [sys.executable, str(script), str(store.data_dir), str(1000 + attempt), kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr
        time.sleep(rng.uniform(0.2, 1.5))
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        _check_index(store, kind=kind)
        _check_index(store)


# == (c) disk full, read-only ==================================================================


def _new_photos(lfw: Path, dest: Path, names: list[str]) -> Path:
    dest.mkdir()
    for name in names:
        shutil.copy(lfw_image(lfw, name), dest)
    return dest


NEW = ["Alejandro_Toledo", "Aaron_Sorkin", "Adrien_Brody", "Abdullah_Gul", "George_W_Bush"]


def _ingest_args(data: Path, photos: Path) -> list[str]:
    return [
        "ingest",
        str(photos),
        "--legal-basis",
        "crash test",
        "--embedder",
        "dlib",
        "--workers",
        "1",
        "--data-dir",
        str(data),
        "--as",
        "root",
    ]


def _snapshot(data: Path) -> dict[str, Any]:
    """What must not change: the rows of every table but the ledger and runs, every image
    and crop file, and the ledger's verified head."""
    raw = _db(data)
    rows = {
        t: sorted(map(repr, raw.execute(f"select * from {t}")))
        for t in ("images", "faces", "provenance", "users")
    }
    ledger = raw.execute("select seq, hash from ledger order by seq").fetchall()
    raw.close()
    files = {
        str(p.relative_to(data)): _sha(p.read_bytes())
        for d in ("images", "crops")
        for p in (data / d).rglob("*")
        if p.is_file()
    }
    return {"rows": rows, "files": files, "ledger": ledger}


def _check_unharmed(data: Path, before: dict[str, Any], new_images: int) -> None:
    """Everything stored before is intact; up to ``new_images`` were added, consistently."""
    after = _snapshot(data)
    for table in ("images", "faces", "provenance"):
        assert set(before["rows"][table]) <= set(after["rows"][table])
    assert len(after["rows"]["images"]) <= len(before["rows"]["images"]) + new_images
    assert before["rows"]["users"] == after["rows"]["users"]
    for path, digest in before["files"].items():
        assert after["files"].get(path) == digest, f"{path} changed or lost"
    assert after["ledger"][: len(before["ledger"])] == before["ledger"]
    _check_files_match_db(data)
    assert not any(data.glob("**/.*.tmp")), "partial temporary files left behind"
    fl = Faceledger(data)
    try:
        assert audit.verify(fl.store).ok
        _check_index(fl.store)
    finally:
        fl.store.close()


def _flat(text: str) -> str:
    """Text without whitespace: the CLI's console wraps long lines anywhere."""
    return re.sub(r"\s+", "", text)


def _failing_writes(monkeypatch: pytest.MonkeyPatch, code: int, after: int, where: str) -> None:
    """From the ``after``-th gallery file write on, writes fail with ``code`` (``where``:
    the image or the crop write; ``fsync``: the data is written, then fsync fails)."""
    import faceledger.db.store
    import faceledger.gallery.ingest

    calls = {"n": 0}
    real_write = faceledger.db.store.atomic_write
    real_fsync = os.fsync

    def should_fail(path: Path) -> bool:
        kind = "image" if "/images/" in str(path) else "crop" if "/crops/" in str(path) else ""
        if kind and (where in (kind, "fsync")):
            calls["n"] += 1
            return calls["n"] > after
        return False

    def atomic_write(path: Path, data: bytes) -> None:
        if where != "fsync" and should_fail(path):
            raise OSError(code, os.strerror(code), str(path))
        real_write(path, data)

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if should_fail(Path(target)):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(faceledger.gallery.ingest, "atomic_write", atomic_write)
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(
    ("code", "where", "words"),
    [
        (errno.ENOSPC, "image", "No space left on device"),
        (errno.ENOSPC, "crop", "No space left on device"),
        (errno.ENOSPC, "fsync", "No space left on device"),
        (errno.EROFS, "image", "Read-only file system"),
    ],
    ids=["disk-full-image", "disk-full-crop", "disk-full-fsync", "read-only"],
)
def test_ingest_when_writes_fail_through_a_hook(
    template: Path,
    lfw: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    where: str,
    words: str,
) -> None:
    from faceledger.cli import app

    data = _copy(template, tmp_path / "data")
    photos = _new_photos(lfw, tmp_path / "new", NEW)
    before = _snapshot(data)
    runner = CliRunner()
    env = {"FACELEDGER_PASSWORD": PW}
    with monkeypatch.context() as m:
        _failing_writes(m, code, after=2, where=where)
        r = runner.invoke(app, _ingest_args(data, photos), env=env)
    assert r.exit_code == STORAGE_EXIT, (r.exit_code, r.output, r.exception)
    said = _flat(r.output)
    assert _flat(words) in said and _flat(str(data)) in said, r.output
    assert "Traceback" not in r.output
    _check_unharmed(data, before, new_images=len(NEW))
    raw = _db(data)  # the ledger says the ingest it started did not finish, and why
    last = raw.execute("select action, details from ledger order by seq desc limit 2").fetchall()
    raw.close()
    assert [a for a, _ in last] == ["ingest.failed", "ingest.start"], last
    assert json.loads(last[0][1])["error"] == "OSError"
    r = runner.invoke(app, _ingest_args(data, photos), env=env)  # the problem is gone
    assert r.exit_code == 0, r.output
    raw = _db(data)
    n_images = raw.execute("select count(*) from images").fetchone()[0]
    statuses = [s for (s,) in raw.execute("select status from ingest_runs order by id")]
    raw.close()
    assert n_images == len(before["rows"]["images"]) + len(NEW) - 1  # Abdullah_Gul: duplicate
    assert statuses[-2:] == ["interrupted", "done"]
    _check_unharmed(data, before, new_images=len(NEW))


def test_api_ingest_job_names_the_storage_problem(
    template: Path, lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from faceledger.http.app import create_app
    from faceledger.http.settings import ApiSettings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests another httpx package
        from fastapi.testclient import TestClient

    data = _copy(template, tmp_path / "data")
    before = _snapshot(data)
    fl = Faceledger(data)
    h = {"Authorization": f"Bearer {fl.create_token(fl.login('root', PW), 'root')[1]}"}
    app = create_app(data, faceledger=fl, settings=ApiSettings(rate_per_minute=0))
    files = [("files", (f"{n}.jpg", lfw_image(lfw, n).read_bytes(), "image/jpeg")) for n in NEW]
    with monkeypatch.context() as m, TestClient(app) as c:
        _failing_writes(m, errno.ENOSPC, after=2, where="image")
        r = c.post(
            "/api/v1/ingest", headers=h, data={"source": "up", "legal_basis": "test"}, files=files
        )
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 120
        while (job := c.get(f"/api/v1/jobs/{r.json()['id']}", headers=h).json())["status"] in (
            "queued",
            "counting",
            "running",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    fl.store.close()
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "storage-error"
    assert "No space left on device" in job["error"]["message"]
    _check_unharmed(data, before, new_images=len(NEW))


# -- for real: a small tmpfs, filled up or remounted read-only ------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        not_here("mounting a tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        not_here(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "faceledger.cli", *args],
        env={**os.environ, "FACELEDGER_PASSWORD": PW},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fill(mnt: Path, leave: int) -> Path:
    filler = mnt / "filler"
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.parametrize(
    "leave_kb",
    [  # on this fixture: the database fills at the login; image files fill after two photos
        # (with PostgreSQL the database is elsewhere, and only photos and crops take space)
        pytest.param(40, id="full-at-start"),
        pytest.param(56 if PG_ADMIN else 200, id="full-mid-ingest"),
    ],
)
def test_ingest_on_a_full_disk(
    template: Path, lfw: Path, tmp_path: Path, small_fs: Path, leave_kb: int
) -> None:
    data = _copy(template, small_fs / "data")
    photos = _new_photos(lfw, tmp_path / "new", NEW)
    before = _snapshot(data)
    filler = _fill(small_fs, leave_kb * 1024)
    r = _cli(_ingest_args(data, photos))
    assert r.returncode == STORAGE_EXIT, (r.returncode, r.stdout, r.stderr)
    said = _flat(r.stderr)
    assert _flat("No space left on device") in said or _flat("disk is full") in said, r.stderr
    assert _flat(str(data)) in said, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    filler.unlink()
    _check_unharmed(data, before, new_images=len(NEW))
    r = _cli(_ingest_args(data, photos))
    assert r.returncode == 0, r.stderr
    raw = _db(data)
    assert (
        raw.execute("select count(*) from images").fetchone()[0]
        == len(before["rows"]["images"]) + len(NEW) - 1
    )
    raw.close()
    _check_unharmed(data, before, new_images=len(NEW))


def test_ingest_on_a_read_only_data_dir(
    template: Path, lfw: Path, tmp_path: Path, small_fs: Path
) -> None:
    data = _copy(template, small_fs / "data")
    photos = _new_photos(lfw, tmp_path / "new", NEW)
    before = _snapshot(data)
    every_file = {str(p): _sha(p.read_bytes()) for p in data.rglob("*") if p.is_file()}
    ro = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
    if ro.returncode != 0:
        not_here(f"cannot remount read-only: {ro.stderr.decode().strip()}")
    try:
        r = _cli(_ingest_args(data, photos))
        assert r.returncode == STORAGE_EXIT, (r.returncode, r.stdout, r.stderr)
        assert "read-only" in _flat(r.stderr).lower(), r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert {str(p): _sha(p.read_bytes()) for p in data.rglob("*") if p.is_file()} == (
            every_file
        )
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    _check_unharmed(data, before, new_images=0)
    r = _cli(_ingest_args(data, photos))
    assert r.returncode == 0, r.stderr
    _check_unharmed(data, before, new_images=len(NEW))
