"""Instance files on local disk: spool, server-named object paths and pre-made names, group sync, sweep."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Literal

log = logging.getLogger("pacsnode.archive")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)  # Linux
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2

SPOOL = "spool"
SMALL_GROUP = 2  # groups up to this many files sync file by file, larger ones with syncfs
OBJECTS = "objects"
_POOL_LOW = 16  # pre-made object files: refill below this many
_POOL_BATCH = 48  # files made per refill, under one directory sync
# Files at least this large are written around the page cache (O_DIRECT, Linux): here a
# buffered write of a 512 KiB CT slice cost 1.1-1.4 ms of kernel time (allocating and filling
# page cache pages), against 0.12 ms written direct; below it, buffered writes cost less.
DIRECT_MIN = 128 << 10
_ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: a multiple of the block size
_DIRECT_CHUNK = 1 << 20  # bytes copied into the aligned buffer at a time (its size: bounded memory)
_O_DIRECT: int | None = getattr(os, "O_DIRECT", None)
_PROBE_SIZE = 525_000  # a 512x512x16-bit CT slice, for choose_write_path
_PROBE_ROUNDS = 5


class FileStore:
    """Files under one data folder. Names are generated here, never taken from peer-supplied text."""

    def __init__(
        self,
        root: Path,
        sync: Literal["syncfs", "fsync"] = "syncfs",
        *,
        direct: bool | Literal["auto"] = True,
    ) -> None:
        self.root = root
        # The root as text, for the per-instance paths: a Path join and its conversion back
        # for the system call cost ~3 % of a small instance's CPU.
        self._root = os.fspath(root)
        self.spool_dir = root / SPOOL
        self.objects_dir = root / OBJECTS
        self.sync_mode = sync if _syncfs is not None else "fsync"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self._dirs: set[Path] = set()
        self._new_dirs: set[Path] = set()  # created since the last sync: their parent needs one too
        # Pre-made object files: empty files whose names a background thread has already made
        # durable (one directory sync for a batch), so that storing an instance in one costs
        # its data sync only, and its creation leaves the critical path.
        self._pool: deque[str] = deque()
        self._stale: list[str] = []  # pre-made names of a past hour, to delete
        self._pool_hour = ""
        self._pool_cv = threading.Condition()
        self._pool_thread: threading.Thread | None = None
        self._pool_stop = False
        self._premade: set[str] = set()  # handed out, not yet written or placed
        self.refilled = threading.Event()  # set after each batch joins the pool
        # False when turned off ([storage] direct_writes), or once the file system refused
        # O_DIRECT (tmpfs before Linux 6.6, some FUSE ones).
        self.direct = bool(direct) and _O_DIRECT is not None
        # "auto": ``choose_write_path`` (at start-up) keeps whichever way is faster here.
        self.auto_direct = direct == "auto" and _O_DIRECT is not None
        self._aligned = threading.local()  # per thread: a page-aligned buffer for O_DIRECT writes

    def spool_path(self) -> Path:
        """A fresh spool file name (the file is created by ``open_spool``)."""
        return self.spool_dir / f"{_random_name()}.part"

    def open_spool(self, path: Path) -> SpoolFile:
        """Create a spool file for writing."""
        return SpoolFile(self, path)

    def object_path(self, when: datetime, *, premade: bool = False) -> str:
        """A new relative path for an instance received at ``when``: objects/YYYYMMDD/HH/<hex>.dcm.

        With ``premade``, an empty file of that hour whose name is already durable, when the
        pool (``start_pool``) has one: for ``write_object``, not for ``place``'s renames.
        """
        # Not strftime ("{when:%Y%m%d}"): ~10x the cost, paid per instance.
        hour = f"{OBJECTS}/{when.year:04}{when.month:02}{when.day:02}/{when.hour:02}"
        if premade and self._pool_thread is not None:
            with self._pool_cv:
                if self._pool_hour != hour:
                    # A new hour: the refill thread deletes the previous hour's names.
                    self._pool_hour = hour
                    self._stale.extend(self._pool)
                    self._pool.clear()
                    self._pool_cv.notify()
                elif self._pool:
                    relative = self._pool.popleft()
                    self._premade.add(relative)
                    if len(self._pool) < _POOL_LOW:
                        self._pool_cv.notify()
                    return relative
                else:  # empty: ask for a refill, use a fresh name meanwhile
                    self._pool_cv.notify()
        return f"{hour}/{_random_name()}.dcm"

    def start_pool(self) -> None:
        """Start the thread that keeps empty object files with durable names ready."""
        if self._pool_thread is None:
            self._pool_stop = False
            self._pool_thread = threading.Thread(target=self._refill, name="pacsnode-premake", daemon=True)
            self._pool_thread.start()

    def stop_pool(self) -> None:
        """Stop the refill thread and delete the pre-made files nobody took."""
        thread = self._pool_thread
        if thread is None:
            return
        with self._pool_cv:
            self._pool_stop = True
            self._pool_cv.notify()
        thread.join()
        self._pool_thread = None
        with self._pool_cv:
            unused, self._pool = [*self._pool, *self._stale], deque()
            self._stale = []
        for relative in unused:
            self.remove(self.root / relative)

    def give_back(self, relative: str) -> None:
        """A path from ``object_path`` that was not written: its pre-made file returns to the pool."""
        if relative in self._premade:
            self._premade.discard(relative)
            with self._pool_cv:
                if relative.startswith(self._pool_hour + "/"):
                    self._pool.appendleft(relative)
                    return
            self.remove(self.root / relative)

    def _refill(self) -> None:
        while True:
            with self._pool_cv:
                while (
                    not self._pool_stop
                    and not self._stale
                    and (len(self._pool) >= _POOL_LOW or not self._pool_hour)
                ):
                    self._pool_cv.wait()
                if self._pool_stop:
                    return
                hour = self._pool_hour
                stale, self._stale = self._stale, []
                wanted = len(self._pool) < _POOL_LOW
            for relative in stale:
                self.remove(self.root / relative)
            if not wanted:
                continue
            try:
                made = self._premake(hour)
            except OSError as exc:  # disk full, say: storing falls back to creating files itself
                log.warning("cannot pre-make object files: %s", exc)
                with self._pool_cv:
                    self._pool_cv.wait(1.0)
                continue
            with self._pool_cv:
                if self._pool_hour == hour:
                    self._pool.extend(made)
                    self.refilled.set()
                    continue
            for relative in made:
                self.remove(self.root / relative)

    def _premake(self, hour: str) -> list[str]:
        directory = self.root / hour
        fresh = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        made = []
        for _ in range(_POOL_BATCH):
            relative = f"{hour}/{_random_name()}.dcm"
            os.close(os.open(f"{self._root}/{relative}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            made.append(relative)
        # DESIGN.md durability contract: the names are durable before any data goes in.
        fsync_path(directory)
        if fresh:
            fsync_path(directory.parent)
            fsync_path(directory.parent.parent)
        return made

    def absolute(self, relative: str) -> Path:
        """The file behind a relative path of the index."""
        return self.root / relative

    def write_object(self, relative: str, data: bytes) -> None:
        """Write a new object file with these bytes (not yet durable: ``place`` makes it so)."""
        if relative in self._premade:
            fd = os.open(f"{self._root}/{relative}", os.O_WRONLY)  # empty: made by _premake
        else:
            target = self.root / relative
            self._ensure_dir(target.parent)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._write_all(fd, data, direct=self.direct and len(data) >= DIRECT_MIN)
            if (len(data) < DIRECT_MIN or not self.direct) and _sync_file_range is not None:
                # Start writing the data back now, without waiting: by the time the group's
                # sync comes (after its index rows are written) it is mostly done. Only a
                # hint: durability is still the sync's (``place``); errors are left to it.
                _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)

    def _write_all(self, fd: int, data: bytes, *, direct: bool) -> None:
        """Write all of ``data`` at the file's offset: with ``direct``, its block-aligned head
        around the page cache (``_write_direct``), the rest through it."""
        view = memoryview(data)
        if direct:
            view = view[self._write_direct(fd, view) :]
        while view:
            view = view[os.write(fd, view) :]

    def _write_direct(self, fd: int, view: memoryview) -> int:
        """Write the block-aligned head of ``view`` with O_DIRECT; return how many bytes went.

        The caller writes the rest (the tail under one block, or everything after a
        refusal) through the page cache. Durability is still ``place``'s sync, which
        also makes the file's size and blocks durable.
        """
        head = len(view) - len(view) % _ALIGN
        buffer: mmap.mmap | None = getattr(self._aligned, "buffer", None)
        if buffer is None:
            buffer = self._aligned.buffer = mmap.mmap(-1, _DIRECT_CHUNK)  # page-aligned
        done = 0
        with memoryview(buffer) as aligned:
            while done < head:
                n = min(_DIRECT_CHUNK, head - done)
                aligned[:n] = view[done : done + n]
                wrote = self.write_aligned(fd, aligned[:n])
                done += wrote
                if wrote != n:  # refused, or short (disk nearly full): the rest goes buffered
                    break
        return done

    def write_aligned(self, fd: int, block: memoryview) -> int:
        """Write whole blocks from a page-aligned buffer at the file's (block-aligned) offset,
        around the page cache; return the bytes written, 0 if the file system refuses O_DIRECT.
        """
        if not self.direct or _O_DIRECT is None:
            return 0
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
            return os.write(fd, block)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # This file system takes no O_DIRECT (or not at this alignment): buffered from now on.
            self.direct = False
            log.info("instance files are written through the page cache: O_DIRECT refused (%s)", exc)
            return 0
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    def choose_write_path(self, rounds: int = _PROBE_ROUNDS) -> None:
        """``[storage] direct_writes = "auto"``: time large-file writes both ways, keep the faster.

        Which way costs less depends on the host's storage on the day: on this project's
        VM a 525 kB write and ``fdatasync`` took 0.6 ms direct and 1.4-1.8 ms buffered on
        one day, 2.5 ms direct and 1.35 ms buffered on another. Alternating rounds of one
        file each way (in the spool folder, removed at once; swept after a crash) are
        compared by their medians. An error keeps the current way, with a log line.
        """
        if not self.auto_direct or not self.direct:
            return
        timings: dict[bool, list[float]] = {True: [], False: []}
        data = os.urandom(_PROBE_SIZE)
        try:
            for _ in range(rounds):
                for direct in (True, False):
                    timings[direct].append(self._timed_write(data, direct))
        except OSError as exc:
            log.warning("cannot compare direct and buffered writes (%s): large files go direct", exc)
            return
        if not self.direct:  # the file system refused O_DIRECT meanwhile (logged)
            return
        direct_ms, buffered_ms = (statistics.median(timings[d]) * 1e3 for d in (True, False))
        self.direct = direct_ms < buffered_ms
        log.info(
            "large instance files are written %s: a %d kB write and sync took %.2f ms direct, "
            "%.2f ms buffered",
            "around the page cache (O_DIRECT)" if self.direct else "through the page cache",
            _PROBE_SIZE // 1000,
            direct_ms,
            buffered_ms,
        )

    def _timed_write(self, data: bytes, direct: bool) -> float:
        """Seconds to create, write and ``fdatasync`` one spool file of ``data``, then remove it."""
        path = self.spool_path()
        started = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self._write_all(fd, data, direct=direct)
            os.fdatasync(fd)
        finally:
            os.close(fd)
            elapsed = time.perf_counter() - started
            self.remove(path)
        return elapsed

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
                fsync_path(spool)
            os.replace(spool, target)
        premade = set()
        for relative in written:
            if relative in self._premade:
                premade.add(relative)  # its name is durable already: its data sync is enough
                self._premade.discard(relative)
            else:
                dirs.add((self.root / relative).parent)
            if self.sync_mode == "fsync":
                fsync_path(f"{self._root}/{relative}", data_only=relative in premade)
        if not moves and not written:
            return
        if self.sync_mode == "syncfs" and len(moves) + len(written) <= SMALL_GROUP:
            # A group of one or two (a single association): syncing its own files and
            # directory takes less time than a sync of the whole file system, whose
            # cost grows with whatever else the machine has written.
            for _spool, relative in moves:
                fsync_path(f"{self._root}/{relative}", data_only=True)
            for relative in written:
                fsync_path(f"{self._root}/{relative}", data_only=True)
            for directory in dirs:
                fsync_path(directory)
                if directory in self._new_dirs:
                    # Its name in the day folder, and the day folder's in objects/.
                    fsync_path(directory.parent)
                    fsync_path(directory.parent.parent)
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
                fsync_path(directory)

    def remove_object(self, relative: str) -> None:
        """Delete an object file that was not placed (a refused or failed instance)."""
        self._premade.discard(relative)
        self.remove(self.root / relative)

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


class SpoolFile:
    """A spool file written in 1 MiB blocks around the page cache (``FileStore.write_aligned``),
    its last partial block through it: a spilled data set costs no page cache filling.
    """

    def __init__(self, store: FileStore, path: Path) -> None:
        self._store = store
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._buffer = mmap.mmap(-1, _DIRECT_CHUNK)  # page-aligned; one per spilling data set
        self._filled = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (a full block goes to the disk at once)."""
        view = memoryview(data)
        while view:
            n = min(_DIRECT_CHUNK - self._filled, len(view))
            self._buffer[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == _DIRECT_CHUNK:
                self._drain()

    def _drain(self) -> None:
        with memoryview(self._buffer) as buffered:
            head = self._filled - self._filled % _ALIGN
            done = self._store.write_aligned(self._fd, buffered[:head]) if head else 0
            rest = buffered[done : self._filled]
            while rest:  # refused, short, or the last partial block: through the page cache
                rest = rest[os.write(self._fd, rest) :]
        # Every block but the last is whole: the next one starts block-aligned again.
        self._filled = 0

    def close(self) -> None:
        """Write what is buffered and close (the file is complete, not yet durable)."""
        if self._fd < 0:
            return
        try:
            if self._filled:
                self._drain()
        finally:
            os.close(self._fd)
            self._fd = -1
            # A view of the buffer held by a traceback keeps it until that goes.
            with contextlib.suppress(BufferError):
                self._buffer.close()


def _random_name() -> str:
    """32 hex digits of os.urandom: a name no peer chose, as unique as a UUID4 (faster to make)."""
    return os.urandom(16).hex()


def fsync_path(path: str | Path, *, data_only: bool = False) -> None:
    """fsync (or, with ``data_only``, fdatasync) a file or directory by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if data_only:
            os.fdatasync(fd)  # the data and the size that reads it back; the name is the directory's
        else:
            os.fsync(fd)
    finally:
        os.close(fd)
