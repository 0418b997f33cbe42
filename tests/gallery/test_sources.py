from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from faceledger.gallery.sources import ItemError, SourceError, iter_manifest, iter_paths

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


def _names(items) -> list[str]:
    return [Path(i.name.split("!")[-1]).name for i in items]


def test_folder_is_recursive_sorted_and_lazy(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for p in ["b/2.jpg", "a/deep/1.png", "a/0.JPG", "notes.txt"]:
        (tmp_path / p).write_bytes(b"x")
    items = iter_paths([tmp_path], "s", "consent")
    assert not isinstance(items, list)
    got = list(items)
    assert _names(got) == ["0.JPG", "1.png", "2.jpg"]
    assert all(i.provenance.legal_basis == "consent" for i in got)


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        list(iter_paths([tmp_path / "nope"], "s", "x"))


def test_zip_read_in_place_and_traversal_refused(tmp_path: Path) -> None:
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok/face.jpg", b"jpegbytes")
        zf.writestr("../../evil.jpg", b"x")
        zf.writestr("/abs.jpg", b"x")
    items = list(iter_paths([z], "s", "x"))
    assert len(items) == 3
    assert items[0].read() == b"jpegbytes"
    for bad in items[1:]:
        assert bad.error is not None and bad.error.reason == "unsafe-path"
        with pytest.raises(ItemError):
            bad.read()
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_tar_refuses_links_and_devices(tmp_path: Path) -> None:
    t = tmp_path / "a.tar"
    with tarfile.open(t, "w") as tf:
        data = b"img"
        info = tarfile.TarInfo("p/one.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("p/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
        dev = tarfile.TarInfo("p/dev.jpg")
        dev.type = tarfile.CHRTYPE
        tf.addfile(dev)
    items = list(iter_paths([t], "s", "x"))
    assert items[0].read() == b"img"
    assert [i.error.reason for i in items[1:]] == ["link-in-archive", "special-file"]


def test_csv_manifest_with_bom_crlf_and_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"a")
    (tmp_path / "img" / "b.jpg").write_bytes(b"b")
    text = (
        "\ufeffpath,source_url,captured_at,legal_basis,subject_label\r\n"
        "img/a.jpg,https://example.org/a,2021-03-04,court-order-17,Alice\r\n"
        "img/b.jpg,,not-a-date,consent,\r\n"
        "img/a.jpg,,,consent,\r\n"
        "../outside.jpg,,,consent,\r\n"
        "img/missing.jpg,,,,\r\n"
    )
    m = tmp_path / "manifest.csv"
    m.write_bytes(text.encode("utf-8"))
    items = list(iter_manifest(m, "archive-7", None))
    first = items[0]
    assert first.provenance.source_url == "https://example.org/a"
    assert first.provenance.captured_at == "2021-03-04"
    assert first.provenance.subject_label == "Alice"
    assert first.provenance.legal_basis == "court-order-17"
    assert first.read() == b"a"
    reasons = [i.error.reason if i.error else None for i in items[1:]]
    assert reasons == ["bad-manifest-row", "duplicate-row", "unsafe-path", "no-legal-basis"]


def test_jsonl_manifest(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"path": "a.jpg", "legal_basis": "consent"}) + "\n[1]\n")
    items = list(iter_manifest(m, "s", None))
    assert items[0].read() == b"a"
    assert items[1].error.reason == "bad-manifest-row"


def test_manifest_needs_path_column(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("file,legal_basis\na.jpg,x\n")
    with pytest.raises(SourceError, match="path"):
        list(iter_manifest(m, "s", None))


def test_links_may_not_lead_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    root = tmp_path / "photos"
    root.mkdir()
    (root / "inside.jpg").write_bytes(b"ok")
    (root / "alias.jpg").symlink_to(root / "inside.jpg")
    (root / "escape.jpg").symlink_to(outside)
    (root / "loop").symlink_to(root)  # a directory link loop is not followed
    items = {Path(i.name).name: i for i in iter_paths([root], "s", "x")}
    assert set(items) == {"alias.jpg", "escape.jpg", "inside.jpg"}
    assert items["alias.jpg"].read() == b"ok"
    assert items["escape.jpg"].error.reason == "link-outside-source"
    with pytest.raises(ItemError):
        items["escape.jpg"].read()
