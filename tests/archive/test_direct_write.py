"""FileStore.write_object: large object files go around the page cache (O_DIRECT), small ones
through it, and a file system that refuses O_DIRECT gets buffered writes, with the same bytes."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

import pytest

from pacsnode.archive import blobs
from pacsnode.archive.blobs import DIRECT_MIN, FileStore
from pacsnode.archive.ingest import Archive
from pacsnode.config.settings import load_settings

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this system")
BLOCK = 4096
REAL_FCNTL = fcntl.fcntl


@pytest.fixture
def writes(monkeypatch) -> list[tuple[int, bool]]:
    """Every os.write: its length and whether its descriptor had O_DIRECT set."""
    calls: list[tuple[int, bool]] = []
    real = os.write

    def record(fd: int, data: bytes | memoryview) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        n = real(fd, data)
        calls.append((n, direct))
        return n

    monkeypatch.setattr(blobs.os, "write", record)
    return calls


@pytest.fixture
def refusing(monkeypatch) -> None:
    """A file system that refuses O_DIRECT (as tmpfs did before Linux 6.6): F_SETFL says EINVAL."""

    def refuse(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return REAL_FCNTL(fd, cmd, arg)

    monkeypatch.setattr(blobs.fcntl, "fcntl", refuse)


def _write(store: FileStore, root: Path, data: bytes) -> bytes:
    relative = "objects/20261127/01/x.dcm"
    store.write_object(relative, data)
    return (root / relative).read_bytes()


@pytest.mark.parametrize(
    "size",
    [DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, 40 * BLOCK + 123, (5 << 19) + 7],
    ids=["below", "at-min", "min+1", "odd-tail", "several-chunks"],
)
def test_large_files_go_direct_small_ones_buffered_with_the_same_bytes(tmp_path, writes, size):
    store = FileStore(tmp_path)
    data = os.urandom(size)
    assert _write(store, tmp_path, data) == data
    direct = sum(n for n, d in writes if d)
    buffered = sum(n for n, d in writes if not d)
    if size < DIRECT_MIN:
        assert (direct, buffered) == (0, size)
    else:
        # The block-aligned head goes direct, the tail under one block through the page cache.
        assert (direct, buffered) == (size - size % BLOCK, size % BLOCK)
    assert store.direct


def test_a_file_system_refusing_o_direct_gets_buffered_writes(
    tmp_path, writes, refusing, monkeypatch, caplog
):
    store = FileStore(tmp_path)
    data = os.urandom(DIRECT_MIN + 5000)
    with caplog.at_level(logging.INFO, logger="pacsnode.archive"):
        assert _write(store, tmp_path, data) == data
    assert not store.direct
    assert "O_DIRECT refused" in caplog.text
    assert writes and not any(d for _, d in writes)
    # Later files do not try again.
    monkeypatch.setattr(blobs.fcntl, "fcntl", REAL_FCNTL)
    writes.clear()
    (tmp_path / "objects/20261127/01/x.dcm").unlink()
    assert _write(store, tmp_path, data) == data
    assert not any(d for _, d in writes)


def test_an_error_of_the_disk_is_raised_not_hidden(tmp_path, monkeypatch):
    real = os.write

    def full(fd: int, data: bytes | memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(blobs.os, "write", full)
    store = FileStore(tmp_path)
    with pytest.raises(OSError) as raised:
        store.write_object("objects/20261127/01/x.dcm", os.urandom(DIRECT_MIN))
    assert raised.value.errno == errno.ENOSPC
    assert store.direct  # a full disk says nothing about O_DIRECT


@pytest.mark.parametrize(
    "size",
    [(1 << 20) + 1, 2 << 20, (3 << 20) + BLOCK - 1, 5000],
    ids=["1MiB+1", "2MiB", "3MiB+block-1", "under-a-chunk"],
)
def test_a_spool_file_goes_direct_in_whole_blocks_with_the_same_bytes(tmp_path, writes, size):
    store = FileStore(tmp_path)
    data = os.urandom(size)
    spool = store.spool_path()
    fp = store.open_spool(spool)
    for start in range(0, size, 16_372):  # as P-DATA fragments come: any length
        fp.write(data[start : start + 16_372])
    fp.close()
    fp.close()  # closing twice is harmless
    assert spool.read_bytes() == data
    direct = sum(n for n, d in writes if d)
    assert direct == size - size % BLOCK
    assert sum(n for n, d in writes if not d) == size % BLOCK


def test_a_spool_file_on_a_file_system_refusing_o_direct_is_buffered(tmp_path, writes, refusing):
    store = FileStore(tmp_path)
    data = os.urandom((2 << 20) + 77)
    spool = store.spool_path()
    fp = store.open_spool(spool)
    fp.write(data)
    fp.close()
    assert spool.read_bytes() == data
    assert not store.direct and not any(d for _, d in writes)


def test_direct_writes_can_be_turned_off(tmp_path, writes):
    """[storage] direct_writes = false: every file through the page cache."""
    settings = load_settings(
        None, {"node": {"data": tmp_path}, "storage": {"direct_writes": False}}, environ={}
    )
    store = Archive(settings).store
    assert not store.direct
    data = os.urandom(DIRECT_MIN + 5000)
    assert _write(store, tmp_path, data) == data
    assert writes and not any(d for _, d in writes)
    assert Archive(load_settings(None, {"node": {"data": tmp_path}}, environ={})).store.direct


# ------------------------------------------------------------ [storage] direct_writes = "auto"


def test_auto_times_both_ways_with_real_files_and_leaves_nothing(tmp_path, writes, caplog):
    store = FileStore(tmp_path, direct="auto")
    assert store.auto_direct and store.direct  # until the probe: direct
    with caplog.at_level(logging.INFO, logger="pacsnode.archive"):
        store.choose_write_path(rounds=2)
    assert list(store.spool_dir.iterdir()) == []  # the probe files are gone
    # Two rounds, each one file direct (its block-aligned head with O_DIRECT) and one buffered.
    assert sum(1 for n, d in writes if d) == 2
    assert sum(n for n, d in writes if not d) == 2 * 525_000 + 2 * (525_000 % BLOCK)
    way = "around the page cache (O_DIRECT)" if store.direct else "through the page cache"
    assert f"large instance files are written {way}: a 525 kB write and sync took" in caplog.text


@pytest.mark.parametrize(("direct_ms", "buffered_ms", "chosen"), [(0.6, 1.4, True), (2.5, 1.35, False)])
def test_auto_keeps_the_faster_way(tmp_path, monkeypatch, direct_ms, buffered_ms, chosen):
    """The medians decide (one slow outlier each way does not)."""
    rounds: dict[bool, list[float]] = {
        True: [direct_ms, 9.0, direct_ms],
        False: [buffered_ms, buffered_ms, 9.0],
    }

    def timed(self, data: bytes, direct: bool) -> float:
        return rounds[direct].pop(0) / 1e3

    monkeypatch.setattr(FileStore, "_timed_write", timed)
    store = FileStore(tmp_path, direct="auto")
    store.choose_write_path(rounds=3)
    assert store.direct is chosen
    assert rounds == {True: [], False: []}


def test_auto_at_archive_open_and_only_then(tmp_path, monkeypatch):
    probed: list[bool] = []

    def timed(self, data: bytes, direct: bool) -> float:
        probed.append(direct)
        return 0.001 if direct else 0.002

    monkeypatch.setattr(FileStore, "_timed_write", timed)
    for value, expected in ((True, True), (False, False)):
        settings = load_settings(
            None, {"node": {"data": tmp_path}, "storage": {"direct_writes": value}}, environ={}
        )
        archive = Archive(settings)
        archive.open()
        archive.lock.release()
        assert archive.store.direct is expected
    assert probed == []  # true and false are not measured
    archive = Archive(load_settings(None, {"node": {"data": tmp_path}}, environ={}))  # the default: auto
    archive.open()
    archive.lock.release()
    assert archive.store.direct and probed == [True, False] * 5


def test_auto_keeps_direct_when_the_probe_fails(tmp_path, monkeypatch, caplog):
    def full(self, data: bytes, direct: bool) -> float:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileStore, "_timed_write", full)
    store = FileStore(tmp_path, direct="auto")
    with caplog.at_level(logging.WARNING, logger="pacsnode.archive"):
        store.choose_write_path()
    assert store.direct
    assert "cannot compare direct and buffered writes" in caplog.text


def test_auto_on_a_file_system_refusing_o_direct_stays_buffered(tmp_path, refusing):
    store = FileStore(tmp_path, direct="auto")
    store.choose_write_path(rounds=1)
    assert not store.direct
    assert list(store.spool_dir.iterdir()) == []


@pytest.mark.parametrize("value", ['"sometimes"', "2", '"yes please"'])
def test_direct_writes_takes_auto_true_or_false_only(tmp_path, value):
    from pacsnode.config.settings import ConfigError

    config = tmp_path / "pacsnode.toml"
    config.write_text(f"[storage]\ndirect_writes = {value}\n")
    with pytest.raises(ConfigError, match=r"\[storage\] direct_writes") as bad:
        load_settings(config, {"node": {"data": tmp_path}}, environ={})
    assert "'auto'" in str(bad.value)
    for good, expected in (('"auto"', "auto"), ("true", True), ("false", False)):
        config.write_text(f"[storage]\ndirect_writes = {good}\n")
        assert load_settings(config, {}, environ={}).storage.direct_writes == expected
