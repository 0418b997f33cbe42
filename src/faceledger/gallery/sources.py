"""Where photos come from: files, folders, zip/tar archives and manifests.

Every source yields :class:`SourceItem` objects lazily (a folder of a million files is
streamed, never listed whole), each carrying the provenance faceledger records for the
image. Archives are read in place; members with absolute paths, ``..`` components, links
or device entries are refused, and members are size-capped to defuse zip bombs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from faceledger.errors import RefusedError
from faceledger.types import Provenance

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Photo formats faceledger does not decode; listed so they are reported, not passed over.
UNSUPPORTED_EXTENSIONS = {".heic", ".heif", ".avif", ".jp2", ".jxl", ".cr2", ".nef", ".dng"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_FILE_BYTES = 100 * 1024 * 1024  # one image file, compressed


class SourceError(Exception):
    """A source that cannot be read at all (as opposed to one bad file inside it)."""


class ItemError(Exception):
    """One item of a source that cannot be read; ``reason`` is a stable key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SourceItem:
    """One photo to ingest; ``read()`` returns its bytes or raises :class:`ItemError`."""

    name: str
    read: Callable[[], bytes]
    provenance: Provenance
    error: ItemError | None = field(default=None)


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    ext = os.path.splitext(name)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in UNSUPPORTED_EXTENSIONS


def display_name(path: Path | str) -> str:
    """A printable, storable name for a path whose bytes may not be valid UTF-8."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _file_reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            if path.is_dir():
                raise ItemError("is-a-directory", "is a directory, not an image file")
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ItemError("file-too-large", f"file is {size} bytes (limit {MAX_FILE_BYTES})")
            return path.read_bytes()
        except PermissionError as exc:
            raise ItemError("unreadable", f"permission denied: {exc.strerror}") from exc
        except FileNotFoundError as exc:
            raise ItemError("missing-file", "file does not exist") from exc
        except OSError as exc:
            raise ItemError("unreadable", f"cannot read: {exc.strerror or exc}") from exc

    return read


def _walk_folder(root: Path) -> Iterator[Path]:
    """Image files under ``root``, sorted, streaming; symlinked directories are not followed."""
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        dirs = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if _is_image_name(entry.name):
                        yield Path(entry.path)  # reported as "is a directory"
                    dirs.append(Path(entry.path))
                elif _is_image_name(entry.name):
                    yield Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(dirs))


def _safe_member_name(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        return None
    return str(p)


def _capped_reader(open_member: Callable[[], IO[bytes] | None]) -> Callable[[], bytes]:
    def read() -> bytes:
        fh = open_member()
        if fh is None:
            raise ItemError("unreadable", "archive member has no data")
        with fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ItemError("file-too-large", f"archive member expands past {MAX_FILE_BYTES} bytes")
        return data

    return read


def _iter_zip(path: Path, prov: Provenance) -> Iterator[SourceItem]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path}: not a readable zip archive ({exc})") from exc
    # The archive stays open as long as any item's reader refers to it (closed when collected),
    # so items may be read after the iteration has moved on.
    for info in zf.infolist():
        if info.is_dir() or not _is_image_name(info.filename):
            continue
        name = f"{path}!{info.filename}"
        safe = _safe_member_name(info.filename)
        mode = (info.external_attr >> 16) & 0o170000
        item_prov = replace(prov, original_path=name)
        if safe is None:
            yield _failed(name, item_prov, "unsafe-path", "archive path escapes the archive")
        elif mode == 0o120000:
            yield _failed(name, item_prov, "link-in-archive", "symbolic links are refused")
        else:
            yield SourceItem(
                name,
                _capped_reader(partial(zf.open, info)),
                item_prov,
            )


def _iter_tar(path: Path, prov: Provenance) -> Iterator[SourceItem]:
    try:
        tf = tarfile.open(path)  # noqa: SIM115 - kept open while item readers refer to it
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"{path}: not a readable tar archive ({exc})") from exc
    for member in tf.getmembers():
        if member.isdir() or not _is_image_name(member.name):
            continue
        name = f"{path}!{member.name}"
        item_prov = replace(prov, original_path=name)
        if _safe_member_name(member.name) is None:
            yield _failed(name, item_prov, "unsafe-path", "archive path escapes the archive")
        elif member.issym() or member.islnk():
            yield _failed(name, item_prov, "link-in-archive", "links are refused")
        elif not member.isfile():
            yield _failed(name, item_prov, "special-file", "device or special file refused")
        else:
            yield SourceItem(
                name,
                _capped_reader(partial(tf.extractfile, member)),
                item_prov,
            )


def _failed(name: str, prov: Provenance, reason: str, message: str) -> SourceItem:
    err = ItemError(reason, message)

    def read() -> bytes:
        raise err

    return SourceItem(name, read, prov, error=err)


def iter_paths(
    paths: list[Path], source: str, legal_basis: str, **extra: str | None
) -> Iterator[SourceItem]:
    """Files, folders (recursive) and archives, in the order given."""
    for raw in paths:
        path = Path(raw)
        base = Provenance(
            source=source, legal_basis=legal_basis, original_path=display_name(path), **extra
        )
        if not path.exists() and not path.is_symlink():
            raise SourceError(f"{path}: no such file or directory")
        if path.is_dir():
            root = path.resolve()
            for f in _walk_folder(path):
                prov = replace(base, original_path=display_name(f))
                # A link inside a folder may not lead out of it: faceledger reads only the
                # paths it was given.
                try:
                    outside = f.is_symlink() and not f.resolve().is_relative_to(root)
                except (RuntimeError, OSError):  # a link loop: reading it reports the reason
                    outside = False
                if outside:
                    yield _failed(
                        str(f),
                        prov,
                        "link-outside-source",
                        "symbolic link points outside the folder being ingested",
                    )
                else:
                    yield SourceItem(str(f), _file_reader(f), prov)
        elif _is_archive(path):
            yield from (_iter_zip if path.name.lower().endswith(".zip") else _iter_tar)(path, base)
        else:
            yield SourceItem(str(path), _file_reader(path), base)


MANIFEST_COLUMNS = {
    "path",
    "source_url",
    "captured_at",
    "legal_basis",
    "subject_label",
    "subject",
    "expires_at",
}


def parse_when(value: str | None, column: str) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError as exc:
        raise ItemError("bad-manifest-row", f"{column} {text!r} is not an ISO 8601 date") from exc


MAX_SOURCE = 200  # characters of a source name
MIN_LEGAL_BASIS = 3  # characters: "ok" or "x" says nothing about why the photos are held


def check_provenance(
    source: str,
    legal_basis: str | None,
    expires_at: str | None,
    basis_required: bool = True,
    fields: tuple[str, str, str] = ("source", "legal_basis", "expires_at"),
) -> tuple[str, str | None, str | None]:
    """The provenance an ingest gives for all its photos, checked before any is read:
    (source, legal basis, expiry as ISO 8601), stripped. Refused (``missing-source``,
    ``missing-legal-basis``, ``bad-date``) when the source is blank or too long, the legal
    basis is missing (``basis_required``: manifests may give one per row instead) or too
    short, or the expiry is not a date. ``fields``: what the interface calls the three, for
    the messages."""
    source_field, basis_field, expiry_field = fields
    source = source.strip()
    if not source or len(source) > MAX_SOURCE:
        raise RefusedError(
            "missing-source",
            f"name the source of these photos ({source_field}; at most {MAX_SOURCE} characters)",
        )
    basis = (legal_basis or "").strip() or None
    if (basis_required or basis is not None) and len(basis or "") < MIN_LEGAL_BASIS:
        raise RefusedError(
            "missing-legal-basis",
            f"{basis_field} is required: record why you may hold these photos "
            f"(at least {MIN_LEGAL_BASIS} characters)",
        )
    try:
        expiry = parse_when(expires_at, expiry_field)
    except ItemError as exc:
        raise RefusedError("bad-date", str(exc)) from exc
    return source, basis, expiry


def _manifest_rows(manifest: Path) -> Iterator[tuple[int, dict[str, str]]]:
    suffix = manifest.suffix.lower()
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{manifest}: cannot read manifest ({exc})") from exc
    if suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, {"__error__": f"line is not JSON: {exc.msg}"}
                continue
            if not isinstance(row, dict):
                yield n, {"__error__": "line is not a JSON object"}
                continue
            yield n, {str(k): ("" if v is None else str(v)) for k, v in row.items()}
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or "path" not in [f.strip() for f in reader.fieldnames]:
            raise SourceError(f"{manifest}: CSV manifest needs a 'path' column")
        for n, row in enumerate(reader, start=2):
            yield n, {(k or "").strip(): (v or "").strip() for k, v in row.items()}
    else:
        raise SourceError(f"{manifest}: manifest must be .csv or .jsonl")


def iter_manifest(
    manifest: Path,
    source: str,
    default_legal_basis: str | None,
    default_subject: str | None = None,
) -> Iterator[SourceItem]:
    """Rows of a CSV/JSONL manifest; paths are relative to the manifest and may not leave it.
    A row's ``subject_label`` (or ``subject``) names the person it shows, else
    ``default_subject`` (``ingest --subject``)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise SourceError(f"{manifest}: manifest not found")
    root = manifest.resolve().parent
    seen: set[str] = set()
    for line_no, row in _manifest_rows(manifest):
        where = f"{manifest}:{line_no}"
        rel = row.get("path", "").strip()
        prov = Provenance(source=source, legal_basis="", original_path=rel or where)
        if "__error__" in row:
            yield _failed(where, prov, "bad-manifest-row", row["__error__"])
            continue
        if not rel:
            yield _failed(where, prov, "bad-manifest-row", "row has no path")
            continue
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            yield _failed(where, prov, "unsafe-path", f"path {rel!r} leaves the manifest's folder")
            continue
        if str(target) in seen:
            yield _failed(where, prov, "duplicate-row", f"path {rel!r} already listed")
            continue
        seen.add(str(target))
        legal = row.get("legal_basis", "").strip() or (default_legal_basis or "")
        if not legal:
            yield _failed(where, prov, "no-legal-basis", "row has no legal_basis and none given")
            continue
        try:
            prov = Provenance(
                source=source,
                legal_basis=legal,
                original_path=display_name(target),
                source_url=row.get("source_url") or None,
                captured_at=parse_when(row.get("captured_at"), "captured_at"),
                subject_label=(row.get("subject_label") or row.get("subject") or "").strip()
                or default_subject,
                expires_at=parse_when(row.get("expires_at"), "expires_at"),
            )
        except ItemError as exc:
            yield _failed(where, prov, exc.reason, str(exc))
            continue
        yield SourceItem(f"{where} {rel}", _file_reader(target), prov)
