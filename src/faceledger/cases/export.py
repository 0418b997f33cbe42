"""A case's disclosure export: one zip with everything the case file holds, and its offline
check.

What the zip holds (all but the last two are listed in ``manifest.json`` with their SHA-256):

* ``case.json``: the case number, who made the export, when, the ledger head the case was
  read at, and what the zip holds;
* ``searches/search-<id>.json``: every search of the case as its record keeps it (probe
  faces, every candidate shown with score, est. FMR, expected false candidates, provenance),
  those without a candidate or a lead too; ``searches/search-<id>/candidate-<face>.jpg``,
  each candidate's crop while the search's results are viewable; ``.../probe-face-<n>.jpg``,
  the probe face while retention keeps the probe;
* ``verifications.json``, ``reviews.json`` (both examiners' decisions), ``candidates.json``
  (each candidate's review status), ``approvals.json`` (case requests and decisions),
  ``notes.json``;
* ``report.html`` and ``report.pdf``: the lead report of the case;
* ``ledger/entries.jsonl``: the case's ledger entries in full (seq, ts, actor, action,
  target, details, prev_hash, hash), one per line; ``ledger/head.json``: the ledger's head
  (seq, hash) when the case was read;
* ``manifest.json``: each file above with its SHA-256;
* ``export-entry.json``: the ledger entry ``case.export`` that recorded this export, whose
  details hold the manifest's SHA-256, written after it was appended (so not in the
  manifest).

Why not every entry back to the head: the ledger's hash covers each entry's whole content,
so the entries of other cases cannot be put in the zip without disclosing them. The anchor
is the export's own entry instead: :func:`verify` checks every file against the manifest,
the manifest against the export entry, the export entry's hash and each case entry's hash
from its content; an auditor then compares the export entry's ``seq:hash`` with the live
ledger (``--checkpoint``), which fixes the whole zip to the chain.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceledger.ledger import audit

FORMAT = "faceledger-case-export/1"
MANIFEST = "manifest.json"
EXPORT_ENTRY = "export-entry.json"
ENTRIES = "ledger/entries.jsonl"
HEAD = "ledger/head.json"
EXPORT_ACTION = "case.export"
# A zip member larger than this is not read (no real export comes near it).
MAX_MEMBER = 1 << 30


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(doc: Any) -> bytes:
    """A JSON file of the export: indented, keys sorted, UTF-8, newline at the end."""
    return (
        json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    ).encode()


def entry_doc(e: audit.Entry | dict[str, Any]) -> dict[str, Any]:
    """A ledger entry in full, ``details`` as an object (its canonical JSON is what the
    entry's hash covers)."""
    d = dict(e.__dict__) if isinstance(e, audit.Entry) else dict(e)
    return {
        k: d[k] for k in ("seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash")
    }


def entries_jsonl(entries: list[Any]) -> bytes:
    return "".join(
        json.dumps(entry_doc(e), sort_keys=True, ensure_ascii=False) + "\n" for e in entries
    ).encode()


def manifest(files: dict[str, bytes], about: dict[str, Any]) -> bytes:
    """``manifest.json``: ``about`` (case, who, when, head) and each file's SHA-256 and size."""
    return json_bytes(
        {
            "format": FORMAT,
            **about,
            "files": {
                name: {"sha256": sha256(data), "bytes": len(data)}
                for name, data in sorted(files.items())
            },
        }
    )


def write_zip(files: dict[str, bytes], manifest_bytes: bytes, entry: audit.Entry) -> bytes:
    """The zip: the files, the manifest and the export's own ledger entry."""
    buf = io.BytesIO()
    stamp = _zip_time(entry.ts)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [
            *sorted(files.items()),
            (MANIFEST, manifest_bytes),
            (EXPORT_ENTRY, json_bytes(entry_doc(entry))),
        ]:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = (
                zipfile.ZIP_STORED if name.endswith((".jpg", ".pdf")) else zipfile.ZIP_DEFLATED
            )
            zf.writestr(info, data)
    return buf.getvalue()


def _zip_time(ts: str) -> tuple[int, int, int, int, int, int]:
    from datetime import datetime

    t = datetime.fromisoformat(ts)
    return (max(t.year, 1980), t.month, t.day, t.hour, t.minute, t.second)


# -- the offline check ---------------------------------------------------------------------------


@dataclass
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class ExportCheck:
    """What :func:`verify` found. ``ok``: no problem; ``anchored``: a checkpoint was given
    and the export entry is that ledger entry."""

    case_number: str | None = None
    files: int = 0
    entries: int = 0
    export_seq: int | None = None
    export_hash: str | None = None
    anchored: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, file: str, message: str) -> None:
        self.problems.append(Problem(file, message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "case_number": self.case_number,
            "files": self.files,
            "entries": self.entries,
            "export_entry": (
                f"{self.export_seq}:{self.export_hash}" if self.export_seq is not None else None
            ),
            "anchored": self.anchored,
            "problems": [{"file": p.file, "problem": p.message} for p in self.problems],
            "notes": self.notes,
        }


def _entry_hash_of(doc: dict[str, Any]) -> str:
    details = doc["details"]
    if not isinstance(details, str):
        details = audit.canonical(details)
    return audit.entry_hash(
        int(doc["seq"]),
        doc["ts"],
        doc["actor"],
        doc["action"],
        doc["target"],
        details,
        doc["prev_hash"],
    )


def _read_members(zf: zipfile.ZipFile, check: ExportCheck) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for info in zf.infolist():
        name = info.filename
        if info.is_dir():
            continue
        if name in members:
            check.fail(name, "is in the zip twice (a second copy was added)")
            continue
        if info.file_size > MAX_MEMBER:
            check.fail(name, f"is {info.file_size} bytes: larger than any export file")
            continue
        try:
            members[name] = zf.read(info)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:  # CRC mismatch and the like
            check.fail(name, f"cannot be read from the zip ({exc})")
            members[name] = b""
    return members


def _load_json(data: bytes | None, name: str, check: ExportCheck) -> Any:
    if data is None:
        check.fail(name, "is missing")
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        check.fail(name, f"is not valid JSON ({exc})")
        return None


def verify(source: Path | bytes, checkpoint: str | None = None) -> ExportCheck:
    """Check a case export offline (no data dir): (1) every file against the manifest
    (changed, missing or extra files named); (2) the manifest's SHA-256 against the export
    entry's details; (3) the export entry's hash, recomputed; (4) each case entry's hash,
    recomputed from its content and prev_hash (and the links between consecutive ones);
    (5) with ``checkpoint`` (``seq:hash`` read from the live ledger), that it is the export
    entry. Problems name the file at fault."""
    check = ExportCheck()
    name = str(source) if isinstance(source, Path) else "the export"
    try:
        zf = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (zipfile.BadZipFile, OSError) as exc:
        check.fail(name, f"is not a readable zip ({exc})")
        return check
    with zf:
        members = _read_members(zf, check)

    # (1) the files against the manifest
    man = _load_json(members.get(MANIFEST), MANIFEST, check)
    listed: dict[str, Any] = {}
    if isinstance(man, dict) and isinstance(man.get("files"), dict):
        listed = man["files"]
        check.case_number = man.get("case_number")
        if man.get("format") != FORMAT:
            check.fail(MANIFEST, f"format is {man.get('format')!r}, not {FORMAT!r}")
    elif man is not None:
        check.fail(MANIFEST, "has no list of files")
    for fname, meta in sorted(listed.items()):
        want = meta.get("sha256") if isinstance(meta, dict) else None
        if fname not in members:
            check.fail(fname, "is missing (listed in the manifest)")
        elif sha256(members[fname]) != want:
            check.fail(fname, "was changed (its SHA-256 differs from the manifest's)")
        else:
            check.files += 1
    for fname in sorted(set(members) - set(listed) - {MANIFEST, EXPORT_ENTRY}):
        check.fail(fname, "is not in the manifest (added after the export was made)")

    # (2) and (3): the export's own ledger entry
    entry = _load_json(members.get(EXPORT_ENTRY), EXPORT_ENTRY, check)
    export_seq = None
    if isinstance(entry, dict):
        try:
            export_seq = int(entry["seq"])
            check.export_seq, check.export_hash = export_seq, str(entry["hash"])
            if entry["action"] != EXPORT_ACTION:
                check.fail(EXPORT_ENTRY, f"is a {entry['action']!r} entry, not {EXPORT_ACTION!r}")
            details = entry["details"] if isinstance(entry["details"], dict) else {}
            if MANIFEST in members and details.get("manifest_sha256") != sha256(members[MANIFEST]):
                check.fail(
                    MANIFEST,
                    "was changed: its SHA-256 is not the one the export's ledger entry "
                    "(export-entry.json) recorded",
                )
            if check.case_number is not None and details.get("case_number") != check.case_number:
                check.fail(EXPORT_ENTRY, "names another case than the manifest")
            if _entry_hash_of(entry) != entry["hash"]:
                check.fail(
                    EXPORT_ENTRY,
                    f"entry {export_seq} was modified: its hash does not match its content",
                )
        except (KeyError, TypeError, ValueError) as exc:
            check.fail(EXPORT_ENTRY, f"is not a whole ledger entry ({exc})")

    # (4) the case's entries, each hash from its content; consecutive ones linked
    head = _load_json(members.get(HEAD), HEAD, check)
    prev: dict[str, Any] | None = None
    by_seq: dict[int, str] = {}
    for n, line in enumerate(members.get(ENTRIES, b"").decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            seq = int(doc["seq"])
            ok = _entry_hash_of(doc) == doc["hash"]
        except (KeyError, TypeError, ValueError) as exc:
            check.fail(ENTRIES, f"line {n} is not a whole ledger entry ({exc})")
            continue
        check.entries += 1
        if not ok:
            check.fail(ENTRIES, f"entry {seq} (line {n}) was modified: its hash does not match")
        if prev is not None and seq <= int(prev["seq"]):
            check.fail(ENTRIES, f"entry {seq} (line {n}) is out of order")
        if prev is not None and seq == int(prev["seq"]) + 1 and doc["prev_hash"] != prev["hash"]:
            check.fail(ENTRIES, f"entry {seq} does not follow entry {prev['seq']}")
        if export_seq is not None and seq >= export_seq:
            check.fail(ENTRIES, f"entry {seq} comes after the export's own entry {export_seq}")
        by_seq[seq] = doc["hash"]
        prev = doc
    if ENTRIES not in members:
        check.fail(ENTRIES, "is missing")
    if isinstance(head, dict):
        try:
            hseq, hhash = int(head["seq"]), str(head["hash"])
            if hseq in by_seq and by_seq[hseq] != hhash:
                check.fail(HEAD, f"names entry {hseq} with another hash than the entries")
            if by_seq and max(by_seq) > hseq:
                check.fail(HEAD, f"the entries go past the head (entry {max(by_seq)})")
            if export_seq is not None and hseq >= export_seq:
                check.fail(HEAD, f"the head {hseq} is not before the export entry {export_seq}")
        except (KeyError, TypeError, ValueError) as exc:
            check.fail(HEAD, f"is not seq and hash ({exc})")

    # (5) the anchor
    if checkpoint is not None:
        cp = audit.parse_checkpoint(checkpoint)
        if cp is None:
            check.fail("--checkpoint", f"{checkpoint!r} is not seq:hash")
        elif check.export_seq is None:
            check.fail(EXPORT_ENTRY, "no export entry to compare the checkpoint with")
        elif cp != (check.export_seq, check.export_hash):
            check.fail(
                EXPORT_ENTRY,
                f"is entry {check.export_seq}:{check.export_hash}, but the ledger's "
                f"checkpoint is {cp[0]}:{cp[1]}: this is not the export the ledger recorded",
            )
        else:
            check.anchored = True
    elif check.export_seq is not None:
        check.notes.append(
            "the export is self-consistent; to anchor it to the ledger, read entry "
            f"{check.export_seq}'s hash from the live ledger (faceledger audit entries "
            f"--action case.export, or an auditor's checkpoint) and run again with "
            f"--checkpoint {check.export_seq}:HASH"
        )
    return check
