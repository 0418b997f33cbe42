"""The disclosure export (#13 item 8): what a case's zip holds, that making it is a ledger
entry, and that `faceledger cases verify-export` (offline, no data dir) catches any change:
a byte in any file, a case entry's details edited (also by a forger who redoes the manifest
and the export entry), and a checkpoint that is not the export's entry.

Real LFW photos, a real SQLite data dir, the real core and CLI."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest_api import PW, entries
from conftest_cases import WorkedCase, worked_case
from faceledger.accounts.auth import PermissionDenied
from faceledger.cases import export
from faceledger.cli import app as cli_app
from faceledger.errors import RefusedError
from faceledger.ledger import audit


@pytest.fixture(scope="module")
def wc(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkedCase]:
    case = worked_case(lfw, tmp_path_factory.mktemp("export"), analyzer)
    yield case
    case.fl.close()


@pytest.fixture(scope="module")
def made(wc: WorkedCase) -> tuple[bytes, audit.Entry]:
    """An export of the case made by ivy, its investigator."""
    return wc.fl.case_export(wc.fl.login("ivy", PW), wc.case)


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rezip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def verify_cli(path: Path, *args: str) -> Any:
    """`faceledger cases verify-export` with no data dir at all."""
    return CliRunner().invoke(
        cli_app, ["cases", "verify-export", str(path), *args], env={"FACELEDGER_DATA": "/nowhere"}
    )


def test_the_export_holds_the_whole_case(wc: WorkedCase, made: tuple[bytes, Any]) -> None:
    """#13 item 8: every search (also one with no lead) and verification, every candidate
    shown, the crops still viewable, reviews, approvals, notes, the report as HTML and PDF,
    the case's ledger entries in full and the head, and a manifest of SHA-256s."""
    data, _entry = made
    files = members(data)
    for sid in (wc.lead_search, wc.quiet_search):
        rec = json.loads(files[f"searches/search-{sid}.json"])
        shown = [c["face_id"] for f in rec["shown"]["faces"] for c in f["candidates"]]
        assert set(wc.faces[sid]) <= set(shown)
        for fid in shown:
            assert files[f"searches/search-{sid}/candidate-{fid}.jpg"][:2] == b"\xff\xd8"
    assert f"searches/search-{wc.lead_search}/probe-face-0.jpg" in files  # kept
    about = json.loads(files["case.json"])
    assert about["pictures_left_out"] == {
        f"searches/search-{wc.quiet_search}/probe-face-{i}.jpg": "not kept (retention policy)"
        for i in range(json.loads(files[f"searches/search-{wc.quiet_search}.json"])["faces"])
    }
    assert [v["id"] for v in json.loads(files["verifications.json"])] == [wc.verify_id]
    reviews = json.loads(files["reviews.json"])
    assert {(r["examiner"], r["decision"]) for r in reviews if r["face_id"] == wc.lead_face} >= {
        ("ivy", "possible-lead"),
        ("ivo", "possible-lead"),
    }
    statuses = {
        (c["search_id"], c["face_id"]): c["status"] for c in json.loads(files["candidates.json"])
    }
    assert statuses[(wc.lead_search, wc.lead_face)] == "lead"
    assert statuses[(wc.lead_search, wc.disagreement_face)] == "disagreement"
    approvals = json.loads(files["approvals.json"])
    assert [(a["id"], a["status"]) for a in approvals] == [(wc.request_id, "approved")]
    assert "corroboration" in json.loads(files["notes.json"])[0]["text"]
    assert files["report.pdf"].startswith(b"%PDF-")
    assert b"not identifications" in files["report.html"]

    lines = [json.loads(x) for x in files["ledger/entries.jsonl"].splitlines()]
    assert {"seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash"} == set(
        lines[0]
    )
    actions = {e["action"] for e in lines}
    assert {"search", "verify", "case.request", "case.approve", "candidate.review"} <= actions
    head = json.loads(files["ledger/head.json"])
    assert head["seq"] >= max(e["seq"] for e in lines)
    manifest = json.loads(files["manifest.json"])
    assert set(manifest["files"]) == set(files) - {"manifest.json", "export-entry.json"}
    for name, meta in manifest["files"].items():
        assert meta["sha256"] == hashlib.sha256(files[name]).hexdigest(), name


def test_the_export_is_a_ledger_entry(wc: WorkedCase, made: tuple[bytes, Any]) -> None:
    """#13 item 8: making the export appends `case.export`, whose details hold the
    manifest's SHA-256; that entry is in the zip as export-entry.json, as the ledger has it."""
    data, entry = made
    files = members(data)
    live = next(e for e in entries(wc.fl, "case.export") if e.seq == entry.seq)
    assert live.actor == "ivy" and live.target == wc.case
    assert json.loads(files["export-entry.json"]) == live.__dict__
    assert live.details["manifest_sha256"] == hashlib.sha256(files["manifest.json"]).hexdigest()
    assert wc.fl.audit_verify(wc.fl.login("ada", PW)).ok


def test_a_round_trip_verifies(wc: WorkedCase, made: tuple[bytes, Any], tmp_path: Path) -> None:
    """#13 item 8: the export verifies offline, and with --checkpoint set to its entry as
    the live ledger has it, it is anchored to the chain."""
    data, entry = made
    path = tmp_path / "case.zip"
    path.write_bytes(data)
    r = verify_cli(path)
    assert r.exit_code == 0, r.output
    assert "OK" in r.output and f"--checkpoint {entry.seq}:HASH" in " ".join(r.output.split())
    live = next(e for e in entries(wc.fl, "case.export") if e.seq == entry.seq)
    r = verify_cli(path, "--checkpoint", f"{live.seq}:{live.hash}")
    assert r.exit_code == 0, r.output
    assert "is the ledger's checkpoint" in " ".join(r.output.split())


def test_one_changed_byte_in_any_file_fails_naming_it(
    made: tuple[bytes, Any], tmp_path: Path
) -> None:
    """#13 item 8: changing one byte of any file in the zip (the manifest and the export
    entry too) fails verify-export, with that file named."""
    data, _entry = made
    files = members(data)
    assert len(files) >= 15
    for name, content in files.items():
        changed = bytearray(content)
        i = len(changed) // 2
        changed[i] = (changed[i] + 1) % 256
        path = tmp_path / "changed.zip"
        path.write_bytes(rezip({**files, name: bytes(changed)}))
        r = verify_cli(path)
        assert r.exit_code == 1, (name, r.output)
        assert f"FAIL {name}:" in r.output, (name, r.output)

    # a file added, a file taken out
    path = tmp_path / "more.zip"
    path.write_bytes(rezip({**files, "searches/search-99.json": b"{}"}))
    r = verify_cli(path)
    assert r.exit_code == 1 and "FAIL searches/search-99.json: is not in the manifest" in r.output
    path.write_bytes(rezip({k: v for k, v in files.items() if k != "notes.json"}))
    r = verify_cli(path)
    assert r.exit_code == 1 and "FAIL notes.json: is missing" in r.output


def forge(files: dict[str, bytes], seq: int, rehash_entry: bool) -> dict[str, bytes]:
    """A forger's edit of case entry ``seq``'s details, with the manifest, the export entry's
    manifest hash and the export entry's own hash all redone to match; ``rehash_entry``: the
    case entry's hash redone too."""
    lines = [json.loads(x) for x in files[export.ENTRIES].splitlines()]
    for e in lines:
        if e["seq"] == seq:
            e["details"]["purpose"] = "missing-person"  # a milder purpose, after the fact
            if rehash_entry:
                e["hash"] = audit.entry_hash(
                    e["seq"],
                    e["ts"],
                    e["actor"],
                    e["action"],
                    e["target"],
                    audit.canonical(e["details"]),
                    e["prev_hash"],
                )
    out = dict(files)
    out[export.ENTRIES] = b"".join(
        (json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n").encode() for e in lines
    )
    man = json.loads(files[export.MANIFEST])
    man["files"][export.ENTRIES]["sha256"] = hashlib.sha256(out[export.ENTRIES]).hexdigest()
    out[export.MANIFEST] = export.json_bytes(man)
    ent = json.loads(files[export.EXPORT_ENTRY])
    ent["details"]["manifest_sha256"] = hashlib.sha256(out[export.MANIFEST]).hexdigest()
    ent["hash"] = audit.entry_hash(
        ent["seq"],
        ent["ts"],
        ent["actor"],
        ent["action"],
        ent["target"],
        audit.canonical(ent["details"]),
        ent["prev_hash"],
    )
    out[export.EXPORT_ENTRY] = export.json_bytes(ent)
    return out


def test_an_edited_case_entry_fails(
    wc: WorkedCase, made: tuple[bytes, Any], tmp_path: Path
) -> None:
    """#13 item 8: editing a case entry's details fails: plainly (the manifest), with the
    manifest and the export entry redone (the entry's hash), and with the entry's hash
    redone too (only the ledger's checkpoint of the export entry tells: a wrong checkpoint
    fails)."""
    data, entry = made
    files = members(data)
    search_seq = next(
        e.seq for e in entries(wc.fl, "search") if e.details.get("search_id") == wc.lead_search
    )
    lines = files[export.ENTRIES].decode().splitlines()
    plain = dict(files)
    plain[export.ENTRIES] = (
        "\n".join(
            line.replace('"identity-fraud"', '"missing-person"', 1)
            if json.loads(line)["seq"] == search_seq
            else line
            for line in lines
        ).encode()
        + b"\n"
    )
    path = tmp_path / "edited.zip"
    path.write_bytes(rezip(plain))
    r = verify_cli(path)
    assert r.exit_code == 1 and f"FAIL {export.ENTRIES}: was changed" in r.output

    path.write_bytes(rezip(forge(files, search_seq, rehash_entry=False)))
    check = export.verify(path)
    assert not check.ok
    assert [str(p) for p in check.problems] == [
        f"{export.ENTRIES}: entry {search_seq} (line "
        f"{[json.loads(x)['seq'] for x in lines].index(search_seq) + 1}) was modified: its "
        "hash does not match"
    ]

    # the whole zip redone: self-consistent, but not the export the ledger recorded
    path.write_bytes(rezip(forge(files, search_seq, rehash_entry=True)))
    assert export.verify(path).ok
    live = next(e for e in entries(wc.fl, "case.export") if e.seq == entry.seq)
    r = verify_cli(path, "--checkpoint", f"{live.seq}:{live.hash}")
    assert r.exit_code == 1 and f"FAIL {export.EXPORT_ENTRY}: is entry {entry.seq}:" in r.output


def test_a_wrong_checkpoint_fails(made: tuple[bytes, Any], tmp_path: Path) -> None:
    """#13 item 8: --checkpoint must be the export entry's seq:hash."""
    data, entry = made
    path = tmp_path / "case.zip"
    path.write_bytes(data)
    for wrong in (f"{entry.seq}:{'0' * 64}", f"{entry.seq - 1}:{entry.hash}", "not-a-checkpoint"):
        r = verify_cli(path, "--checkpoint", wrong)
        assert r.exit_code == 1, (wrong, r.output)
        assert "FAIL" in r.output
    r = verify_cli(path, "--checkpoint", f"{entry.seq}:{'0' * 64}", "--json")
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["problems"][0]["file"] == "export-entry.json"


def test_who_may_export_and_the_cli(wc: WorkedCase, tmp_path: Path, monkeypatch: Any) -> None:
    """#13 item 8: the case's investigators, supervisors and auditors may export it (the
    case file's visibility); another unit's investigator sees no such case and an admin may
    not; `faceledger cases export CASE --out case.zip` writes a zip that verifies."""
    fl = wc.fl
    with pytest.raises(RefusedError) as err:
        fl.case_export(fl.login("ian", PW), wc.case)
    assert err.value.code == "no-such-case"
    with pytest.raises(PermissionDenied):
        fl.case_export(fl.login("root", PW), wc.case)
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    for user in ("sam", "ada"):
        out = tmp_path / f"{user}.zip"
        r = CliRunner().invoke(
            cli_app,
            [
                *("cases", "export", wc.case, "--out", str(out)),
                *("--data-dir", str(fl.data_dir), "--as", user),
            ],
        )
        assert r.exit_code == 0, r.output
        e = entries(fl, "case.export", user)[-1]
        assert f"{e.seq}:{e.hash}" in "".join(r.output.split())
        assert export.verify(out, f"{e.seq}:{e.hash}").anchored
