"""PS3.4 Annex R: the Instance Availability Notification SOP class as SCU, sent when a study is stable.

For each stable study (`pacsnode.archive.stability`) the node sends each ``[ian]
subscribers`` peer an N-CREATE whose attribute list is the Instance Availability
Notification Module of PS3.3 C.4.23 (PS3.4 Table R.3.2-1): every instance of the study,
ONLINE, retrievable from our AE title, with the MPPS that performed it, if any.  Each
subscriber has its own queue, delivered in order; an undelivered notification stays
PENDING in the index, is tried again with a doubling wait and survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol, TypeAlias

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.archive.stability import FAILED, PENDING, SENT, Notification, StabilityStore, StableStudy
from pacsnode.config.settings import Settings
from pacsnode.dimse.status import Status, StatusCategory, category
from pacsnode.services.base import AssociationOpener, ServiceRegistration, SOPClass
from pacsnode.ul.negotiation import ProposedContext

log = logging.getLogger("pacsnode.ian")

# PS3.4 R.3.3: Instance Availability Notification SOP Class.
IAN_SOP_CLASS = "1.2.840.10008.5.1.4.33"
# PS3.4 F.7.1: the SOP class of the performed procedure steps an IAN references.
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
# PS3.3 C.4.23.1.1: the instances are immediately available from the Retrieve AE Title.
ONLINE = "ONLINE"

# PS3.7 C.5 failures the same N-CREATE would meet again: the notification is given up at once.
# Others (0110 processing failure, 0213 resource limitation, unknown codes) are tried again.
_PERMANENT = frozenset(
    {
        Status.NO_SUCH_ATTRIBUTE,
        Status.INVALID_ATTRIBUTE_VALUE,
        Status.INVALID_OBJECT_INSTANCE,
        Status.NO_SUCH_SOP_CLASS,
        Status.CLASS_INSTANCE_CONFLICT,
        Status.MISSING_ATTRIBUTE,
        Status.MISSING_ATTRIBUTE_VALUE,
        Status.SOP_CLASS_NOT_SUPPORTED,
        Status.NOT_AUTHORIZED,
        Status.UNRECOGNIZED_OPERATION,
        Status.MISTYPED_ARGUMENT,
    }
)


class IanAssociation(Protocol):
    """An association to a subscriber, as the net layer's client offers it."""

    def n_create(self, sop_class_uid: str, sop_instance_uid: str | None, dataset: Dataset) -> Awaitable[Any]:
        """N-CREATE."""

    def release(self, timeout: float | None = 30.0) -> Awaitable[None]:
        """A-RELEASE."""

    def abort(self) -> None:
        """A-ABORT."""


# Opens the associations that carry the notifications.
IanConnector: TypeAlias = AssociationOpener[IanAssociation]


def notification_datasets(
    study_instance_uid: str,
    content: dict[str, list[tuple[str, str]]],
    steps: Sequence[tuple[str, Dataset]],
    retrieve_ae_title: str,
) -> list[Dataset]:
    """The attribute lists of the N-CREATEs that announce a study (PS3.4 Table R.3.2-1).

    ``content`` maps each Series Instance UID to its (SOP Class UID, SOP Instance UID)
    pairs, ``steps`` are the study's MPPS as (SOP Instance UID, data set).  PS3.3 C.4.23
    allows zero or one referenced procedure step per notification: with one step (or
    none) a single notification covers the whole study; with several, each step gets one
    for the series its Performed Series Sequence lists, and the series no step lists get
    one without a reference.
    """
    groups: list[tuple[str | None, list[str]]] = []
    if len(steps) <= 1:
        groups.append((steps[0][0] if steps else None, list(content)))
    else:
        claimed: set[str] = set()
        for uid, step in steps:
            listed = {str(i.get("SeriesInstanceUID", "")) for i in step.get("PerformedSeriesSequence") or []}
            mine = [s for s in content if s in listed and s not in claimed]
            if mine:
                groups.append((uid, mine))
                claimed.update(mine)
        rest = [s for s in content if s not in claimed]
        if rest:
            groups.append((None, rest))
    return [
        _notification(study_instance_uid, step_uid, {s: content[s] for s in series_uids}, retrieve_ae_title)
        for step_uid, series_uids in groups
    ]


def _notification(
    study_instance_uid: str,
    step_uid: str | None,
    content: dict[str, list[tuple[str, str]]],
    retrieve_ae_title: str,
) -> Dataset:
    ds = Dataset()
    # PS3.4 Table R.3.2-1: Referenced Performed Procedure Step Sequence, Type 2 (zero or one item).
    ds.ReferencedPerformedProcedureStepSequence = []
    if step_uid is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = MPPS_SOP_CLASS
        ref.ReferencedSOPInstanceUID = step_uid
        ref.PerformedWorkitemCodeSequence = []  # PS3.4 Table R.3.2-1: Type 2
        ds.ReferencedPerformedProcedureStepSequence.append(ref)
    ds.StudyInstanceUID = study_instance_uid  # PS3.4 Table R.3.2-1: Type 1
    series_items = []
    for series_uid, members in content.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = []
        for sop_class, sop_instance in members:
            sop = Dataset()
            sop.ReferencedSOPClassUID = sop_class
            sop.ReferencedSOPInstanceUID = sop_instance
            sop.InstanceAvailability = ONLINE  # PS3.3 C.4.23.1.1
            sop.RetrieveAETitle = retrieve_ae_title  # PS3.4 Table R.3.2-1: Type 1
            item.ReferencedSOPSequence.append(sop)
        series_items.append(item)
    ds.ReferencedSeriesSequence = series_items
    # PS3.4 R.3.2.1.2: no other (optional) attribute: no patient or procedure identifiers.
    return ds


class InstanceAvailabilityNotifier:
    """Delivers the notifications of stable studies to the ``[ian] subscribers``, each in order."""

    def __init__(self, store: StabilityStore, settings: Settings, connector: IanConnector) -> None:
        self.store = store
        self.settings = settings
        self.connector = connector
        self._queues: dict[str, deque[Notification]] = {t: deque() for t in settings.ian.subscribers}
        self._wake: dict[str, asyncio.Event] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._queued: set[int] = set()
        self._closing = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-ian")
        # Called on the event loop after each attempt is recorded: (notification, status, detail),
        # the status PENDING (to be tried again), SENT or FAILED.
        self.on_settled: list[Callable[[Notification, str, str], None]] = []

    async def start(self) -> None:
        """Queue what was not delivered before (a restart) and start one sender per subscriber."""
        loop = asyncio.get_running_loop()
        for title in self._queues:
            self._wake[title] = asyncio.Event()
        left = await loop.run_in_executor(self._pool, self.store.pending)
        for note in left:
            if note.subscriber in self._queues:
                self._enqueue(note)
                continue
            log.warning(
                "IAN for study %s not sent: %s is no longer an [ian] subscriber",
                note.study_instance_uid,
                note.subscriber,
            )
            await self._settle(note, FAILED, note.attempts, "no longer an [ian] subscriber")
        if left:
            log.info("%d Instance Availability Notification(s) left from before, sending", len(left))
        self._workers = [loop.create_task(self._work(title)) for title in self._queues]

    async def close(self) -> None:
        """Stop sending: what is not delivered stays PENDING for the next start."""
        # The flag as well as the cancellation: Python 3.11's asyncio.wait_for (in the client's
        # release, say) can swallow a cancellation that comes as its awaitable completes.
        self._closing = True
        for wake in self._wake.values():
            wake.set()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._pool.shutdown(wait=True)

    def stable(self, event: StableStudy) -> None:
        """A study is stable (`StudyStability` listener): queue its notifications."""
        for note in event.notifications:
            self._enqueue(note)

    def _enqueue(self, note: Notification) -> None:
        queue = self._queues.get(note.subscriber)
        if queue is None or note.id in self._queued:
            return
        self._queued.add(note.id)
        queue.append(note)
        wake = self._wake.get(note.subscriber)
        if wake is not None:
            wake.set()

    async def _work(self, subscriber: str) -> None:
        queue = self._queues[subscriber]
        wake = self._wake[subscriber]
        while not self._closing:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            retry_in = await self._attempt(queue[0])
            if retry_in is None:
                self._queued.discard(queue.popleft().id)
            else:
                queue[0] = replace(queue[0], attempts=queue[0].attempts + 1)
                if not self._closing:
                    await asyncio.sleep(retry_in)  # the back-off before the next attempt

    async def _attempt(self, note: Notification) -> float | None:
        """One attempt at a notification: None once it is settled, else the wait before the next."""
        loop = asyncio.get_running_loop()
        ian = self.settings.ian
        attempts = note.attempts + 1
        peer = self.settings.peers.get(note.subscriber)
        try:
            datasets = await loop.run_in_executor(self._pool, self._build, note)
        except Exception as exc:
            outcome, final, ok = f"cannot read the index: {exc}", False, False
        else:
            if not datasets:
                outcome, final, ok = "the study is no longer in the archive", True, False
            elif (endpoint := peer.endpoint() if peer is not None else None) is None:
                outcome, final, ok = "no host and port in [peers]", True, False
            else:
                outcome, final, ok = await self._send(*endpoint, note, datasets)
        if ok:
            log.info("IAN for study %s sent to %s: %s", note.study_instance_uid, note.subscriber, outcome)
            await self._settle(note, SENT, attempts, outcome)
            return None
        if final or attempts >= ian.max_attempts:
            log.error(
                "IAN for study %s to %s failed after %d attempt(s), given up: %s",
                note.study_instance_uid,
                note.subscriber,
                attempts,
                outcome,
            )
            await self._settle(note, FAILED, attempts, f"after {attempts} attempt(s): {outcome}")
            return None
        wait: float = ian.retry_interval * 2.0 ** (attempts - 1)
        log.warning(
            "IAN for study %s to %s failed (attempt %d of %d, next in %.1f s): %s",
            note.study_instance_uid,
            note.subscriber,
            attempts,
            ian.max_attempts,
            wait,
            outcome,
        )
        await self._settle(note, PENDING, attempts, outcome)
        return wait

    def _build(self, note: Notification) -> list[tuple[str, Dataset]]:
        """The (SOP Instance UID, attribute list) of each N-CREATE of a notification (index thread)."""
        content = self.store.study_content(note.study_instance_uid)
        if not content:
            return []
        steps = self.store.performed_steps(note.study_instance_uid, content)
        datasets = notification_datasets(note.study_instance_uid, content, steps, self.settings.node.aet)
        # PS3.4 R.3.2.1.2: the SCU gives the SOP Instance UID; the same ones on every attempt, so
        # that a subscriber can tell a repeated notification from a new one.
        uids = [note.sop_instance_uid] + [
            generate_uid(prefix=f"{IMPLEMENTATION_CLASS_UID}.", entropy_srcs=[note.sop_instance_uid, str(k)])
            for k in range(1, len(datasets))
        ]
        return list(zip(uids, datasets, strict=True))

    async def _send(
        self, host: str, port: int, note: Notification, datasets: Sequence[tuple[str, Dataset]]
    ) -> tuple[str, bool, bool]:
        """N-CREATE each data set on one association: (outcome, final, delivered)."""
        timeout = self.settings.ian.timeout
        try:
            assoc = await self.connector(
                host,
                port,
                called_ae_title=note.subscriber,
                calling_ae_title=self.settings.node.aet,
                contexts=[ProposedContext(IAN_SOP_CLASS, _UNCOMPRESSED)],
                connect_timeout=timeout,
                acse_timeout=timeout,
                dimse_timeout=timeout,
            )
        except Exception as exc:
            return f"no association: {exc}", False, False
        statuses: list[str] = []
        try:
            for uid, ds in datasets:
                rsp, _ = await assoc.n_create(IAN_SOP_CLASS, uid, ds)
                status = 0xFFFF if rsp.status is None else int(rsp.status)
                statuses.append(f"N-CREATE {uid}: 0x{status:04X}")
                comment = f" ({rsp.error_comment})" if rsp.error_comment else ""
                # PS3.7 C.5 0111: the subscriber has it already (an earlier attempt's answer was lost).
                if category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING) or (
                    status == Status.DUPLICATE_SOP_INSTANCE
                ):
                    continue
                with contextlib.suppress(Exception):
                    await assoc.release(timeout)
                return "; ".join(statuses) + comment, status in _PERMANENT, False
        except asyncio.CancelledError:
            assoc.abort()
            raise
        except Exception as exc:
            assoc.abort()
            return "; ".join([*statuses, f"N-CREATE failed: {exc}"]), False, False
        with contextlib.suppress(Exception):
            await assoc.release(timeout)
        return "; ".join(statuses), False, True

    async def _settle(self, note: Notification, status: str, attempts: int, detail: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self.store.settle, note, status, attempts, detail)
        except Exception as exc:  # the row stays as it was: at worst the notification is sent again
            log.error("cannot record the outcome of IAN %d: %s", note.id, exc)
        for callback in self.on_settled:
            try:
                callback(note, status, detail)
            except Exception:
                log.exception("IAN on_settled listener failed")


def ian_service(settings: Settings) -> ServiceRegistration:
    """The Instance Availability Notification SOP class, SCU (to the [ian] subscribers)."""
    stable_after = f"{settings.ian.stable_after:g}"
    return ServiceRegistration(
        name="Instance Availability Notification",
        standard="PS3.4 Annex R",
        sop_classes=(SOPClass(IAN_SOP_CLASS, "Instance Availability Notification"),),
        transfer_syntaxes=_UNCOMPRESSED,
        scp=False,
        scu=True,
        notes=(
            f"A study is stable when no instance of it has arrived for {stable_after} s "
            "(`[ian] stable_after`); the event is written to the change log (kind `study-stable`). "
            "For each stable study the AE sends every AE of `[ian] subscribers`, in order, an "
            "N-CREATE with a SOP Instance UID it assigns, whose attribute list holds Referenced "
            "Performed Procedure Step Sequence (0008,1111), Study Instance UID (0020,000D) and "
            "Referenced Series Sequence (0008,1115) > Series Instance UID (0020,000E) > Referenced "
            "SOP Sequence (0008,1199) > Referenced SOP Class UID (0008,1150), Referenced SOP "
            "Instance UID (0008,1155), Instance Availability (0008,0056) and Retrieve AE Title "
            "(0008,0054), for every instance of the study then in the archive; no other attribute. "
            "Instance Availability is always ONLINE: the instance can be retrieved at once from the "
            "Retrieve AE Title, this AE, by C-MOVE or C-GET. A new instance makes the study unstable "
            "again, and a later stable event sends a new notification of the whole study. "
            "Relationship with MPPS: an MPPS received by this node (Modality Performed Procedure "
            "Step SCP) whose Performed Series Sequence lists a series of the study, or whose "
            "Scheduled Step Attributes Sequence names the study, is referenced (SOP class "
            "1.2.840.10008.3.1.2.3.3, empty Performed Workitem Code Sequence); the sequence is "
            "empty when there is none. With several such steps, each gets a notification for the "
            "series it lists. Status handling: Success, a Warning, or 0111 (Duplicate SOP Instance: "
            "a repeated notification) is delivery; the failures 0105, 0106, 0117, 0118, 0119, 0120, "
            "0121, 0122, 0124, 0211 and 0212 give the notification up at once; any other failure, "
            "a refused or lost association or a timeout is tried again after `[ian] retry_interval`, "
            "the wait doubling, up to `[ian] max_attempts` attempts. A notification not yet "
            "delivered is kept in the index and sent after a restart; each outcome is logged and "
            "written to the change log (kinds `ian-sent` and `ian-failed`)."
        ),
    )
