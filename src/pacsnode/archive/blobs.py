"""Instance files on local disk: spool, server-named object paths, group sync, orphan sweep."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal

log = logging.getLogger("pacsnode.archive")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)

SPOOL = "spool"
_SMALL_GROUP = 2  # groups up to this many files sync file by file, larger ones with syncfs
OBJECTS = "objects"


class FileStore:
    """Files under one data folder. Names are generated here, never taken from peer-supplied text."""

    def __init__(self, root: Path, sync: Literal["syncfs", "fsync"] = "syncfs") -> None:
        self.root = root
        self.spool_dir = root / SPOOL
        self.objects_dir = root / OBJECTS
        self.sync_mode = sync if _syncfs is not None else "fsync"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self._dirs: set[Path] = set()
        self._new_dirs: set[Path] = set()  # created since the last sync: their parent needs one too

    def spool_path(self) -> Path:
        """A fresh spool file name (the file is created by ``open_spool``)."""
        return self.spool_dir / f"{uuid.uuid4().hex}.part"

    def open_spool(self, path: Path) -> BinaryIO:
        """Create a spool file for writing."""
        return path.open("xb", buffering=1 << 20)

    def object_path(self, when: datetime) -> str:
        """A new relative path for an instance received at ``when``: objects/YYYYMMDD/HH/<uuid>.dcm."""
        return f"{OBJECTS}/{when:%Y%m%d}/{when:%H}/{uuid.uuid4().hex}.dcm"

    def absolute(self, relative: str) -> Path:
        """The file behind a relative path of the index."""
        return self.root / relative

    def write_object(self, relative: str, data: bytes) -> None:
        """Create a new object file with these bytes (not yet durable: ``place`` makes it so)."""
        target = self.root / relative
        self._ensure_dir(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def _ensure_dir(self, directory: Path) -> None:
        if directory not in self._dirs:
            if not directory.exists():
                self._new_dirs.add(directory)
            directory.mkdir(parents=True, exist_ok=True)
            if len(self._dirs) > 1024:
                self._dirs.clear()
            self._dirs.add(directory)

    def place(self, moves: Iterable[tuple[Path, str]], written: Iterable[str] = ()) -> None:
        """Move spool files to their object paths, then make data and names durable.

        ``written`` are object files already created in place (``write_object``).
        DESIGN.md durability contract: after this returns, the bytes and the names
        survive a crash; the caller commits the index rows only then.
        """
        moves = list(moves)
        written = list(written)
        dirs: set[Path] = set()
        for spool, relative in moves:
            target = self.root / relative
            self._ensure_dir(target.parent)
            dirs.add(target.parent)
            if self.sync_mode == "fsync":
                _fsync_path(spool)
            os.replace(spool, target)
        for relative in written:
            target = self.root / relative
            dirs.add(target.parent)
            if self.sync_mode == "fsync":
                _fsync_path(target)
        if not moves and not written:
            return
        if self.sync_mode == "syncfs" and len(moves) + len(written) <= _SMALL_GROUP:
            # A group of one or two (a single association): syncing its own files and
            # directory takes less time than a sync of the whole file system, whose
            # cost grows with whatever else the machine has written.
            for _spool, relative in moves:
                _fsync_path(self.root / relative, data_only=True)
            for relative in written:
                _fsync_path(self.root / relative, data_only=True)
            for directory in dirs:
                _fsync_path(directory)
                if directory in self._new_dirs:
                    # Its name in the day folder, and the day folder's in objects/.
                    _fsync_path(directory.parent)
                    _fsync_path(directory.parent.parent)
                    self._new_dirs.discard(directory)
        elif self.sync_mode == "syncfs":
            # One sync of the file system covers every file and directory of the
            # group: the group commit that lets concurrent associations share it.
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if _syncfs is None or _syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
        else:
            for directory in dirs | {d.parent for d in dirs}:
                _fsync_path(directory)

    def remove(self, path: Path) -> None:
        """Delete a file, ignoring one that is already gone."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def sweep(self, orphans: Iterable[str]) -> int:
        """Delete spool leftovers and the given orphan object files (start-up, after a crash)."""
        removed = 0
        for leftover in self.spool_dir.iterdir():
            self.remove(leftover)
            removed += 1
        for relative in orphans:
            self.remove(self.root / relative)
            removed += 1
        if removed:
            log.warning("swept %d orphan file(s) left by an interrupted run", removed)
        return removed

    def recent_relatives(self, since: datetime | None) -> list[str]:
        """Relative paths of object files from the hour of ``since`` on.

        A crash can orphan only files of the group being committed, which are
        newer than the newest indexed instance, so the sweep checks only these.
        """
        out: list[str] = []
        start = f"{since:%Y%m%d}/{since:%H}" if since is not None else ""
        if not self.objects_dir.exists():
            return out
        for day in sorted(self.objects_dir.iterdir()):
            for hour in sorted(day.iterdir()):
                key = f"{day.name}/{hour.name}"
                if key >= start:
                    out.extend(f"{OBJECTS}/{key}/{f.name}" for f in hour.iterdir())
        return out


def _fsync_path(path: Path, *, data_only: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if data_only:
            os.fdatasync(fd)  # the data and the size that reads it back; the name is the directory's
        else:
            os.fsync(fd)
    finally:
        os.close(fd)
