"""A corpus of bad and awkward inputs, made by the tests, fed through a real ingest.

Each file gets a specific reason, the batch goes on, the summary counts failures by
reason, and what was already ingested is not lost or changed.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import RawDB, lfw_image, side_by_side
from faceledger.db.store import Store
from faceledger.gallery.ingest import Ingestor, PipelineSettings
from faceledger.gallery.sources import iter_manifest, iter_paths


def _img(mode: str = "RGB", size: tuple[int, int] = (64, 48), fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L", "P", "I;16") else None).save(buf, fmt, **kw)
    return buf.getvalue()


def build_corpus(root: Path, lfw: Path) -> dict[str, str | None]:
    """Write the corpus; returns file name -> expected failure reason (None: must ingest)."""
    face = lfw_image(lfw, "Al_Gore", 1).read_bytes()
    exp: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        (root / name).write_bytes(data)
        exp[name] = reason

    put("01_zero.jpg", b"", "empty-file")
    put("02_truncated.jpg", face[: len(face) // 3], "corrupt-image")
    png = _img(size=(400, 300))
    put("03_truncated.png", png[: len(png) // 2], "corrupt-image")
    # a real JPEG's first bytes, then noise: the header no longer parses
    put("04_header_garbage.jpg", face[:200] + random.Random(0).randbytes(4000), "not-an-image")
    put("05_text.jpg", b"this is not an image at all\n" * 10, "not-an-image")
    put("06_pdf.jpg", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "not-an-image")
    put("07_one_pixel.png", _img(size=(1, 1)), None)
    put("08_pixel_bomb.png", _img("1", (30000, 30000)), "too-many-pixels")
    gif = io.BytesIO()
    Image.new("P", (20000, 20000)).save(gif, "GIF")
    put("09_tiny_gif_huge_canvas.gif", gif.getvalue(), "too-many-pixels")
    put("10_sixteen_bit.png", _img("I;16"), None)
    put("11_palette.png", _img("P"), None)
    put("12_cmyk.jpg", _img("CMYK", fmt="JPEG"), None)
    put("13_alpha.png", _img("RGBA"), None)
    put("14_grey.jpg", _img("L", fmt="JPEG"), None)
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:])
    put("15_animated.gif", anim.getvalue(), None)
    anim_webp = io.BytesIO()
    frames[0].save(anim_webp, "WEBP", save_all=True, append_images=frames[1:])
    put("16_animated.webp", anim_webp.getvalue(), None)
    rotated = Image.open(io.BytesIO(face)).rotate(90, expand=True)  # face lies on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: upright again
    buf = io.BytesIO()
    rotated.save(buf, "JPEG", exif=exif)
    put("17_exif_rotated_face.jpg", buf.getvalue(), None)
    put(
        "18_photo.heic",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        "unsupported-format",
    )
    bad_exif = face.replace(b"JFIF", b"JFIF", 1)
    app1 = b"\xff\xe1\x00\x10Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff"
    put("19_corrupt_exif.jpg", bad_exif[:2] + app1 + bad_exif[2:], None)
    (root / "21_loop_a.jpg").symlink_to(root / "21_loop_b.jpg")
    (root / "21_loop_b.jpg").symlink_to(root / "21_loop_a.jpg")
    exp["21_loop_a.jpg"] = exp["21_loop_b.jpg"] = "unreadable"
    (root / "22_directory.jpg").mkdir()
    exp["22_directory.jpg"] = "is-a-directory"
    long_name = "23_" + "x" * 240 + ".png"
    put(long_name, _img(size=(65, 48)), None)
    weird = os.fsdecode(b"24_\xff\xfe_latin1_\xe9.png")
    put(weird, _img(), None)
    (root / "25_folder_link").symlink_to(root)  # a directory loop: not followed
    put("26_bmp.bmp", _img(fmt="BMP"), None)
    put("27_tiff.tif", _img(fmt="TIFF"), None)
    put("28_face.jpg", face, None)
    put(
        "29_two_faces.jpg",
        side_by_side([lfw_image(lfw, "Adrien_Brody", 1), lfw_image(lfw, "Abdullah_Gul", 1)]),
        None,
    )
    put("30_webp.webp", _img(fmt="WEBP"), None)
    return exp


def build_archives(root: Path) -> dict[str, str]:
    exp: dict[str, str] = {}
    z = root / "a.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../../traversal.jpg", b"x")
        zf.writestr("/etc/absolute.jpg", b"x")
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("bomb.jpg", bytes(101 * 1024 * 1024))  # ~100 KB compressed
    exp |= {
        "../../traversal.jpg": "unsafe-path",
        "/etc/absolute.jpg": "unsafe-path",
        "link.jpg": "link-in-archive",
        "bomb.jpg": "file-too-large",
    }
    t = root / "b.tar"
    with tarfile.open(t, "w") as tf:
        dev = tarfile.TarInfo("device.jpg")
        dev.type = tarfile.BLKTYPE
        tf.addfile(dev)
        fifo = tarfile.TarInfo("fifo.jpg")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
    exp |= {"device.jpg": "special-file", "fifo.jpg": "special-file"}
    return exp


@pytest.fixture(scope="module")
def ingested(lfw: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("bad")
    corpus = tmp / "corpus"
    corpus.mkdir()
    expected = build_corpus(corpus, lfw)
    archives = tmp / "archives"
    archives.mkdir()
    expected_arch = build_archives(archives)
    store = Store(tmp / "data")
    ingestor = Ingestor(store, PipelineSettings())
    # something already in the gallery, which the bad batch must not disturb
    first = ingestor.run(iter_paths([lfw_image(lfw, "Colin_Powell", 1)], "s", "t"))
    assert first.new == 1
    before = RawDB(tmp / "data").execute("select id, image_sha, embedding from faces").fetchall()
    summary = ingestor.run(iter_paths([corpus, archives / "a.zip", archives / "b.tar"], "s", "t"))
    return tmp, store, summary, expected, expected_arch, before


def test_every_bad_file_has_its_specific_reason(ingested) -> None:
    _, _, summary, expected, expected_arch, _ = ingested
    got = {
        Path(e["item"].split("!")[-1]).name
        if "!" not in e["item"]
        else e["item"].split("!", 1)[1]: e["reason"]
        for e in summary.errors
    }
    for name, reason in expected.items():
        if reason is not None:
            assert got.get(name) == reason, (name, got.get(name))
    for member, reason in expected_arch.items():
        assert got.get(member) == reason, (member, got.get(member))
    assert all(e["message"] for e in summary.errors)
    bad = [n for n, r in expected.items() if r] + list(expected_arch)
    assert sum(summary.failures.values()) == len(bad)
    assert len(expected) + len(expected_arch) >= 30


def test_good_files_in_the_batch_are_ingested(ingested) -> None:
    tmp, _store, summary, expected, _, _ = ingested
    good = [n for n, r in expected.items() if r is None]
    assert summary.new == len(good)
    raw = RawDB(tmp / "data")
    paths = [r[0] for r in raw.execute("select original_path from provenance")]
    assert any("17_exif_rotated_face" in p for p in paths)
    assert any("\\xff\\xfe" in p for p in paths)  # non-UTF-8 name stored readably
    rot = raw.execute(
        "select count(*) from faces f join provenance p on p.image_sha=f.image_sha"
        " where p.original_path like '%17_exif_rotated%'"
    ).fetchone()[0]
    assert rot == 1  # the face was found after applying the EXIF orientation
    two = raw.execute(
        "select count(*) from faces f join provenance p on p.image_sha=f.image_sha"
        " where p.original_path like '%29_two_faces%'"
    ).fetchone()[0]
    assert two == 2


def test_what_was_there_before_is_unchanged(ingested) -> None:
    tmp, _, _, _, _, before = ingested
    raw = RawDB(tmp / "data")
    ids = [r[0] for r in before]
    now = raw.execute(
        f"select id, image_sha, embedding from faces where id in ({','.join('?' * len(ids))})", ids
    ).fetchall()
    assert now == before


def test_nothing_written_outside_the_data_dir(ingested) -> None:
    tmp, *_ = ingested
    assert not (tmp / "traversal.jpg").exists() and not (tmp.parent / "traversal.jpg").exists()
    top = {p.name for p in tmp.iterdir()}
    assert top == {"corpus", "archives", "data"}


def test_summary_line_counts_failures_by_reason(ingested) -> None:
    _, _, summary, *_ = ingested
    line = summary.line()
    assert "failed (" in line and "unsafe-path 2" in line and "corrupt-image 2" in line


def test_bad_manifest_rows(lfw: Path, tmp_path: Path) -> None:
    shutil.copy(lfw_image(lfw, "Al_Gore", 1), tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_bytes(
        b"\xef\xbb\xbfpath,legal_basis,captured_at\r\n"
        b"a.jpg,consent,2020-01-01\r\n"
        b"a.jpg,consent,2020-01-01\r\n"
        b"missing.jpg,consent,\r\n"
        b"a.jpg,consent,yesterday\r\n"
        b"b.jpg,,\r\n"
    )
    store = Store(tmp_path / "data")
    s = Ingestor(store, PipelineSettings()).run(iter_manifest(tmp_path / "m.csv", "m", None))
    assert s.new == 1
    assert dict(s.failures) == {"duplicate-row": 2, "missing-file": 1, "no-legal-basis": 1}
