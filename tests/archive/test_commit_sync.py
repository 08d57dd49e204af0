"""Where and when a group's files are synced. A large instance (128 KiB or more) is synced in the
syncer thread while it is hashed and its index rows are written, even alone in its group, and so
is every group with PostgreSQL; with SQLite, a group of one or two small ones is synced where it
commits, after its index rows are written.
Either way the recorded SHA-256 is that of the data set as received, the row commits only once
the file sync has returned, and a failure on either side leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import pytest

from pacsnode.dimse.status import Status
from peerkit import WAIT, assert_consistent, make_instance, received_sink


@pytest.mark.parametrize("size", [512, 16], ids=["large", "small"])
async def test_where_the_file_syncs_and_what_is_recorded(archive, index_url, size):
    # In the syncer thread, but for a small group on SQLite (no server round trip to overlap).
    in_syncer = size == 512 or bool(index_url)
    events: list[tuple[str, str]] = []
    real_place, real_store = archive.store.place, archive.index.store

    def place(*args: Any, **kwargs: Any) -> None:
        real_place(*args, **kwargs)
        events.append(("synced", threading.current_thread().name))

    def store(records: Any, policy: str, *, before_commit: Any = None) -> Any:
        def committing() -> None:
            if before_commit is not None:
                before_commit()
            events.append(("committing", threading.current_thread().name))

        return real_store(records, policy, before_commit=committing)

    archive.store.place, archive.index.store = place, store
    ds = make_instance(size=size)  # 512: 256 KiB of pixel data, held in memory
    sink, data = received_sink(archive, ds)
    assert sink.in_memory
    result = await asyncio.wait_for(archive.ingest(sink), WAIT)
    assert result.ok, result
    assert [e[0] for e in events] == ["synced", "committing"]
    assert events[0][1].startswith("pacsnode-sync") is in_syncer, events
    row = archive.index.instance(str(ds.SOPInstanceUID))
    assert row is not None
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert (archive.store.root / row["path"]).read_bytes().endswith(data)


@pytest.mark.parametrize("size", [512, 16], ids=["large", "small"])
async def test_a_sync_that_fails_answers_a700_and_keeps_nothing(archive, size):
    def place(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    archive.store.place = place
    ds = make_instance(size=size)
    result = await asyncio.wait_for(archive.ingest(received_sink(archive, ds)[0]), WAIT)
    # PS3.4 B.2.3: A7xx Refused: Out of Resources.
    assert result.status == Status.OUT_OF_RESOURCES, result
    assert "No space left" in result.comment
    assert archive.index.instance(str(ds.SOPInstanceUID)) is None
    assert_consistent(archive.store.root, archive.index)


@pytest.mark.parametrize("size", [512, 16], ids=["large", "small"])
async def test_an_index_that_fails_before_the_sync_keeps_nothing(archive, size):
    """The index fails before its commit would wait for the sync: no hang, A700, no file left."""
    real_find = archive.index._hot.find

    def find(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("the index went away")

    archive.index._hot.find = find
    ds = make_instance(size=size)
    result = await asyncio.wait_for(archive.ingest(received_sink(archive, ds)[0]), WAIT)
    assert result.status == Status.OUT_OF_RESOURCES, result
    assert result.comment == "index database unavailable"
    archive.index._hot.find = real_find
    assert archive.index.instance(str(ds.SOPInstanceUID)) is None
    assert_consistent(archive.store.root, archive.index)
    again = make_instance(size=size)
    assert (await asyncio.wait_for(archive.ingest(received_sink(archive, again)[0]), WAIT)).ok


@pytest.mark.parametrize("size", [512, 16], ids=["large", "small"])
async def test_where_the_file_is_written(archive, size):
    """A large one is written by the syncer (beside its hashing), a small one by the committer."""
    writers: list[str] = []
    real_write = archive.store.write_object

    def write_object(relative: str, data: bytes) -> None:
        writers.append(threading.current_thread().name)
        real_write(relative, data)

    archive.store.write_object = write_object
    ds = make_instance(size=size)
    result = await asyncio.wait_for(archive.ingest(received_sink(archive, ds)[0]), WAIT)
    assert result.ok, result
    assert len(writers) == 1
    assert writers[0].startswith("pacsnode-sync") is (size == 512), writers


async def test_a_large_file_that_cannot_be_written_answers_a700_and_keeps_nothing(archive):
    def write_object(relative: str, data: bytes) -> None:
        target = archive.store.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[:1000])  # a part written, then the disk fails
        raise OSError(28, "No space left on device")

    archive.store.write_object = write_object
    ds = make_instance(size=512)
    result = await asyncio.wait_for(archive.ingest(received_sink(archive, ds)[0]), WAIT)
    assert result.status == Status.OUT_OF_RESOURCES, result
    assert "No space left" in result.comment
    assert archive.index.instance(str(ds.SOPInstanceUID)) is None
    assert_consistent(archive.store.root, archive.index)
