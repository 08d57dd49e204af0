"""The SQLite index's writer: one connection kept between groups, WAL checkpoints in the background."""

from __future__ import annotations

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
def test_the_wal_stays_bounded_by_background_checkpoints(tmp_path, monkeypatch, checkpoints):
    """One-instance groups, as one association sends them: with the background checkpoint
    the WAL is reused; without it (the control) it grows with every group."""
    if not checkpoints:
        monkeypatch.setattr(index_module, "_CHECKPOINT_EVERY", 10**9)
    db = tmp_path / "index.sqlite"
    index = ArchiveIndex(f"sqlite:///{db}")
    index.migrate()
    try:
        biggest = 0
        for record in _records(GROUPS):
            assert index.store([record], "reject")[0].outcome is Outcome.STORED
            if index._checkpointing is not None:
                index._checkpointing.result(30)  # the checkpoint ran, and raised nothing
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


def test_a_failed_group_leaves_the_writer_usable(tmp_path):
    index = ArchiveIndex(f"sqlite:///{tmp_path / 'index.sqlite'}")
    index.migrate()
    try:
        first, second = _records(2)

        def fail() -> None:
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError):
            index.store([first], "reject", before_commit=fail)
        assert index.instance(first.sop_instance_uid) is None  # rolled back
        assert [o.outcome for o in index.store([first, second], "reject")] == [Outcome.STORED] * 2
        assert index.instance(first.sop_instance_uid) is not None
    finally:
        index.dispose()
