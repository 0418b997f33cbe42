"""Who is which subject (#14 item 1): a photo's subject label names its face only when it is
the photo's one face; a group photo's faces, unlabelled faces and photos whose sources
disagree are subjects of one; ``ingest --subject`` labels every photo of an ingest; what a
search reads about subjects follows ingest and erasure.

Real LFW photos ingested into a real SQLite data dir through the core and the CLI."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import lfw_image, side_by_side
from conftest_api import PW
from faceledger.cli import app as cli_app
from faceledger.core import Faceledger
from faceledger.db.schema import faces as faces_table
from faceledger.db.schema import provenance
from faceledger.gallery import subjects
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_manifest, iter_paths
from faceledger.search import fusion

SETTINGS = PipelineSettings(embedder="dlib")
BUSH = "George W Bush"


def _faces_of(fl: Faceledger, original_name: str) -> list[int]:
    """The face ids of the photo ingested from a file of this name."""
    with fl.store.engine.connect() as conn:
        rows = conn.execute(
            faces_table.select()
            .join(provenance, provenance.c.image_sha == faces_table.c.image_sha)
            .where(provenance.c.original_path.like(f"%{original_name}"))
        ).all()
    return sorted({int(r.id) for r in rows})


@pytest.fixture(scope="module")
def fl(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    base = tmp_path_factory.mktemp("subjects")
    core = Faceledger(base / "data")
    root = core.init_admin("root", PW)
    photos = base / "photos"
    photos.mkdir()
    for n in (1, 2, 3):
        shutil.copy(lfw_image(lfw, "George_W_Bush", n), photos)
    shutil.copy(lfw_image(lfw, "Colin_Powell", 1), photos)
    shutil.copy(lfw_image(lfw, "Colin_Powell", 2), photos)
    (photos / "group.jpg").write_bytes(
        side_by_side([lfw_image(lfw, "Al_Gore", 2), lfw_image(lfw, "Adrien_Brody", 2)])
    )
    manifest = photos / "manifest.csv"
    manifest.write_text(
        "path,subject_label\n"
        + "".join(f"George_W_Bush_000{n}.jpg,{BUSH}\n" for n in (1, 2, 3))
        + "group.jpg,Al Gore\nColin_Powell_0001.jpg,\nColin_Powell_0002.jpg,Colin Powell\n"
    )
    core.ingest(root, iter_manifest(manifest, "archive", "test fixture"), SETTINGS)
    # the same photo again from another source, which names someone else
    second = base / "second"
    second.mkdir()
    shutil.copy(lfw_image(lfw, "Colin_Powell", 2), second)
    core.ingest(
        root, iter_paths([second], "press", "test fixture", subject_label="C. Powell"), SETTINGS
    )
    yield core
    core.close()


def test_a_photos_one_face_joins_its_label_and_a_group_photos_faces_stand_alone(
    fl: Faceledger,
) -> None:
    """#14 item 1: the membership rule, group photos and conflicting sources included."""
    bush = [f for n in (1, 2, 3) for f in _faces_of(fl, f"George_W_Bush_000{n}.jpg")]
    group = _faces_of(fl, "group.jpg")
    unlabelled = _faces_of(fl, "Colin_Powell_0001.jpg")
    disputed = _faces_of(fl, "Colin_Powell_0002.jpg")
    # (the detector finds a background face too in one of the group photo's halves)
    assert len(bush) == 3 and len(group) >= 2 and len(unlabelled) == 1 and len(disputed) == 1
    every = bush + group + unlabelled + disputed
    got = subjects.face_subjects(fl.store, every)
    assert {got[f] for f in bush} == {BUSH}
    # the group photo is labelled "Al Gore", but which face is he? each is its own subject
    assert [got[f] for f in group] == group
    assert got[unlabelled[0]] == unlabelled[0]
    # one source says Colin Powell, another C. Powell: the sources disagree
    assert got[disputed[0]] == disputed[0]
    assert subjects.members(fl.store, [BUSH, "Al Gore", "Colin Powell"]) == {
        BUSH: sorted(bush),
        "Al Gore": [],
        "Colin Powell": [],
    }
    # the full pass (duplicates, the subject count) applies the same rule
    m = subjects.membership(fl.store)
    full = {int(f): m.keys[s] for f, s in zip(m.face_ids, m.subject, strict=True)}
    assert full == got
    assert subjects.subject_count(fl.store) == 1 + len(group) + 1 + 1
    assert subjects.subject_name(group[0]) == f"face:{group[0]}"
    assert subjects.parse_subject(f"face:{group[0]}") == group[0]
    assert subjects.parse_subject(f" {BUSH} ") == BUSH


def test_ingest_subject_labels_every_photo_of_the_ingest(
    fl: Faceledger, lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#14 item 1: ``faceledger ingest --subject LABEL`` (and refused when too long)."""
    photos = tmp_path / "aniston"
    photos.mkdir()
    for n in (1, 2):
        shutil.copy(lfw_image(lfw, "Jennifer_Aniston", n), photos)
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    runner = CliRunner()
    common = ["--legal-basis", "test fixture", "--as", "root", "--workers", "1"]
    data = ["--data-dir", str(fl.data_dir), "--embedder", "dlib"]
    r = runner.invoke(cli_app, ["ingest", str(photos), "--subject", "x" * 201, *common, *data])
    assert r.exit_code != 0 and "--subject" in r.output
    r = runner.invoke(
        cli_app, ["ingest", str(photos), "--subject", " Jennifer Aniston ", *common, *data]
    )
    assert r.exit_code == 0, r.output
    with fl.store.engine.connect() as conn:
        labels = conn.execute(
            provenance.select().where(provenance.c.original_path.like("%Jennifer_Aniston%"))
        ).all()
    assert [p.subject_label for p in labels] == ["Jennifer Aniston"] * 2
    ids = [f for n in (1, 2) for f in _faces_of(fl, f"Jennifer_Aniston_000{n}.jpg")]
    assert subjects.members(fl.store, ["Jennifer Aniston"])["Jennifer Aniston"] == sorted(ids)


def _template(fl: Faceledger, label: str) -> np.ndarray:
    ids = subjects.members(fl.store, [label])[label]
    vecs = subjects.vectors_of(fl.store, ids)
    return fusion.templates(np.stack([vecs[f] for f in ids]), fusion.Groups.of([range(len(ids))]))[
        0
    ]


def test_subject_templates_follow_erasure_and_ingest(
    fl: Faceledger, lfw: Path, tmp_path: Path
) -> None:
    """#14 item 1: the templates are built from the database as it is now: a face erased
    leaves its subject's template at once, a photo ingested joins it; the subject count too."""
    root = fl.login("root", PW)
    before = _template(fl, BUSH)
    count = subjects.subject_count(fl.store)
    third = _faces_of(fl, "George_W_Bush_0003.jpg")
    fl.erase(root, face_ids=third, reason="test: erasure request 7")
    assert subjects.members(fl.store, [BUSH])[BUSH] == sorted(
        _faces_of(fl, "George_W_Bush_0001.jpg") + _faces_of(fl, "George_W_Bush_0002.jpg")
    )
    after = _template(fl, BUSH)
    vecs = subjects.vectors_of(fl.store, subjects.members(fl.store, [BUSH])[BUSH])
    two = np.stack(list(vecs.values()))
    expected = two.sum(axis=0) / np.linalg.norm(two.sum(axis=0))
    assert np.allclose(after, expected, atol=1e-6)
    assert not np.allclose(after, before, atol=1e-3)
    assert subjects.subject_count(fl.store) == count  # Bush is still one subject
    photos = tmp_path / "more"
    photos.mkdir()
    shutil.copy(lfw_image(lfw, "George_W_Bush", 4), photos)
    fl.ingest(root, iter_paths([photos], "archive", "test", subject_label=BUSH), SETTINGS)
    assert len(subjects.members(fl.store, [BUSH])[BUSH]) == 3
    assert subjects.subject_count(fl.store) == count
    shutil.copy(lfw_image(lfw, "Colin_Powell", 3), photos)
    (photos / "George_W_Bush_0004.jpg").unlink()
    fl.ingest(root, iter_paths([photos], "archive", "test"), SETTINGS)
    assert subjects.subject_count(fl.store) == count + 1  # an unlabelled face of its own


def test_an_older_database_gains_the_subject_label_index(tmp_path: Path) -> None:
    """#14 item 1: the label lookup a search makes is indexed, also in a database made
    before subjects (the index is added when the store opens it), on SQLite and PostgreSQL."""
    from sqlalchemy import inspect

    from conftest import RawDB
    from faceledger.db.store import Store

    Store(tmp_path / "d").close()
    db = RawDB(tmp_path / "d")
    db.execute("DROP INDEX ix_provenance_subject_label")
    db.commit()
    db.close()
    store = Store(tmp_path / "d")
    try:
        with store.engine.connect() as conn:
            names = {i["name"] for i in inspect(conn).get_indexes("provenance")}
            assert "ix_provenance_subject_label" in names
            if conn.dialect.name == "sqlite":  # and SQLite's planner uses it
                plan = " ".join(
                    str(r)
                    for r in conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN SELECT image_sha FROM provenance "
                        "WHERE subject_label = 'x'"
                    )
                )
                assert "ix_provenance_subject_label" in plan
    finally:
        store.close()
