"""Alembic migrations of the index: an archive of an older schema is brought to the newest one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.matching import name_keys
from pacsnode.archive.schema import patient_name_keys, patients, studies


@pytest.fixture
def index(tmp_path: Path, index_url: str) -> Iterator[ArchiveIndex]:
    idx = ArchiveIndex(index_url or f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield idx
    idx.dispose()


def _upgrade(index: ArchiveIndex, revision: str) -> None:
    index.migrate(revision)


def test_a_0_1_archive_gets_its_name_keys(index: ArchiveIndex) -> None:
    # An index of pacsnode 0.1 (revision 0001): patients without name keys.
    _upgrade(index, "0001")
    names = ["Yamada^Tarou=山田^太郎=やまだ^たろう", "Müller^Jürgen", ""]
    with index.engine.begin() as conn:
        for i, name in enumerate(names):
            conn.execute(
                insert(patients).values(patient_id=f"P{i}", issuer_of_patient_id="", patient_name=name)
            )
        conn.execute(
            insert(studies).values(patient_fk=1, study_instance_uid="1.2.3", updated_at=datetime.now(UTC))
        )
    index.migrate()  # to the newest revision, as Archive.open() does
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(patients.c.patient_name, patient_name_keys.c.name_key).join(
                patient_name_keys, patient_name_keys.c.patient_fk == patients.c.id
            )
        ).all()
        assert conn.execute(select(studies.c.study_instance_uid)).scalar_one() == "1.2.3"
    keys: dict[str, set[str]] = {}
    for name, key in rows:
        keys.setdefault(name, set()).add(key)
    assert keys == {name: name_keys(name) for name in names if name}
    assert keys["Müller^Jürgen"] == {"MULLER^JURGEN"}
    index.migrate()  # a second run changes nothing
    with index.engine.connect() as conn:
        assert len(conn.execute(select(patient_name_keys)).all()) == len(rows)


def test_patients_without_an_id_are_no_longer_merged_after_0003(index: ArchiveIndex) -> None:
    # Up to 0002, (patient_id, issuer) was unique, so studies without a Patient ID shared one
    # patient record (and its name). 0003 keeps the rows and ids, and lets new ones split.
    _upgrade(index, "0002")
    now = datetime.now(UTC)
    with index.engine.begin() as conn:
        conn.execute(
            insert(patients).values(patient_id="", issuer_of_patient_id="", patient_name="First^Seen")
        )
        conn.execute(insert(patients).values(patient_id="P1", issuer_of_patient_id="", patient_name="Known"))
        conn.execute(insert(studies).values(patient_fk=1, study_instance_uid="1.1", updated_at=now))
        conn.execute(insert(studies).values(patient_fk=2, study_instance_uid="1.2", updated_at=now))
    index.migrate()
    with index.engine.begin() as conn:
        rows = conn.execute(select(studies.c.study_instance_uid, studies.c.patient_fk)).all()
        assert sorted(rows) == [("1.1", 1), ("1.2", 2)]  # foreign keys intact, ids kept
        conn.execute(insert(patients).values(patient_id="", issuer_of_patient_id="", patient_name="Other"))
        with pytest.raises(IntegrityError), conn.begin_nested():  # an ID still names one patient
            conn.execute(insert(patients).values(patient_id="P1", issuer_of_patient_id="", patient_name="X"))
    with index.engine.connect() as conn:
        assert conn.execute(select(patients.c.id).where(patients.c.patient_id == "")).all() == [(1,), (3,)]


def test_an_index_of_0006_gets_an_empty_audit_trail(index: ArchiveIndex) -> None:
    # 0007: audit_messages (PS3.15 A.5), the trail's queue and search index; nothing else changes.
    from pacsnode.archive.schema import audit_messages

    _upgrade(index, "0006")
    index.migrate()
    with index.engine.connect() as conn:
        assert conn.execute(select(audit_messages)).all() == []
    assert _version(index) == "0008"


def test_an_index_of_0007_is_claimed_by_the_next_archive_that_opens_it(
    tmp_path: Path, index: ArchiveIndex
) -> None:
    # 0008: archive_owner (archive/ownership.py), empty after the upgrade; an archive of pacsnode
    # before it knew no owner, so the first archive that opens the upgraded index claims it.
    from pacsnode.archive.ownership import claim, read_folder_id

    _upgrade(index, "0007")
    index.migrate()
    assert _version(index) == "0008"
    assert index.owner() is None
    own = claim(index, tmp_path)
    assert own == read_folder_id(tmp_path)
    assert index.owner() == (own, str(tmp_path.resolve()))


def _version(index: ArchiveIndex) -> str:
    with index.engine.connect() as conn:
        return str(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one())
