"""Study stability (pacsnode.archive.stability): a study with no new instance for stable_after
seconds is stable once, is logged in the change log with its pending notifications, becomes
unstable with a new instance, and is waited for again after a restart. A fake clock drives the
timers: no sleeping, no timing assertions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from pacsnode.archive.index import ArchiveIndex
from pacsnode.archive.ingest import Archive
from pacsnode.archive.schema import changes, ian_notifications, patients, studies, study_stability
from pacsnode.archive.stability import PENDING, STUDY_STABLE, StableStudy, StudyStability
from peerkit import WAIT, make_instance, new_uid, received_sink

STABLE_AFTER = 30.0


@dataclass(eq=False)
class _Timer:
    when: float
    callback: Callable[[str], None]
    uid: str
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeClock:
    """The tracker's clock: time moves only by `advance`, which runs the timers that come due."""

    now: float = 1000.0
    timers: list[_Timer] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[str], None], uid: str, /) -> _Timer:
        timer = _Timer(self.now + delay, callback, uid)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback(timer.uid)
        self.now = target


class Events:
    """Collects StableStudy events; ``await events.wait(n)`` until n have come."""

    def __init__(self) -> None:
        self.items: list[StableStudy] = []
        self._new = asyncio.Event()

    def __call__(self, event: StableStudy) -> None:
        self.items.append(event)
        self._new.set()

    async def wait(self, n: int) -> list[StableStudy]:
        while len(self.items) < n:
            self._new.clear()
            await asyncio.wait_for(self._new.wait(), WAIT)
        return self.items

    def by_study(self) -> dict[str, int]:
        return {e.study_instance_uid: e.instances for e in self.items}


@pytest.fixture
async def make_tracker(
    archive: Archive,
) -> AsyncIterator[Callable[..., tuple[StudyStability, FakeClock, Events]]]:
    started: list[StudyStability] = []

    def make(**options: Any) -> tuple[StudyStability, FakeClock, Events]:
        clock, events = FakeClock(), Events()
        options.setdefault("stable_after", STABLE_AFTER)
        tracker = StudyStability(archive.index, clock=clock, **options)
        tracker.listeners.append(events)
        archive.on_committed.append(tracker.arrived)
        started.append(tracker)
        return tracker, clock, events

    yield make
    for tracker in started:
        await tracker.close()
        if tracker.arrived in archive.on_committed:
            archive.on_committed.remove(tracker.arrived)


async def store(archive: Archive, *datasets: Any) -> None:
    """Ingest generated instances through the archive's pipeline (as a C-STORE would)."""
    for ds in datasets:
        result = await archive.ingest(received_sink(archive, ds)[0])
        assert result.ok, result


def stable_rows(index: ArchiveIndex) -> list[tuple[str, str]]:
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(changes.c.study_instance_uid, changes.c.detail)
            .where(changes.c.kind == STUDY_STABLE)
            .order_by(changes.c.seq)
        ).all()
    return [(r[0], r[1]) for r in rows]


async def test_a_quiet_study_becomes_stable_with_its_notifications(archive, make_tracker):
    tracker, clock, events = make_tracker(subscribers=("RIS", "PACS2"))
    a, b = new_uid(), new_uid()
    await store(archive, make_instance(study=a), make_instance(study=a), make_instance(study=b))
    assert tracker.waiting == {a, b}
    clock.advance(STABLE_AFTER - 1)
    assert tracker.waiting == {a, b} and not events.items
    clock.advance(1)
    await events.wait(2)
    assert events.by_study() == {a: 2, b: 1}
    assert tracker.waiting == frozenset()
    assert sorted(stable_rows(archive.index)) == sorted([(a, "2 instance(s)"), (b, "1 instance(s)")])
    with archive.index.engine.connect() as conn:
        rows = conn.execute(select(ian_notifications).order_by(ian_notifications.c.id)).all()
    assert [(r.study_instance_uid, r.subscriber, r.status, r.attempts) for r in rows] == [
        (e.study_instance_uid, s, PENDING, 0) for e in events.items for s in ("RIS", "PACS2")
    ]
    # The event carries the rows written with it, with distinct SCU-assigned UIDs.
    notes = [n for e in events.items for n in e.notifications]
    assert [(n.id, n.subscriber, n.sop_instance_uid) for n in notes] == [
        (r.id, r.subscriber, r.sop_instance_uid) for r in rows
    ]
    assert len({n.sop_instance_uid for n in notes}) == 4


async def test_an_instance_while_waiting_postpones_the_event(archive, make_tracker):
    tracker, clock, events = make_tracker()
    study = new_uid()
    await store(archive, make_instance(study=study))
    clock.advance(STABLE_AFTER * 2 / 3)
    await store(archive, make_instance(study=study))
    clock.advance(STABLE_AFTER * 2 / 3)  # the first quiet period would be over, not the second
    assert tracker.waiting == {study} and not events.items
    clock.advance(STABLE_AFTER / 3)
    await events.wait(1)
    await tracker.close()  # every event being recorded is done
    assert events.by_study() == {study: 2} and len(events.items) == 1
    assert stable_rows(archive.index) == [(study, "2 instance(s)")]


async def test_a_new_instance_makes_a_stable_study_unstable_again(archive, make_tracker):
    tracker, clock, events = make_tracker(subscribers=("RIS",))
    study = new_uid()
    await store(archive, make_instance(study=study))
    clock.advance(STABLE_AFTER)
    await events.wait(1)
    await store(archive, make_instance(study=study), make_instance(study=study))
    assert tracker.waiting == {study}
    clock.advance(STABLE_AFTER)
    first, second = await events.wait(2)
    assert (first.instances, second.instances) == (1, 3)
    assert stable_rows(archive.index) == [(study, "1 instance(s)"), (study, "3 instance(s)")]
    assert first.notifications[0].sop_instance_uid != second.notifications[0].sop_instance_uid


async def test_an_identical_resend_does_not_make_a_study_unstable(archive, make_tracker):
    tracker, clock, events = make_tracker()
    ds = make_instance()
    await store(archive, ds)
    clock.advance(STABLE_AFTER)
    await events.wait(1)
    await store(archive, ds)  # nothing changed in the archive
    assert tracker.waiting == frozenset()


async def test_restart_waits_again_for_studies_changed_since_they_were_stable(archive, make_tracker):
    first, clock, events = make_tracker()
    settled, never, changed = new_uid(), new_uid(), new_uid()
    await store(archive, make_instance(study=settled), make_instance(study=changed))
    clock.advance(STABLE_AFTER)
    await events.wait(2)
    await store(archive, make_instance(study=never), make_instance(study=changed))
    await first.close()  # the node stops before these two are stable

    second, clock2, events2 = make_tracker()
    await second.start()
    assert second.waiting == {never, changed}
    clock2.advance(STABLE_AFTER)
    await events2.wait(2)
    assert events2.by_study() == {never: 1, changed: 2}
    third, _, _ = make_tracker()
    await third.start()
    assert third.waiting == frozenset()  # every study is settled now


async def test_a_deleted_study_gives_no_event(archive, make_tracker):
    tracker, clock, events = make_tracker(subscribers=("RIS",))
    study = new_uid()
    await store(archive, make_instance(study=study))
    assert await archive.delete("STUDY", study) == 1
    clock.advance(STABLE_AFTER)
    await tracker.close()
    assert not events.items and stable_rows(archive.index) == []


async def test_a_failed_record_is_tried_again(archive, make_tracker):
    calls = 0
    study = new_uid()
    tracker, clock, events = make_tracker()
    real = tracker.store.declare

    def flaky(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("index unavailable")
        return real(*args)

    tracker.store.declare = flaky  # type: ignore[method-assign]
    await store(archive, make_instance(study=study))
    clock.advance(STABLE_AFTER)
    await asyncio.wait_for(asyncio.gather(*list(tracker._tasks)), WAIT)
    assert study in tracker.waiting  # the failed attempt waits for the study again
    clock.advance(STABLE_AFTER)
    await events.wait(1)
    assert calls == 2 and stable_rows(archive.index) == [(study, "1 instance(s)")]


def test_an_upgraded_archive_takes_its_studies_as_stable(tmp_path: Path, index_url: str) -> None:
    # Migration 0006: studies stored before stability was tracked are not notified at the upgrade.
    index = ArchiveIndex(index_url or f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        index.migrate("0005")
        now = datetime.now(UTC)
        with index.engine.begin() as conn:
            conn.execute(insert(patients).values(patient_id="P1", issuer_of_patient_id="", patient_name="A"))
            conn.execute(
                insert(studies).values(
                    patient_fk=1,
                    study_instance_uid="1.2.3",
                    updated_at=now,
                    number_of_study_related_instances=4,
                )
            )
        index.migrate()
        with index.engine.connect() as conn:
            rows = conn.execute(
                select(study_stability.c.study_instance_uid, study_stability.c.instances)
            ).all()
        assert [tuple(r) for r in rows] == [("1.2.3", 4)]
        from pacsnode.archive.stability import StabilityStore

        assert StabilityStore(index).unsettled() == []
    finally:
        index.drop_all()
        index.dispose()
