"""The data folder's lock: a second archive on a folder in use is refused and repairs nothing;
the lock goes with its process, however that ends (kill -9 included)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pacsnode.archive.folder_lock import LOCK_FILE, DataFolderInUse, FolderLock
from pacsnode.archive.ingest import Archive
from peerkit import WAIT, storage_settings


async def test_a_second_archive_on_a_folder_in_use_is_refused_and_touches_nothing(
    tmp_path: Path, index_url: str
) -> None:
    data = tmp_path / "data"
    first = Archive(storage_settings(data, index_url))
    await first.start()
    try:
        # What open() would "repair" in a folder nobody uses: the first archive's spool
        # file of an instance arriving, and an empty object file of its pool.
        spool = first.store.spool_path()
        spool.write_bytes(b"arriving")
        premade = data / "objects" / "20260101" / "00" / "0123456789abcdef.dcm"
        premade.parent.mkdir(parents=True)
        premade.touch()
        second = Archive(storage_settings(data, index_url))
        with pytest.raises(DataFolderInUse) as refused:
            second.open()
        assert refused.value.folder == data
        assert refused.value.holder == f"pid {os.getpid()}"
        assert f"the data folder {data} is in use by another pacsnode process (pid {os.getpid()})" in str(
            refused.value
        )
        assert "pacsnode store" in str(refused.value)
        assert not second.lock.held
        assert spool.read_bytes() == b"arriving"
        assert premade.is_file()
        spool.unlink()
    finally:
        await first.close()
    assert not first.lock.held
    # Closed: the folder is free again, and the next archive takes it.
    again = Archive(storage_settings(data, index_url))
    await again.start()
    try:
        assert again.lock.held
        assert (data / LOCK_FILE).read_text() == f"pid {os.getpid()}\n"
        assert not premade.exists()  # now an empty leftover of an interrupted run: swept
    finally:
        await again.close()


_HOLDER = """
import sys
from pathlib import Path
from pacsnode.archive.folder_lock import FolderLock
lock = FolderLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"  # waits on the pipe until it holds the lock
        with pytest.raises(DataFolderInUse) as refused:
            FolderLock(tmp_path).acquire()
        assert refused.value.holder == f"pid {holder.pid}"
        holder.send_signal(signal.SIGKILL)  # nothing of the holder runs: the kernel lets the lock go
        assert holder.wait(WAIT) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(WAIT)
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert lock.held
    lock.release()
    assert not lock.held
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no holder named any more


def test_a_file_system_without_flock_is_used_unguarded_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = FolderLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pacsnode.archive"):
        lock.acquire()
    assert not lock.held
    assert f"cannot lock the data folder {tmp_path}" in caplog.text
    assert "run one process on it" in caplog.text
