"""The one ingest pipeline (C-STORE now, STOW-RS and import later): spool, check, place, index, answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset

from pacsnode.archive.blobs import SMALL_GROUP, FileStore, SpoolFile
from pacsnode.archive.folder_lock import FolderLock
from pacsnode.archive.index import RECOVER_REPLACE, ArchiveIndex, InstanceRecord, Outcome, open_transactions
from pacsnode.archive.mpps import PerformedSteps
from pacsnode.archive.ownership import claim
from pacsnode.archive.records import InvalidInstance, instance_record, read_keys, uid_of
from pacsnode.archive.worklist import Worklist
from pacsnode.config.settings import Settings
from pacsnode.data.header import RawHeader, Truncated, truncation
from pacsnode.data.part10 import file_meta, read_layout
from pacsnode.dimse.status import Status

T = TypeVar("T")
log = logging.getLogger("pacsnode.archive")

# Values longer than this are not read by the header check (pydicom reads them only on access;
# the index keys are all short): the memory of a check stays bounded whatever the instance holds.
_DEFER_SIZE = 64 << 10
# A large instance: its write and sync cost its bytes (~0.6 ms for a 512 KiB CT slice here), not a
# fixed time. Both run in the syncer thread while it is hashed and indexed, even alone in its group.
# Only senders of smaller ones are waited for by a group: a large one takes longer to arrive
# than the wait, and a group shares no fixed cost with it (CT slices at 2 and 4 associations
# were 5-40 % slower with the wait).
_LARGE = 128 << 10


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The answer to one instance: a PS3.4 B.2.3 status, and an Error Comment when it failed."""

    status: int
    comment: str = ""
    sop_instance_uid: str = ""
    outcome: Outcome | None = None
    # What the header said (study, patient), when it could be read: the audit trail's subject.
    record: InstanceRecord | None = None

    @property
    def ok(self) -> bool:
        """True when the instance is (or already was) in the archive."""
        return self.status == Status.SUCCESS


class SpoolSink:
    """Receives one data set behind our File Meta Information, hashing as it goes.

    A small data set stays in memory until the committer writes it (in its
    thread, so the event loop makes no file system calls for it); past
    ``memory_limit`` bytes it spills to a spool file and streams there, so memory
    stays bounded whatever the size of the instance.
    """

    def __init__(
        self,
        store: FileStore,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae_title: str,
        memory_limit: int = 1 << 20,
    ) -> None:
        self._path: Path | None = None  # named when first needed: most data sets never spill
        self._store = store
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.source_ae_title = source_ae_title
        # Hashed as it streams once spilled; in memory, by the committer (a large one while its
        # file syncs: hashlib releases the GIL on large buffers).
        self._digest: Any = None
        self.placed = False
        # STOW-RS to /studies/{study} (PS3.18 10.5.1): the study the instance must belong to.
        self.expected_study: str | None = None
        self.size = 0
        self.error: OSError | None = None
        self._memory_limit = memory_limit
        self._fp: SpoolFile | None = None
        # PS3.10 7.1: our meta, the negotiated transfer syntax, the sender's AE title.
        meta = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae_title)
        self._parts: list[bytes] | None = [meta]
        self._buffered = self.meta_length = len(meta)

    @property
    def path(self) -> Path:
        """The spool file's name (the file exists only once the data set spilled to disk)."""
        if self._path is None:
            self._path = self._store.spool_path()
        return self._path

    @property
    def in_memory(self) -> bool:
        """True while the whole file is held in memory (not yet written)."""
        return self._parts is not None

    def content(self) -> bytes:
        """The whole file, while it is in memory."""
        assert self._parts is not None
        if len(self._parts) > 1:
            self._parts = [b"".join(self._parts)]
        return self._parts[0]

    def write(self, fragment: bytes) -> None:
        """Append one P-DATA fragment of the data set."""
        self.size += len(fragment)
        parts = self._parts
        if parts is not None:
            parts.append(fragment)
            self._buffered += len(fragment)
            if self._buffered > self._memory_limit:
                self._spill()
        else:
            self._digest.update(fragment)
            if self._fp is not None:
                self._write(fragment)

    def sha256(self) -> str:
        """SHA-256 of the data set bytes as received (the File Meta Information excluded)."""
        if self._digest is None:
            return hashlib.sha256(memoryview(self.content())[self.meta_length :]).hexdigest()
        return str(self._digest.hexdigest())

    def _spill(self) -> None:
        parts, self._parts = self._parts, None
        self._digest = hashlib.sha256()
        for part in (parts or [])[1:]:  # parts[0] is our File Meta Information
            self._digest.update(part)
        try:
            self._fp = self._store.open_spool(self.path)
        except OSError as exc:
            self.error = exc
            return
        for part in parts or ():
            self._write(part)

    def _write(self, data: bytes) -> None:
        fp = self._fp
        if fp is None:
            return
        try:
            fp.write(data)
        except OSError as exc:
            # Disk full or an I/O error: keep consuming the P-DATA, answer A700 at the end.
            self.error = exc
            self._close()

    def _close(self) -> None:
        fp, self._fp = self._fp, None
        if fp is not None:
            try:
                fp.close()
            except OSError as exc:
                self.error = self.error or exc

    def finish(self) -> None:
        """The data set is complete; it waits (in memory or in the spool) for the committer."""
        self._close()

    def write_out(self, relative: str) -> None:
        """Write an in-memory data set straight to its object path (committer thread).

        No spool file and no rename: until its index row commits, the file is an
        orphan that start-up recovery indexes (if whole) or removes.
        """
        if self._parts is None:
            return
        try:
            self._store.write_object(relative, self.content())
            self.placed = True
        except OSError as exc:
            self.error = exc
            self._store.remove_object(relative)

    def discard(self) -> None:
        """Nothing of this data set is kept."""
        self._parts = None
        self._close()
        if self._path is not None:
            self._store.remove(self._path)


@dataclass(slots=True)
class _Pending:
    sink: SpoolSink
    future: asyncio.Future[StoreResult] | None = None
    origin: object = None  # the association (or other sender) it came from
    record: InstanceRecord | None = None
    relative: str = ""
    result: StoreResult | None = None


class Archive:
    """The archive of one node: files, index, and the group committer between them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        storage = settings.storage
        self.store = FileStore(settings.node.data, storage.sync, direct=storage.direct_writes)
        self.lock = FolderLock(settings.node.data)  # held from open() to close()
        self.index = ArchiveIndex(settings.index_url())
        self.worklist = Worklist(self.index)
        self.performed_steps = PerformedSteps(self.index, self.worklist)
        self.policy = settings.storage.duplicate_policy
        self.max_batch = settings.storage.max_batch
        self.commit_timeout = settings.storage.commit_timeout
        self.group_wait = settings.storage.group_wait
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-commit")
        # Held by whatever does the committer's work: its thread, or the event loop inline.
        self._exclusive = threading.Lock()
        # Inline commits block the event loop: only where no statement waits on a network.
        self._inline = self.index.engine.dialect.name == "sqlite"
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-sync")
        # Called on the event loop after each group commit with the instances it stored or replaced.
        self.on_committed: list[Callable[[Sequence[InstanceRecord]], None]] = []

    # ------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Migrate the index and repair what an interrupted run left behind (blocking).

        Spool files were never acknowledged: they go.  An object file without an
        index row was synced before its row was written, so it may have been
        acknowledged and its row lost with the index's unsynced tail: it is
        indexed again (or dropped if it cannot be read whole).

        Raises DataFolderInUse when another process has the data folder open: what is
        repaired here would be that process's instances in flight; IndexOfAnotherFolder
        when the index belongs to another data folder (archive/ownership.py).
        """
        self.lock.acquire()
        try:
            self.index.migrate()
            claim(self.index, self.settings.node.data)  # before anything is repaired
            self._repair()
            self.store.choose_write_path()  # [storage] direct_writes = "auto"
        except BaseException:
            self.lock.release()
            raise

    def _repair(self) -> None:
        obsolete = self.index.trash_paths()
        for relative in obsolete:
            self.store.remove(self.store.absolute(relative))
        self.index.empty_trash(obsolete)
        since = self.index.newest_received_at()
        # From the hour before the newest instance's: when the hour turns, the pre-made names
        # of the past one are deleted in the background, and a crash can leave them there.
        recent = self.store.recent_relatives(since - timedelta(hours=1) if since is not None else None)
        known = self.index.known_paths(recent)
        self.store.sweep(())
        orphans = [p for p in recent if p not in known]
        # Empty ones are pre-made names an interrupted run had not used yet: nothing to recover.
        premade = {p for p in orphans if _size(self.store.absolute(p)) == 0}
        for relative in premade:
            self.store.remove(self.store.absolute(relative))
        orphans = [p for p in orphans if p not in premade]
        if orphans:
            self._recover(orphans)

    def _recover(self, relatives: list[str]) -> None:
        records: list[InstanceRecord] = []
        for relative in relatives:
            path = self.store.absolute(relative)
            try:
                records.append(_record_of_file(path, relative))
            except Exception as exc:
                log.warning("dropping unreadable object file %s: %s", relative, exc)
                self.store.remove(path)
        policy = RECOVER_REPLACE if self.policy == "replace" else self.policy
        outcomes = self.index.store(records, policy)
        kept = 0
        for record, outcome in zip(records, outcomes, strict=True):
            if outcome.outcome in (Outcome.STORED, Outcome.REPLACED):
                kept += 1
            else:
                self.store.remove(self.store.absolute(record.path))
            if outcome.obsolete_path is not None:
                self.store.remove(self.store.absolute(outcome.obsolete_path))
        self.index.empty_trash(
            o.obsolete_path for o in outcomes if o.outcome is Outcome.REPLACED and o.obsolete_path
        )
        log.warning("re-indexed %d instance file(s) whose index rows were lost", kept)

    async def start(self) -> None:
        """Open the archive and start the group committer."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self.open)
        self.store.start_pool()
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._commit_loop())

    async def close(self) -> None:
        """Stop the committer once the queue is empty."""
        if self._task is not None:
            assert self._queue is not None
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._worker.shutdown(wait=True)
        self._syncer.shutdown(wait=True)
        self.store.stop_pool()
        self.index.dispose()
        self.lock.release()

    # ------------------------------------------------------------ network ingest

    def open_sink(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
    ) -> SpoolSink:
        """A spool sink for a data set about to arrive."""
        return SpoolSink(
            self.store,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            source_ae_title=source_ae_title,
        )

    async def ingest(self, sink: SpoolSink, *, alone: bool = False, origin: object = None) -> StoreResult:
        """Check, place and index a received instance; returns once it is durable (or refused).

        ``alone``: no other association is storing. Then, when the committer is idle,
        the instance is committed at once on the event loop: a group of one either
        way, without the two thread hand-offs (each ~0.05-0.2 ms on a virtual machine).

        ``origin``: the sender (an association), so that a group can wait briefly for the
        next instance of each sender of the previous group (``_gather``).
        """
        assert self._queue is not None, "Archive.start() was not awaited"
        if (
            alone
            and self._inline
            and self._queue.empty()
            # Another thread's transaction (stability, MPPS, worklist, audit...) may hold
            # SQLite's write lock: the committer thread, not the event loop, waits for it.
            and not open_transactions(self.index.engine)
            and self._exclusive.acquire(blocking=False)
        ):
            item = _Pending(sink)
            try:
                self._commit([item])
            except Exception as exc:  # the committer must survive anything, here too
                _failed([item], exc)
            finally:
                self._exclusive.release()
            self._announce([item])
            return _final(item)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoreResult] = loop.create_future()
        self._queue.put_nowait(_Pending(sink, future, origin))
        # A plain timer rather than wait_for(shield()): this runs once per instance.
        timer = loop.call_later(self.commit_timeout, self._too_late, future, sink.sop_instance_uid)
        try:
            return await future
        finally:
            timer.cancel()

    def _too_late(self, future: asyncio.Future[StoreResult], sop_instance_uid: str) -> None:
        if future.done():
            return
        # The commit may still complete later; the sender's retry then finds an
        # identical copy and succeeds.  What matters here is a timely answer.
        log.error("no group commit within %.0f s: instance %s refused", self.commit_timeout, sop_instance_uid)
        future.set_result(
            StoreResult(Status.OUT_OF_RESOURCES, "storage did not complete in time", sop_instance_uid)
        )

    async def _commit_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        expected: set[object] = set()
        while True:
            batch = await self._gather(queue, expected)
            expected = _senders_to_wait_for(batch)
            try:
                await loop.run_in_executor(self._worker, self._locked, self._commit, batch)
            except Exception as exc:  # the committer must survive anything
                _failed(batch, exc)
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_result(_final(item))
                queue.task_done()
            self._announce(batch)

    async def _gather(self, queue: asyncio.Queue[_Pending], expected: set[object]) -> list[_Pending]:
        """The next group: what is queued, and the next instance of each sender of the last group.

        The senders of the last group were answered as it committed; each sends its next
        instance within about a millisecond, while the others' instances wait here.
        Taking whatever is queued at once split four associations into two groups of
        two, each paying two file syncs; waiting for them (at most ``group_wait``) makes
        one group of four with one ``syncfs``: 1,600-1,740 instances/s instead of
        1,340-1,450 here. A sender that does not come back (its association ended, or
        it sends slowly) delays one group by ``group_wait`` and is not waited for again.
        """
        batch = [await queue.get()]
        while len(batch) < self.max_batch and not queue.empty():
            batch.append(queue.get_nowait())
        missing = expected.difference(item.origin for item in batch)
        if not missing or self.group_wait <= 0:
            return batch
        deadline = time.perf_counter() + self.group_wait
        while missing and len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                item = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            batch.append(item)
            missing.discard(item.origin)
        return batch

    def _announce(self, batch: Sequence[_Pending]) -> None:
        added = [
            item.record
            for item in batch
            if item.record is not None
            and item.result is not None
            and item.result.outcome in (Outcome.STORED, Outcome.REPLACED)
        ]
        for callback in self.on_committed if added else ():
            try:
                callback(added)
            except Exception:  # a listener's fault must not stop the committer
                log.exception("on_committed listener failed")

    # ------------------------------------------------------------ the commit (worker thread)

    def _commit(self, batch: Sequence[_Pending]) -> None:
        now = datetime.now(UTC)
        ready: list[_Pending] = []
        for item in batch:
            item.result = self._check(item, now)
            if item.result is None:
                ready.append(item)
            else:
                item.sink.discard()
        if not ready:
            return
        # The files are synced (here for a small group, else in the syncer thread while
        # this one hashes large ones and writes the index rows); the transaction commits only
        # once the sync has returned, so a row is never durable before its file (DESIGN.md
        # durability contract).
        moves = [(item.sink.path, item.relative) for item in ready if not item.sink.in_memory]
        written = [item.relative for item in ready if item.sink.in_memory]
        # Large ones held in memory are written by the syncer, while this thread hashes them.
        late = [(item.sink, item.relative) for item in ready if item.sink.in_memory and not item.sink.placed]
        placing: Future[None]
        before_commit: Callable[[], object]
        here = self._inline and len(ready) <= SMALL_GROUP and all(item.sink.size < _LARGE for item in ready)
        if here:
            # A group of one or two small ones (SQLite): waking the syncer costs more than its
            # sync overlaps. Synced here, once the index rows are written (and the kernel has
            # been writing the files meanwhile: FileStore.write_object), just before COMMIT.
            # With PostgreSQL the syncer works while this thread waits on the server (the
            # duplicate check's round trip): one association +2-10 %, four +6-9 %.
            placing = Future()
            assert not late  # only large ones are written late, and they never sync here

            def sync_here() -> None:
                try:
                    self.store.place(moves, written)
                except OSError as exc:
                    placing.set_exception(exc)
                    raise
                placing.set_result(None)

            before_commit = sync_here
        else:
            placing = self._syncer.submit(self._write_and_place, late, moves, written)
            before_commit = placing.result
        for item in ready:
            if item.record is not None and not item.record.sha256:  # hashed while its file syncs
                item.record = replace(item.record, sha256=item.sink.sha256())
        records = [item.record for item in ready if item.record is not None]
        try:
            outcomes = self.index.store(records, self.policy, before_commit=before_commit)
        except Exception as exc:
            if here and not placing.done():
                placing.set_result(None)  # the index failed before sync_here: nothing was moved
            placing.exception()  # wait: the files must stop moving before they are removed
            if isinstance(exc, OSError) and placing.exception() is exc:
                log.error("cannot make %d instance(s) durable: %s", len(ready), exc)
                status, comment = Status.OUT_OF_RESOURCES, f"storage failed: {exc.strerror}"[:64]
            else:
                log.error("index unavailable, %d instance(s) refused: %s", len(ready), exc)
                status, comment = Status.OUT_OF_RESOURCES, "index database unavailable"
            for item in ready:
                item.result = StoreResult(status, comment, item.sink.sop_instance_uid)
                item.sink.discard()
                self.store.remove_object(item.relative)
            return
        deleted: list[str] = []
        for item, outcome in zip(ready, outcomes, strict=True):
            item.result = _result_of(outcome.outcome, item.sink.sop_instance_uid)
            if outcome.obsolete_path is not None:
                self.store.remove(self.store.absolute(outcome.obsolete_path))
                if outcome.outcome is Outcome.REPLACED:
                    deleted.append(outcome.obsolete_path)
        if deleted:
            try:
                self.index.empty_trash(deleted)
            except Exception as exc:  # replayed at the next start-up
                log.warning("could not clear the trash journal: %s", exc)

    def _write_and_place(
        self, late: Sequence[tuple[SpoolSink, str]], moves: list[tuple[Path, str]], written: list[str]
    ) -> None:
        """Syncer thread: write the large files held in memory, then make the group durable.

        An error writing one fails the group (as a failed sync does): 0xA700 for each.
        """
        for sink, relative in late:
            self.store.write_object(relative, sink.content())
            sink.placed = True
        self.store.place(moves, written)

    def _check(self, item: _Pending, now: datetime) -> StoreResult | None:
        sink = item.sink
        uid = sink.sop_instance_uid
        if sink.error is not None:
            # PS3.4 B.2.3: A7xx Refused: Out of Resources.
            return StoreResult(Status.OUT_OF_RESOURCES, f"cannot write: {sink.error.strerror}"[:64], uid)
        header: Dataset | RawHeader | None = None
        if sink.in_memory:
            try:
                header = read_keys(sink.content(), sink.meta_length, sink.transfer_syntax_uid, whole=True)
            except Truncated as cut:
                # PS3.4 B.2.3: Cxxx Error: Cannot understand (a data set cut short).
                return StoreResult(Status.CANNOT_UNDERSTAND, f"truncated: {cut}"[:64], uid)
        if header is None:
            try:
                source = BytesIO(sink.content()) if sink.in_memory else sink.path
                # Fix (tests/e2e/test_large_instance.py): defer_size, or a large element
                # before Pixel Data (Encapsulated Document, Float Pixel Data, a private
                # blob) was read whole: +200 MB of RSS for a 200 MB encapsulated PDF.
                header = dcmread(source, stop_before_pixels=True, defer_size=_DEFER_SIZE)
            except Exception as exc:
                # PS3.4 B.2.3: Cxxx Error: Cannot understand.
                return StoreResult(Status.CANNOT_UNDERSTAND, f"unreadable data set: {exc}"[:64], uid)
        # PS3.4 B.2.3 / PS3.7 9.3.1: the command's UIDs must be those of the data set.
        if uid_of(header, 0x00080016) != sink.sop_class_uid:
            return StoreResult(
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class UID differs from Affected SOP Class UID",
                uid,
            )
        if uid_of(header, 0x00080018) != uid:
            return StoreResult(
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Instance UID differs from Affected SOP Instance UID",
                uid,
            )
        size = len(sink.content()) if sink.in_memory else sink.path.stat().st_size
        # A large data set in memory is hashed in _commit while the syncer writes and syncs
        # its file (_write_and_place).
        late = sink.in_memory and sink.size >= _LARGE
        item.relative = self.store.object_path(now, premade=sink.in_memory)
        try:
            item.record = instance_record(
                header,
                transfer_syntax_uid=sink.transfer_syntax_uid,
                path=item.relative,
                size=size,
                sha256="" if late else sink.sha256(),
                source_ae_title=sink.source_ae_title,
                received_at=now,
            )
        except InvalidInstance as exc:
            self.store.give_back(item.relative)
            return StoreResult(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc)[:64], uid)
        if sink.expected_study is not None and item.record.study_instance_uid != sink.expected_study:
            self.store.give_back(item.relative)
            # PS3.18 10.5.3: an instance of another study than the target resource's is refused.
            return StoreResult(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Study Instance UID differs", uid)
        if late:
            return None
        sink.write_out(item.relative)
        if sink.error is not None:
            return StoreResult(Status.OUT_OF_RESOURCES, f"cannot write: {sink.error.strerror}"[:64], uid)
        return None

    # ------------------------------------------------------------ deletion

    def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the committer's thread, between group commits (blocking; not on the loop).

        For changes that rewrite what the committer caches (patient merges, say).
        """
        return self._worker.submit(self._locked, fn).result()

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._exclusive:
            return fn(*args)

    async def delete(self, level: str, key: str) -> int | None:
        """Delete a patient (Patient ID), study, series or instance (UID): rows and files together.

        Runs on the committer's thread, between group commits.  The index transaction
        journals the files in the trash; they are removed after it commits and the
        journal is cleared (replayed at start-up after a crash).  Returns the number
        of instances deleted, or None when nothing matched.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._locked, self._delete, level, key)

    def _delete(self, level: str, key: str) -> int | None:
        paths = self.index.delete(level, key)
        if paths is None:
            return None
        for relative in paths:
            self.store.remove(self.store.absolute(relative))
        try:
            self.index.empty_trash(paths)
        except Exception as exc:  # replayed at the next start-up
            log.warning("could not clear the trash journal: %s", exc)
        log.info("deleted %s %s: %d instance(s)", level.lower(), key, len(paths))
        return len(paths)

    # ------------------------------------------------------------ local import

    def import_files(self, paths: Iterable[Path], source_ae_title: str = "") -> list[StoreResult]:
        """Ingest local Part 10 files through the same checks, placement and index (blocking).

        One result per path, in the order of ``paths``.
        """
        results: list[StoreResult | None] = []
        batch: list[tuple[int, _Pending]] = []
        for path in paths:
            results.append(None)
            sink_or_result = self._spool_file(path, source_ae_title)
            if isinstance(sink_or_result, StoreResult):
                results[-1] = sink_or_result
                continue
            batch.append((len(results) - 1, _Pending(sink_or_result)))
            if len(batch) >= self.max_batch:
                self._commit_into(batch, results)
                batch = []
        if batch:
            self._commit_into(batch, results)
        return [r or StoreResult(Status.PROCESSING_FAILURE) for r in results]

    def _commit_into(self, batch: list[tuple[int, _Pending]], results: list[StoreResult | None]) -> None:
        self._commit([item for _, item in batch])
        for position, item in batch:
            results[position] = _final(item)

    def _spool_file(self, path: Path, source_ae_title: str) -> SpoolSink | StoreResult:
        try:
            with path.open("rb") as fp:
                layout = read_layout(fp)
                if not layout.transfer_syntax_uid or not layout.sop_instance_uid:
                    return StoreResult(Status.CANNOT_UNDERSTAND, f"{path}: no DICOM File Meta Information")
                sink = self.open_sink(
                    layout.sop_class_uid, layout.sop_instance_uid, layout.transfer_syntax_uid, source_ae_title
                )
                try:
                    while chunk := fp.read(1 << 20):
                        sink.write(chunk)
                finally:
                    sink.finish()
        except OSError as exc:
            return StoreResult(Status.OUT_OF_RESOURCES, f"{path}: {exc.strerror}")
        except Exception as exc:
            return StoreResult(Status.CANNOT_UNDERSTAND, f"{path}: {exc}")
        return sink


def _failed(batch: Sequence[_Pending], exc: Exception) -> None:
    """A commit raised: each instance not yet answered gets a processing failure."""
    log.exception("commit of %d instance(s) failed", len(batch))
    for item in batch:
        item.result = item.result or StoreResult(Status.PROCESSING_FAILURE, str(exc)[:64])


def _senders_to_wait_for(batch: Sequence[_Pending]) -> set[object]:
    """The senders of a group whose next instance the next group waits for: those of small ones."""
    return {item.origin for item in batch if item.origin is not None and item.sink.size < _LARGE}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _final(item: _Pending) -> StoreResult:
    """The answer for an instance of a commit group, with its record when it was read."""
    result = item.result or StoreResult(Status.PROCESSING_FAILURE)
    return replace(result, record=item.record) if item.record is not None else result


def _result_of(outcome: Outcome, sop_instance_uid: str) -> StoreResult:
    if outcome is Outcome.REJECTED_DUPLICATE:
        # PS3.7 Annex C 0111H Duplicate SOP Instance: a different object under this UID.
        return StoreResult(
            Status.DUPLICATE_SOP_INSTANCE,
            "a different instance with this SOP Instance UID is stored",
            sop_instance_uid,
            outcome,
        )
    return StoreResult(Status.SUCCESS, "", sop_instance_uid, outcome)


def _record_of_file(path: Path, relative: str) -> InstanceRecord:
    """The index record of a stored file, read back from the file itself (start-up recovery)."""
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        layout = read_layout(fp)
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    with path.open("rb") as fp:
        cut = truncation(fp.read(), layout.dataset_offset, layout.transfer_syntax_uid)
    if cut is not None:  # a file cut short by a crash must not come back
        raise InvalidInstance(f"truncated: {cut}")
    ds = dcmread(path)
    stat = path.stat()
    return instance_record(
        ds,
        transfer_syntax_uid=layout.transfer_syntax_uid,
        path=relative,
        size=stat.st_size,
        sha256=digest.hexdigest(),
        source_ae_title=str(ds.file_meta.get("SourceApplicationEntityTitle", "") or ""),
        received_at=datetime.fromtimestamp(stat.st_mtime, UTC),
    )
