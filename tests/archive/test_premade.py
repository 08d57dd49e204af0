"""FileStore's pre-made object files: names made durable ahead of use (DESIGN.md durability
contract), so that storing an instance costs its data sync only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pacsnode.archive import blobs
from pacsnode.archive.blobs import FileStore
from pacsnode.archive.ingest import Archive
from pacsnode.archive.records import instance_record
from pacsnode.config.settings import load_settings
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN
from peerkit import make_instance, premade_files

NOW = datetime(2026, 11, 26, 17, 30, tzinfo=UTC)


@pytest.fixture
def synced(monkeypatch) -> list[tuple[str, bool]]:
    """Every path FileStore syncs, in order, with whether it was a data-only sync."""
    calls: list[tuple[str, bool]] = []
    real = blobs.fsync_path

    def record(path: Path, *, data_only: bool = False) -> None:
        calls.append((str(path), data_only))
        real(path, data_only=data_only)

    monkeypatch.setattr(blobs, "fsync_path", record)
    return calls


def _filled(store: FileStore, when: datetime = NOW) -> str:
    """Ask for a pre-made path and wait for the refill the first request starts; return one."""
    store.refilled.clear()
    first = store.object_path(when, premade=True)
    assert store.refilled.wait(10), "the pool was not refilled"
    store.give_back(first)  # a fresh name, not pre-made: give_back leaves it alone
    return store.object_path(when, premade=True)


def test_a_premade_file_has_a_durable_name_before_it_is_handed_out(tmp_path, synced):
    store = FileStore(tmp_path)
    store.start_pool()
    try:
        relative = _filled(store)
        target = tmp_path / relative
        assert relative.startswith("objects/20261126/17/") and target.is_file()
        assert target.stat().st_size == 0
        hour_dir = str(target.parent)
        # The hour folder, new, and its parents were synced by the refill, before any use.
        assert (hour_dir, False) in synced
        assert (str(target.parent.parent), False) in synced
        synced.clear()
        store.write_object(relative, b"DICM data")
        store.place([], [relative])
        # Only the file's data: its name is durable already.
        assert synced == [(str(target), True)]
        assert target.read_bytes() == b"DICM data"
    finally:
        store.stop_pool()


def test_a_fresh_path_still_syncs_its_folder(tmp_path, synced):
    store = FileStore(tmp_path)  # no pool started: every path is fresh
    relative = store.object_path(NOW, premade=True)
    store.write_object(relative, b"x")
    store.place([], [relative])
    target = tmp_path / relative
    assert (str(target), True) in synced and (str(target.parent), False) in synced


def test_given_back_unused_and_stale_files_do_not_stay(tmp_path):
    store = FileStore(tmp_path)
    store.start_pool()
    try:
        relative = _filled(store)
        store.give_back(relative)  # refused instance: the name returns to the pool
        assert store.object_path(NOW, premade=True) == relative
        store.give_back(relative)
        assert premade_files(tmp_path)
        # The next hour: the old hour's names are dropped, new ones made in the new hour.
        later = NOW + timedelta(hours=1)
        store.refilled.clear()
        store.object_path(later, premade=True)
        assert store.refilled.wait(10)
        files = premade_files(tmp_path)
        assert files and all(f.startswith("objects/20261126/18/") for f in files)
    finally:
        store.stop_pool()
    assert premade_files(tmp_path) == [], "stop_pool removes the names nobody took"


def test_a_spooled_instance_never_gets_a_premade_name(tmp_path):
    store = FileStore(tmp_path)
    store.start_pool()
    try:
        _filled(store)
        fresh = store.object_path(NOW)  # for a rename from the spool
        assert not (tmp_path / fresh).exists()
    finally:
        store.stop_pool()


def test_start_up_sweeps_premade_leftovers_quietly(tmp_path, caplog):
    data = tmp_path / "data"
    settings = load_settings(None, {"node": {"data": data}}, environ={})
    archive = Archive(settings)
    archive.open()
    archive.index.dispose()
    hour = data / "objects" / datetime.now(UTC).strftime("%Y%m%d/%H")
    hour.mkdir(parents=True)
    leftovers = [hour / f"{i:032x}.dcm" for i in range(3)]
    for path in leftovers:
        path.write_bytes(b"")
    archive = Archive(settings)
    with caplog.at_level(logging.WARNING, logger="pacsnode.archive"):
        archive.open()
    archive.index.dispose()
    assert not any(p.exists() for p in leftovers)
    assert "unreadable" not in caplog.text and "re-indexed" not in caplog.text


def test_start_up_sweeps_premade_names_of_the_hour_before_the_newest_instance(tmp_path):
    """When the hour turns, the past hour's unused pre-made names are deleted in the background;
    a crash before that leaves them one hour behind the newest indexed instance."""
    data = tmp_path / "data"
    settings = load_settings(None, {"node": {"data": data}}, environ={})
    archive = Archive(settings)
    archive.open()
    newest = datetime.now(UTC)
    relative = f"objects/{newest:%Y%m%d/%H}/{1:032x}.dcm"
    (data / relative).parent.mkdir(parents=True)
    (data / relative).write_bytes(b"indexed")
    record = instance_record(
        make_instance(size=8),
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        path=relative,
        size=7,
        sha256="0" * 64,
        source_ae_title="TEST",
        received_at=newest,
    )
    archive.index.store([record], "reject")
    archive.index.dispose()
    before = data / "objects" / (newest - timedelta(hours=1)).strftime("%Y%m%d/%H")
    before.mkdir(parents=True, exist_ok=True)
    stale = [before / f"{i + 2:032x}.dcm" for i in range(3)]
    for path in stale:
        path.write_bytes(b"")
    archive = Archive(settings)
    archive.open()
    archive.index.dispose()
    assert not any(p.exists() for p in stale)
    assert (data / relative).read_bytes() == b"indexed"
