"""Fetch public evaluation datasets, with checksums.

``faceledger datasets fetch lfw --dest DIR`` downloads LFW (deep-funneled images and the
View-1/View-2 pair lists) from the University of Massachusetts' official site, checks each
file against the official MD5 (as also listed by torchvision's LFW dataset class), and
unpacks the archive safely. LFW is for evaluation only.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

LFW_BASE_URL = "http://vis-www.cs.umass.edu/lfw/"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    md5: str
    archive: bool = False


LFW_FILES = [
    RemoteFile("lfw-deepfunneled.tgz", "68331da3eb755a505a502b5aacb3c201", archive=True),
    RemoteFile("pairs.txt", "9f1ba174e4e1c508ff7cdf10ac338a7d"),
    RemoteFile("pairsDevTrain.txt", "4f27cbf15b2da4a85c1907eb4181ad21"),
    RemoteFile("pairsDevTest.txt", "5132f7440eb68cf58910c8a45a2ac10b"),
    RemoteFile("lfw-names.txt", "a6d0a479bd074669f656265a6e693f6d"),
]


class ChecksumError(Exception):
    pass


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected_md5: str) -> None:
    got = md5_file(path)
    if got != expected_md5:
        raise ChecksumError(f"{path.name}: MD5 {got} does not match the official {expected_md5}")


def safe_extract_tgz(archive: Path, dest: Path, strip_top: str | None = None) -> int:
    """Extract regular files only, refusing absolute paths, ``..`` and links; count files."""
    dest = dest.resolve()
    n = 0
    with tarfile.open(archive) as tf:
        for m in tf:
            parts = PurePosixPath(m.name).parts
            if PurePosixPath(m.name).is_absolute() or ".." in parts:
                raise ValueError(f"{archive.name}: unsafe member path {m.name!r}")
            if not m.isfile():
                continue
            if strip_top and parts and parts[0] == strip_top:
                parts = parts[1:]
            if not parts:
                continue
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(dest):
                raise ValueError(f"{archive.name}: unsafe member path {m.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    return n


def download(url: str, dest: Path, progress: Callable[[int, int], None] | None = None) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    tmp.replace(dest)


def fetch_lfw(
    dest: Path,
    base_url: str = LFW_BASE_URL,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Download, verify and unpack LFW into ``dest`` (layout ``dest/<Name>/<Name>_NNNN.jpg``)."""
    dest.mkdir(parents=True, exist_ok=True)
    downloads = dest / ".downloads"
    downloads.mkdir(exist_ok=True)
    for f in LFW_FILES:
        local = downloads / f.name
        if not (local.is_file() and md5_file(local) == f.md5):
            download(
                base_url + f.name,
                local,
                None if progress is None else partial(progress, f.name),
            )
        verify(local, f.md5)
        if f.archive:
            safe_extract_tgz(local, dest, strip_top="lfw-deepfunneled")
        else:
            shutil.copyfile(local, dest / f.name)
    return dest
