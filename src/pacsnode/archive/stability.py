"""Stable studies and the outbox of their Instance Availability Notifications (PS3.4 R.1.1, PS3.3 C.4.23).

PS3.4 R.1.1 leaves to the SCU when it notifies; pacsnode notifies when a study is
*stable*: no instance of it arrived for ``[ian] stable_after`` seconds.  `StudyStability`
follows arrivals (fed by `Archive.on_committed`, on the event loop) with one loop timer per
study being received.  When a study becomes stable, one transaction writes a "study-stable"
row to the change log, the study's row of ``study_stability`` and one PENDING row of
``ian_notifications`` per subscriber, so that a notification is never lost between the
event and its delivery; listeners (the IAN SCU) are told after the commit.  At start-up,
studies whose content changed after they were last stable are waited for again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Connection, exists, func, or_, select

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.archive.index import ArchiveIndex, InstanceRecord
from pacsnode.archive.schema import (
    changes,
    ian_notifications,
    instances,
    performed_steps,
    series,
    studies,
    study_stability,
)
from pacsnode.archive.worklist import stored_dataset

log = logging.getLogger("pacsnode.ian")

STUDY_STABLE = "study-stable"  # kind of the change log row of a stable study
IAN_SENT, IAN_FAILED = "ian-sent", "ian-failed"  # kinds of the rows that say how a notification ended
PENDING, SENT, FAILED = "PENDING", "SENT", "FAILED"  # ian_notifications.status

# MPPS updated this long before a study became stable are not searched for its references.
STEP_HORIZON = timedelta(days=7)


def _aware(value: Any) -> datetime | None:
    """A datetime read from the index, in UTC (SQLite returns them naive)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class StableStudy:
    """A study became stable: its instance count then, and the notifications written with the event."""

    study_instance_uid: str
    instances: int
    at: datetime
    notifications: tuple[Notification, ...] = ()


@dataclass(frozen=True, slots=True)
class Notification:
    """One Instance Availability Notification to deliver to one subscriber."""

    id: int
    study_instance_uid: str
    subscriber: str
    sop_instance_uid: str  # the N-CREATE's Affected SOP Instance UID (PS3.4 R.3.2.1.2: the SCU's)
    attempts: int = 0


# ---------------------------------------------------------------- the index side (blocking)


class StabilityStore:
    """The rows of stable studies and of their notifications, in the archive's index."""

    def __init__(self, index: ArchiveIndex) -> None:
        self.index = index

    def declare(
        self, study_instance_uid: str, subscribers: Sequence[str], new_uid: Callable[[], str]
    ) -> StableStudy | None:
        """Record that a study is stable, with one PENDING notification per subscriber (one transaction).

        Returns None when the study has no instance (any more): nothing is recorded.
        """
        now = datetime.now(UTC)
        with self.index.engine.begin() as conn:
            count = conn.execute(
                select(studies.c.number_of_study_related_instances).where(
                    studies.c.study_instance_uid == study_instance_uid
                )
            ).scalar()
            if not count:
                return None
            conn.execute(
                changes.insert().values(
                    at=now,
                    kind=STUDY_STABLE,
                    sop_instance_uid="",
                    series_instance_uid="",
                    study_instance_uid=study_instance_uid,
                    detail=f"{count} instance(s)",
                )
            )
            done = conn.execute(
                study_stability.update()
                .where(study_stability.c.study_instance_uid == study_instance_uid)
                .values(stable_at=now, instances=count)
            )
            if done.rowcount == 0:
                conn.execute(
                    study_stability.insert().values(
                        study_instance_uid=study_instance_uid, stable_at=now, instances=count
                    )
                )
            notes: list[Notification] = []
            for subscriber in subscribers:
                uid = new_uid()
                key = conn.execute(
                    ian_notifications.insert().values(
                        study_instance_uid=study_instance_uid,
                        subscriber=subscriber,
                        sop_instance_uid=uid,
                        status=PENDING,
                        attempts=0,
                        detail="",
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key
                assert key is not None
                notes.append(Notification(int(key[0]), study_instance_uid, subscriber, uid))
        return StableStudy(study_instance_uid, int(count), now, tuple(notes))

    def unsettled(self) -> list[tuple[str, datetime | None]]:
        """Studies whose content changed since they were last stable, with their last arrival.

        A study counts as changed when it has no stable record, or an instance received after
        it, or another number of instances (a replacement, a deletion, an instance whose
        commit ended just after the event).  Records of deleted studies are dropped.
        """
        out: list[tuple[str, datetime | None]] = []
        with self.index.engine.begin() as conn:
            conn.execute(
                study_stability.delete().where(
                    ~exists().where(studies.c.study_instance_uid == study_stability.c.study_instance_uid)
                )
            )
            # studies.updated_at moves with every change of the study's content: a cheap first sieve.
            candidates = conn.execute(
                select(
                    studies.c.id,
                    studies.c.study_instance_uid,
                    studies.c.number_of_study_related_instances,
                    study_stability.c.stable_at,
                    study_stability.c.instances,
                )
                .select_from(
                    studies.outerjoin(
                        study_stability,
                        study_stability.c.study_instance_uid == studies.c.study_instance_uid,
                    )
                )
                .where(
                    or_(
                        study_stability.c.id.is_(None),
                        studies.c.updated_at > study_stability.c.stable_at,
                        studies.c.number_of_study_related_instances != study_stability.c.instances,
                    )
                )
            ).all()
            for row in candidates:
                last = self._last_arrival(conn, row.id)
                stable_at = _aware(row.stable_at)
                if row.number_of_study_related_instances == 0:
                    continue
                if (
                    stable_at is None
                    or row.number_of_study_related_instances != row.instances
                    or (last is not None and last > stable_at)
                ):
                    out.append((row.study_instance_uid, last))
        return out

    @staticmethod
    def _last_arrival(conn: Connection, study_id: int) -> datetime | None:
        value = conn.execute(
            select(func.max(instances.c.received_at))
            .select_from(instances.join(series, series.c.id == instances.c.series_fk))
            .where(series.c.study_fk == study_id)
        ).scalar()
        return _aware(value)

    # ------------------------------------------------------------ the outbox

    def pending(self) -> list[Notification]:
        """Notifications not yet delivered nor given up, oldest first."""
        t = ian_notifications
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.study_instance_uid, t.c.subscriber, t.c.sop_instance_uid, t.c.attempts)
                .where(t.c.status == PENDING)
                .order_by(t.c.id)
            ).all()
        return [
            Notification(r.id, r.study_instance_uid, r.subscriber, r.sop_instance_uid, r.attempts)
            for r in rows
        ]

    def settle(self, note: Notification, status: str, attempts: int, detail: str) -> None:
        """Record an attempt: still PENDING, or SENT / FAILED (then with a change log row)."""
        now = datetime.now(UTC)
        with self.index.engine.begin() as conn:
            conn.execute(
                ian_notifications.update()
                .where(ian_notifications.c.id == note.id)
                .values(status=status, attempts=attempts, detail=detail[:1024], updated_at=now)
            )
            if status != PENDING:
                conn.execute(
                    changes.insert().values(
                        at=now,
                        kind=IAN_SENT if status == SENT else IAN_FAILED,
                        sop_instance_uid="",
                        series_instance_uid="",
                        study_instance_uid=note.study_instance_uid,
                        detail=f"{note.subscriber}: {detail}"[:1024],
                    )
                )

    def notifications(self, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
        """The notification rows (of one study), oldest first."""
        t = ian_notifications
        stmt = select(t).order_by(t.c.id)
        if study_instance_uid is not None:
            stmt = stmt.where(t.c.study_instance_uid == study_instance_uid)
        with self.index.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    # ------------------------------------------------------------ what a notification references

    def study_content(self, study_instance_uid: str) -> dict[str, list[tuple[str, str]]]:
        """Series Instance UID -> [(SOP Class UID, SOP Instance UID)] of every instance of the study."""
        stmt = (
            select(series.c.series_instance_uid, instances.c.sop_class_uid, instances.c.sop_instance_uid)
            .select_from(
                instances.join(series, series.c.id == instances.c.series_fk).join(
                    studies, studies.c.id == series.c.study_fk
                )
            )
            .where(studies.c.study_instance_uid == study_instance_uid)
            .order_by(series.c.id, instances.c.id)
        )
        content: dict[str, list[tuple[str, str]]] = {}
        with self.index.engine.connect() as conn:
            for series_uid, sop_class, sop_instance in conn.execute(stmt):
                content.setdefault(series_uid, []).append((sop_class, sop_instance))
        return content

    def performed_steps(
        self, study_instance_uid: str, series_uids: Iterable[str]
    ) -> list[tuple[str, Dataset]]:
        """The MPPS (PS3.4 Annex F) that performed this study: (SOP Instance UID, data set), oldest first.

        A step belongs to the study when its Performed Series Sequence (0040,0340) lists one
        of the study's series, or its Scheduled Step Attributes Sequence (0040,0270) names the
        study; only steps updated in the week before are searched.
        """
        wanted = set(series_uids)
        since = datetime.now(UTC) - STEP_HORIZON
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(performed_steps.c.sop_instance_uid, performed_steps.c.dataset)
                .where(performed_steps.c.updated_at >= since)
                .order_by(performed_steps.c.id)
            ).all()
        found: list[tuple[str, Dataset]] = []
        for uid, data in rows:
            try:
                step = stored_dataset(bytes(data))
            except Exception:
                continue
            performed = {
                str(i.get("SeriesInstanceUID", "")) for i in step.get("PerformedSeriesSequence") or []
            }
            scheduled = {
                str(i.get("StudyInstanceUID", "")) for i in step.get("ScheduledStepAttributesSequence") or []
            }
            if performed & wanted or study_instance_uid in scheduled:
                found.append((str(uid), step))
        return found


# ---------------------------------------------------------------- the event loop side


StableListener = Callable[[StableStudy], None]


class Timer(Protocol):
    """A scheduled call that can be cancelled (`asyncio.TimerHandle`)."""

    def cancel(self) -> None:
        """Do not call."""


class Clock(Protocol):
    """Time and timers: the event loop, or a fake one in tests."""

    def time(self) -> float:
        """Seconds on a monotonic clock."""

    def call_later(self, delay: float, callback: Callable[[str], None], uid: str, /) -> Timer:
        """Call ``callback(uid)`` after ``delay`` seconds."""


class StudyStability:
    """Waits, for each study being received, until ``stable_after`` seconds pass without an instance."""

    def __init__(
        self,
        index: ArchiveIndex,
        stable_after: float,
        subscribers: Sequence[str] = (),
        new_uid: Callable[[], str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = StabilityStore(index)
        self.stable_after = stable_after
        self.subscribers = tuple(subscribers)
        self.new_uid = new_uid or (lambda: generate_uid(prefix=f"{IMPLEMENTATION_CLASS_UID}."))
        self.listeners: list[StableListener] = []
        self._last: dict[str, float] = {}  # study -> loop time of its last arrival
        self._timers: dict[str, Timer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-stability")
        self._closed = False

    @property
    def waiting(self) -> frozenset[str]:
        """The studies not yet stable."""
        return frozenset(self._timers)

    @property
    def clock(self) -> Clock:
        """The clock of the timers: the one given, else the running event loop."""
        if self._clock is None:
            self._clock = asyncio.get_running_loop()
        return self._clock

    async def start(self) -> None:
        """Wait again for the studies whose content changed after they were last stable (or never were)."""
        loop = asyncio.get_running_loop()
        unsettled = await loop.run_in_executor(self._pool, self.store.unsettled)
        now = datetime.now(UTC)
        for uid, last in unsettled:
            if uid in self._timers:  # received again since the start: already waited for
                continue
            quiet = (now - last).total_seconds() if last is not None else 0.0
            self._arm(uid, max(0.0, self.stable_after - quiet))
        if unsettled:
            log.info("waiting for %d study(ies) received before the restart to become stable", len(unsettled))

    async def close(self) -> None:
        """Cancel the timers; let the events being recorded finish."""
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._last.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

    def arrived(self, records: Sequence[InstanceRecord]) -> None:
        """Instances were committed (`Archive.on_committed`): their studies are not stable (yet)."""
        if self._closed:
            return
        now = self.clock.time()
        for uid in {r.study_instance_uid for r in records}:
            self._last[uid] = now
            if uid not in self._timers:
                self._arm(uid, self.stable_after)

    def _arm(self, uid: str, delay: float) -> None:
        # The quiet period is counted from the last arrival: a study waited for again after a
        # restart has already been quiet for stable_after - delay seconds.
        self._last.setdefault(uid, self.clock.time() - (self.stable_after - delay))
        self._timers[uid] = self.clock.call_later(delay, self._due, uid)

    def _due(self, uid: str) -> None:
        if self._closed:
            return
        left = self._last.get(uid, 0.0) + self.stable_after - self.clock.time()
        if left > 0:  # an instance came meanwhile: wait for the rest of its quiet period
            self._timers[uid] = self.clock.call_later(left, self._due, uid)
            return
        del self._timers[uid]
        self._last.pop(uid, None)
        task = asyncio.get_running_loop().create_task(self._declare(uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _declare(self, uid: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            event = await loop.run_in_executor(
                self._pool, self.store.declare, uid, self.subscribers, self.new_uid
            )
        except Exception as exc:
            log.error("cannot record that study %s is stable (tried again later): %s", uid, exc)
            if not self._closed and uid not in self._timers:
                self._arm(uid, self.stable_after)
            return
        if event is None:
            return
        log.info("study %s is stable: %d instance(s)", uid, event.instances)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("study-stable listener failed")
