"""The SQLite index's writer: one connection kept between groups, WAL checkpoints between groups."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pacsnode.archive import index as index_module
from pacsnode.archive.index import ArchiveIndex, Outcome
from pacsnode.archive.records import instance_record
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN
from peerkit import make_instance, new_uid

GROUPS = 1_500


def _records(count: int) -> list:
    study, series = new_uid(), new_uid()
    out = []
    for _ in range(count):
        ds = make_instance(study=study, series=series, size=8)
        out.append(
            instance_record(
                ds,
                transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
                path=f"objects/x/{ds.SOPInstanceUID}.dcm",
                size=1,
                sha256="0" * 64,
                source_ae_title="TEST",
                received_at=datetime.now(UTC),
            )
        )
    return out


def _wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.mark.parametrize("checkpoints", [True, False])
def test_the_wal_stays_bounded_under_sustained_writes(tmp_path, monkeypatch, checkpoints):
    """One-instance groups back to back, as one busy association sends them: with the writer's
    own checkpoints the WAL is reused; without them (the control) it grows with every group.
    (Checkpoints from a background thread passed this test only when it waited for each one;
    under real load they never caught up with the writer and the WAL grew without end.)"""
    if not checkpoints:
        monkeypatch.setattr(index_module, "_CHECKPOINT_EVERY", 10**9)
    db = tmp_path / "index.sqlite"
    index = ArchiveIndex(f"sqlite:///{db}")
    index.migrate()
    try:
        biggest = 0
        for record in _records(GROUPS):
            assert index.store([record], "reject")[0].outcome is Outcome.STORED
            biggest = max(biggest, _wal_size(db))
        with index.engine.connect() as conn:
            instances = conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one()
        assert instances == GROUPS
        print(f"largest WAL: {biggest / 2**20:.1f} MiB")
        # ~8 pages of 4 KiB per group: 1,500 groups make ~48 MB of WAL without checkpoints.
        if checkpoints:
            assert biggest < 12 << 20, biggest
        else:
            assert biggest > 24 << 20, biggest
    finally:
        index.dispose()


def test_a_failed_group_leaves_the_writer_usable(tmp_path, index_url):
    index = ArchiveIndex(index_url or f"sqlite:///{tmp_path / 'index.sqlite'}")
    index.migrate()
    try:
        first, second, third, fourth = _records(4)

        def fail() -> None:
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError):
            index.store([first], "reject", before_commit=fail)
        assert index.instance(first.sop_instance_uid) is None  # rolled back
        # A statement refused by the database (two rows claim one file): on PostgreSQL the
        # error comes back with the COMMIT's round trip, and the whole group is undone.
        clash = dataclasses.replace(fourth, path=third.path)
        with pytest.raises(Exception, match=r"(?i)unique"):
            index.store([third, clash], "reject")
        assert index.instance(third.sop_instance_uid) is None
        assert [o.outcome for o in index.store([first, second], "reject")] == [Outcome.STORED] * 2
        assert index.instance(first.sop_instance_uid) is not None
        assert index.instance(second.sop_instance_uid)["path"] == second.path
    finally:
        index.dispose()


def test_postgresql_duplicate_check_is_planned_with_its_values(index_url):
    """psycopg prepares a statement from its fifth run, and PostgreSQL may then keep a plan made
    while the index was empty: for the duplicate check that is a scan of the whole table (a
    fresh index filled in groups of 40 fell from 600 to 236 instances/s by 60k). So that check
    is never prepared, while the writes are (their generic plans use the primary keys)."""
    if not index_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    index = ArchiveIndex(index_url)
    index.migrate()
    try:
        for _ in range(8):
            outcomes = index.store(_records(4), "reject")
            assert [o.outcome for o in outcomes] == [Outcome.STORED] * 4
        writer = index._writer
        assert writer is not None
        with writer.begin():
            prepared = writer.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
            mode = writer.exec_driver_sql("SHOW plan_cache_mode").scalar_one()
        assert any('INSERT INTO "instances"' in s for s in prepared), prepared
        assert not any('FROM "instances" WHERE "sop_instance_uid" IN' in s for s in prepared), prepared
        assert mode == "auto"
    finally:
        index.dispose()


def test_open_transactions_are_counted_across_engines_of_one_database(tmp_path):
    """What the event loop asks before committing inline: does any thread hold a transaction
    on this SQLite file (the index's engine, the audit trail's, another index object's)?"""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    index, other = ArchiveIndex(url), ArchiveIndex(url)
    index.migrate()
    try:
        assert index_module.open_transactions(index.engine) == 0
        with other.engine.begin() as conn:
            conn.exec_driver_sql("SELECT 1")
            assert index_module.open_transactions(index.engine) == 1
        assert index_module.open_transactions(index.engine) == 0
        with pytest.raises(RuntimeError), other.engine.connect() as conn, conn.begin():
            assert index_module.open_transactions(index.engine) == 1
            raise RuntimeError("rolled back")
        assert index_module.open_transactions(index.engine) == 0
        index.store(_records(1), "reject")
        assert index_module.open_transactions(index.engine) == 0
        # Another database's transactions do not count.
        elsewhere = ArchiveIndex(f"sqlite:///{tmp_path / 'other.sqlite'}")
        try:
            with elsewhere.engine.begin() as conn:
                conn.exec_driver_sql("SELECT 1")
                assert index_module.open_transactions(index.engine) == 0
        finally:
            elsewhere.dispose()
    finally:
        other.dispose()
        index.dispose()
