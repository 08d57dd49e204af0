"""Group commit across concurrent associations: a group waits (at most ``[storage] group_wait``)
for the next small instance of each sender of the previous group, so that they share one sync.
The waits are driven by events (what the commit loop took from its queue), never by sleeping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pacsnode.archive.ingest import Archive, SpoolSink, _Pending, _senders_to_wait_for
from peerkit import WAIT, make_instance, received_sink, storage_settings


class _Watched(asyncio.Queue[_Pending]):
    """A queue that says when the commit loop has taken everything it held."""

    def __init__(self) -> None:
        super().__init__()
        self.drained = asyncio.Event()

    def get_nowait(self) -> _Pending:
        item = super().get_nowait()
        if self.empty():
            self.drained.set()
        return item


def _sink(archive: Archive, *, size: int = 8) -> SpoolSink:
    sink: SpoolSink = received_sink(archive, make_instance(size=size))[0]
    return sink


def _item(archive: Archive, origin: object, **kwargs: Any) -> _Pending:
    return _Pending(_sink(archive, **kwargs), origin=origin)


@pytest.fixture
def unstarted(tmp_path: Path) -> Archive:
    return Archive(storage_settings(tmp_path / "data"))


async def test_a_group_waits_for_a_sender_of_the_last_group(unstarted):
    unstarted.group_wait = WAIT * 10  # only the sender's arrival may end the wait
    queue = _Watched()
    b1 = _item(unstarted, "B")
    queue.put_nowait(b1)
    gathering = asyncio.ensure_future(unstarted._gather(queue, {"A"}))
    await asyncio.wait_for(queue.drained.wait(), WAIT)  # B1 taken; A's next not yet queued
    assert not gathering.done()
    a2 = _item(unstarted, "A")
    queue.put_nowait(a2)
    assert await asyncio.wait_for(gathering, WAIT) == [b1, a2]


@pytest.mark.parametrize("wait", [0.01, 0], ids=["sender-gone", "waiting-off"])
async def test_a_group_without_the_sender_of_the_last_one_commits(unstarted, wait):
    """A sender that does not come back delays one group by group_wait; 0 turns waiting off."""
    unstarted.group_wait = wait
    queue = _Watched()
    b1 = _item(unstarted, "B")
    queue.put_nowait(b1)
    assert await asyncio.wait_for(unstarted._gather(queue, {"A"}), WAIT) == [b1]


async def test_no_wait_when_every_sender_of_the_last_group_is_there(unstarted):
    unstarted.group_wait = WAIT * 10
    queue = _Watched()
    a1, b1 = _item(unstarted, "A"), _item(unstarted, "B")
    queue.put_nowait(a1)
    queue.put_nowait(b1)
    assert await asyncio.wait_for(unstarted._gather(queue, {"A", "B"}), WAIT) == [a1, b1]


def test_only_senders_of_small_instances_are_waited_for(unstarted):
    small = _item(unstarted, "small")
    large = _item(unstarted, "large", size=512)  # 256 KiB of pixel data
    anonymous = _item(unstarted, None)  # STOW-RS and import give no sender
    assert large.sink.size > 128 << 10 > small.sink.size
    assert _senders_to_wait_for([small, large, anonymous]) == {"small"}


async def test_through_the_commit_loop_a_group_with_every_sender_commits_at_once(archive):
    """Sender A's group commits; B's instance and A's next one then commit as one group,
    at once: the wait (far longer than the test's patience) ends when A's instance is there."""
    archive.group_wait = WAIT * 10
    groups: list[list[str]] = []
    real = archive._commit

    def commit(batch: Any) -> None:
        groups.append([item.origin for item in batch])
        real(batch)

    archive._commit = commit
    assert (await asyncio.wait_for(archive.ingest(_sink(archive), origin="A"), WAIT)).ok
    b1 = asyncio.ensure_future(archive.ingest(_sink(archive), origin="B"))
    a2 = asyncio.ensure_future(archive.ingest(_sink(archive), origin="A"))
    results = await asyncio.wait_for(asyncio.gather(b1, a2), WAIT)
    assert all(r.ok for r in results), results
    assert groups == [["A"], ["B", "A"]]
    for result in results:
        assert archive.index.instance(result.sop_instance_uid) is not None
