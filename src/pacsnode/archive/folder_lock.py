"""The data folder's lock: one process at a time writes an archive (DESIGN.md durability contract).

Opening an archive repairs what a crash left: it deletes spool files and empty pre-made
object files, and re-indexes object files that have no index row. In a folder that
another process is storing into, those are that process's instances in flight: it would
lose files it is about to acknowledge, or find rows it did not write. So ``pacsnode
serve`` and ``pacsnode import`` hold an exclusive ``flock`` on ``pacsnode.lock`` in the
data folder while their archive is open. The kernel releases it when the process ends,
however it ends (kill -9 included): there is no stale lock to clear by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("pacsnode.archive")

LOCK_FILE = "pacsnode.lock"


class DataFolderInUse(RuntimeError):
    """Another process holds the data folder's lock."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder = folder
        self.holder = holder
        who = f"another pacsnode process ({holder})" if holder else "another pacsnode process"
        super().__init__(
            f"the data folder {folder} is in use by {who}; stop it first "
            "(to add files to a running node, send them with `pacsnode store`)"
        )


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``<folder>/pacsnode.lock``, held until ``release``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise DataFolderInUse naming the holder's process id."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise DataFolderInUse(self.folder, holder) from None
        except OSError as exc:
            # A file system without flock (some network ones): say so, and go on unguarded
            # rather than refuse to start.
            log.warning("cannot lock the data folder %s (%s): run one process on it", self.folder, exc)
            os.close(fd)
            return
        # Who holds it, for the message of the next one that tries (not synced: a hint).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (closing the descriptor releases the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __del__(self) -> None:
        self.release()
