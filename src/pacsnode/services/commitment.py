"""PS3.4 Annex J: the Storage Commitment Push Model SOP class: SCP (N-ACTION, N-EVENT-REPORT) and SCU."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pacsnode.archive.commitment import Reference, Verdict
from pacsnode.config.settings import Settings
from pacsnode.data.transcode import decode, encode
from pacsnode.dimse.commands import CommandField
from pacsnode.dimse.messages import n_event_report_rq, response_to
from pacsnode.dimse.status import Status
from pacsnode.services.base import (
    AssociationOpener,
    DimseRequest,
    InMemoryDataSets,
    Responder,
    ServiceRegistration,
    SOPClass,
)
from pacsnode.ul.negotiation import ProposedContext

log = logging.getLogger("pacsnode.commitment")

# PS3.4 J.3 / PS3.6 Annex A: the SOP class and its well-known SOP instance.
STORAGE_COMMITMENT_SOP_CLASS = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # PS3.4 J.3.2.1.1: Action Type ID "Request Storage Commitment"
ALL_COMMITTED = 1  # PS3.4 J.3.2.1.2: Event Type ID, storage commitment request successful
SOME_FAILED = 2  # PS3.4 J.3.2.1.2: Event Type ID, complete - failures exist
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_MAX_REFERENCES = 100_000  # items in one request: more is refused (0x0213), memory stays bounded


class ReportAssociation(Protocol):
    """An association on which we send a report, as the net layer's client offers it."""

    @property
    def negotiated(self) -> Any:
        """What was negotiated (the contexts and their roles)."""

    def n_event_report(
        self, sop_class_uid: str, sop_instance_uid: str, event_type_id: int, dataset: Dataset
    ) -> Awaitable[Any]:
        """N-EVENT-REPORT: the final response and its data set."""

    def release(self, timeout: float | None = 30.0) -> Awaitable[None]:
        """A-RELEASE."""

    def abort(self) -> None:
        """A-ABORT."""


# Opens the associations on which reports go when the requesting one has ended.
ReportConnector: TypeAlias = AssociationOpener[ReportAssociation]
# Checks references against the archive (blocking: called in a worker thread).
Verifier: TypeAlias = Callable[[Sequence[Reference]], list[Verdict]]


class Undeliverable(RuntimeError):
    """A report that cannot reach its requester (the message says why)."""


class RequestError(ValueError):
    """An N-ACTION the SCP refuses, with the status that says why."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _quiet_decode(data: bytes, transfer_syntax: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode(data, transfer_syntax)


def parse_request(ds: Dataset) -> tuple[str, list[Reference]]:
    """The Transaction UID and Referenced SOP Sequence of an Action Information (PS3.4 Table J.3-1)."""
    uid = str(ds.get("TransactionUID", "") or "").strip()
    if not uid:
        raise RequestError(Status.MISSING_ATTRIBUTE_VALUE, "Transaction UID (0008,1195) is missing")
    if len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
        raise RequestError(Status.INVALID_ARGUMENT_VALUE, f"Transaction UID {uid[:64]!r} is not a UID")
    items = ds.get("ReferencedSOPSequence")
    if not items:
        raise RequestError(Status.MISSING_ATTRIBUTE_VALUE, "Referenced SOP Sequence (0008,1199) is empty")
    if len(items) > _MAX_REFERENCES:
        raise RequestError(
            Status.RESOURCE_LIMITATION, f"more than {_MAX_REFERENCES} instances in one request"
        )
    references = []
    for number, item in enumerate(items, 1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            raise RequestError(
                Status.MISSING_ATTRIBUTE_VALUE,
                f"item {number} of the Referenced SOP Sequence lacks its SOP class or instance UID",
            )
        references.append(Reference(sop_class, sop_instance))
    return uid, references


def event_information(transaction_uid: str, verdicts: Sequence[Verdict], retrieve_ae_title: str) -> Dataset:
    """The N-EVENT-REPORT Event Information (PS3.4 Table J.3-2) and its Event Type ID."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    committed = [v for v in verdicts if v.committed]
    failed = [v for v in verdicts if not v.committed]
    if committed:
        ds.RetrieveAETitle = retrieve_ae_title
        ds.ReferencedSOPSequence = DicomSequence()
        for verdict in committed:
            item = Dataset()
            item.ReferencedSOPClassUID = verdict.reference.sop_class_uid
            item.ReferencedSOPInstanceUID = verdict.reference.sop_instance_uid
            ds.ReferencedSOPSequence.append(item)
    if failed:
        ds.FailedSOPSequence = DicomSequence()
        for verdict in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = verdict.reference.sop_class_uid
            item.ReferencedSOPInstanceUID = verdict.reference.sop_instance_uid
            item.FailureReason = verdict.failure_reason
            ds.FailedSOPSequence.append(item)
    return ds


@dataclass(slots=True)
class _Pending:
    """A request accepted by N-ACTION-RSP whose report is still to be sent."""

    transaction_uid: str
    references: list[Reference]
    calling_ae_title: str
    context_id: int
    transfer_syntax: str
    responder: Responder
    task: asyncio.Task[None] | None = field(default=None)


class StorageCommitmentSCP(InMemoryDataSets):
    """Answers N-ACTION at once, checks the instances off the loop, then reports (PS3.4 J.3.3)."""

    def __init__(
        self, verifier: Verifier, settings: Settings, connector: ReportConnector | None = None
    ) -> None:
        self.verifier = verifier
        self.settings = settings
        self.connector = connector
        self._tasks: set[asyncio.Task[None]] = set()
        self._transactions: set[str] = set()  # transaction UIDs whose report is not yet sent

    def handle(self, request: DimseRequest, responder: Responder) -> Awaitable[None] | None:
        """N-ACTION (PS3.4 J.3.2); anything else is 0211 Unrecognized Operation."""
        cmd = request.command
        if cmd.command_field != CommandField.N_ACTION_RQ:
            responder.send(response_to(cmd, Status.UNRECOGNIZED_OPERATION))
            return None
        peer = request.association.calling_ae_title
        try:
            # PS3.4 J.3.2.1.1: the well-known SOP instance, Action Type ID 1.
            if cmd.requested_sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
                raise RequestError(
                    Status.INVALID_OBJECT_INSTANCE,
                    f"the Requested SOP Instance UID must be {STORAGE_COMMITMENT_INSTANCE}",
                )
            if cmd.action_type_id != REQUEST_COMMITMENT:
                raise RequestError(Status.NO_SUCH_ACTION, f"no action type {cmd.action_type_id}")
            if not request.dataset:
                raise RequestError(Status.MISSING_ATTRIBUTE, "the Action Information data set is missing")
            try:
                ds = _quiet_decode(request.dataset, request.context.transfer_syntax)
                transaction_uid, references = parse_request(ds)
            except RequestError:
                raise
            except Exception as exc:
                raise RequestError(
                    Status.PROCESSING_FAILURE, f"unreadable Action Information: {exc}"
                ) from None
            if transaction_uid in self._transactions:
                # PS3.4 J.3.2.1.1: 0131 duplicate transaction UID (one is still being processed).
                raise RequestError(0x0131, f"transaction {transaction_uid} is already being processed")
        except RequestError as exc:
            log.info(
                "storage commitment N-ACTION from %s refused (0x%04X): %s", peer, exc.status, exc.comment
            )
            responder.send(response_to(cmd, exc.status, error_comment=exc.comment[:1024]))
            return None
        responder.send(response_to(cmd, Status.SUCCESS))
        log.info(
            "storage commitment transaction %s from %s: %d instance(s)",
            transaction_uid,
            peer,
            len(references),
        )
        pending = _Pending(
            transaction_uid,
            references,
            peer,
            request.context.context_id,
            request.context.transfer_syntax,
            responder,
        )
        # The report is its own task: the association stays free for the peer's next
        # request (or its release) while the files are checked.
        self._transactions.add(transaction_uid)
        task = asyncio.get_running_loop().create_task(self._report(pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    async def idle(self) -> None:
        """Wait until every accepted request has had its report sent (or given up)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        """Cancel the reports still being prepared (the node is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _report(self, pending: _Pending) -> None:
        try:
            loop = asyncio.get_running_loop()
            verdicts = await loop.run_in_executor(None, self.verifier, pending.references)
            failed = sum(1 for v in verdicts if not v.committed)
            info = event_information(pending.transaction_uid, verdicts, self.settings.node.aet)
            event = SOME_FAILED if failed else ALL_COMMITTED
            how = await self._send(pending, event, info)
            log.info(
                "storage commitment transaction %s: %d committed, %d failed; report to %s %s",
                pending.transaction_uid,
                len(verdicts) - failed,
                failed,
                pending.calling_ae_title,
                how,
            )
        except asyncio.CancelledError:
            raise
        except Undeliverable as exc:
            log.error("storage commitment transaction %s: report not sent: %s", pending.transaction_uid, exc)
        except Exception:
            log.exception("storage commitment transaction %s: report not sent", pending.transaction_uid)
        finally:
            self._transactions.discard(pending.transaction_uid)

    async def _send(self, pending: _Pending, event: int, info: Dataset) -> str:
        """Report on the requesting association if still open, else on a new one (PS3.4 J.3.3)."""
        settings = self.settings.commitment
        if settings.same_association and pending.responder.is_open:
            command = n_event_report_rq(
                pending.responder.next_message_id(),
                STORAGE_COMMITMENT_SOP_CLASS,
                STORAGE_COMMITMENT_INSTANCE,
                event,
            )
            data = encode(info, pending.transfer_syntax)
            try:
                rsp, _ = await asyncio.wait_for(
                    pending.responder.sub_request(pending.context_id, command, data), settings.timeout
                )
            except Exception as exc:  # released or aborted meanwhile: go the other way
                log.info(
                    "storage commitment transaction %s: the requesting association ended (%s)",
                    pending.transaction_uid,
                    exc or type(exc).__name__,
                )
            else:
                return f"on the same association (status 0x{rsp.status or 0:04X})"
        return await self._send_new(pending, event, info)

    async def _send_new(self, pending: _Pending, event: int, info: Dataset) -> str:
        """PS3.4 J.3.3: a new association to the requester, we in the SCP role (role selection)."""
        settings = self.settings
        peer = settings.peers.get(pending.calling_ae_title)
        endpoint = peer.endpoint() if peer is not None else None
        if endpoint is None or self.connector is None:
            raise Undeliverable(
                f"the association from {pending.calling_ae_title} has ended and there is no "
                f"[peers.{pending.calling_ae_title}] host and port to send the report to"
            )
        host, port = endpoint
        delay = settings.commitment.retry_interval
        attempts = settings.commitment.attempts
        for attempt in range(1, attempts + 1):
            try:
                status = await self._deliver(pending, event, info, host, port)
            except Exception as exc:
                if attempt == attempts:
                    raise Undeliverable(
                        f"{pending.calling_ae_title} at {host}:{port}: {exc} "
                        f"(gave up after {attempts} attempts)"
                    ) from exc
                log.warning(
                    "storage commitment report to %s failed (attempt %d of %d): %s; retrying in %.0f s",
                    pending.calling_ae_title,
                    attempt,
                    attempts,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)  # backoff between attempts, not a wait for an event
                delay *= 2
                continue
            return f"on a new association to {host}:{port} (status 0x{status:04X})"
        raise AssertionError("unreachable")

    async def _deliver(self, pending: _Pending, event: int, info: Dataset, host: str, port: int) -> int:
        assert self.connector is not None
        timeout = self.settings.commitment.timeout
        assoc = await self.connector(
            host,
            port,
            called_ae_title=pending.calling_ae_title,
            calling_ae_title=self.settings.node.aet,
            # PS3.4 J.3.3 / PS3.7 D.3.3.4: we propose the SCP role only.
            contexts=[
                ProposedContext(STORAGE_COMMITMENT_SOP_CLASS, UNCOMPRESSED, scu_role=False, scp_role=True)
            ],
            connect_timeout=timeout,
            acse_timeout=timeout,
            dimse_timeout=timeout,
        )
        try:
            ctx = assoc.negotiated.context_for(STORAGE_COMMITMENT_SOP_CLASS)
            if ctx is None:
                raise RuntimeError("the peer did not accept the Storage Commitment Push Model SOP class")
            if not ctx.requestor_is_scp:
                raise RuntimeError("the peer did not accept us in the SCP role (SCP/SCU Role Selection)")
            rsp, _ = await assoc.n_event_report(
                STORAGE_COMMITMENT_SOP_CLASS, STORAGE_COMMITMENT_INSTANCE, event, info
            )
        except BaseException:
            assoc.abort()
            raise
        await assoc.release(timeout)
        return int(rsp.status or 0)


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    """A storage commitment result as the SCU receives it (PS3.4 J.3.2.1.2)."""

    transaction_uid: str
    event_type_id: int
    committed: tuple[Reference, ...]
    failed: tuple[tuple[Reference, int], ...]  # (instance, Failure Reason)
    retrieve_ae_title: str = ""
    calling_ae_title: str = ""  # who sent it
    received_on: str = ""  # the receiver's label: which association it came on


def parse_report(
    ds: Dataset, event_type_id: int, sender: str = "", received_on: str = ""
) -> CommitmentReport:
    """Read an N-EVENT-REPORT's Event Information."""
    committed = tuple(
        Reference(str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", "")))
        for item in ds.get("ReferencedSOPSequence", [])
    )
    failed = tuple(
        (
            Reference(
                str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", ""))
            ),
            int(item.get("FailureReason", 0) or 0),
        )
        for item in ds.get("FailedSOPSequence", [])
    )
    return CommitmentReport(
        str(ds.get("TransactionUID", "")),
        event_type_id,
        committed,
        failed,
        str(ds.get("RetrieveAETitle", "") or ""),
        sender,
        received_on,
    )


class CommitmentReportReceiver(InMemoryDataSets):
    """The SCU's side: takes N-EVENT-REPORTs (on its own association or one the SCP opens)."""

    def __init__(
        self, label: str = "", waiting: dict[str, asyncio.Future[CommitmentReport]] | None = None
    ) -> None:
        self.label = label  # says where reports came in (``received_on``)
        # Several receivers (our association, a listener) may share the waiting transactions.
        self._waiting: dict[str, asyncio.Future[CommitmentReport]] = waiting if waiting is not None else {}

    def sibling(self, label: str) -> CommitmentReportReceiver:
        """A receiver for another way in, resolving the same transactions."""
        return type(self)(label, self._waiting)

    def expect(self, transaction_uid: str) -> asyncio.Future[CommitmentReport]:
        """A future resolved with the report of this transaction."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting[transaction_uid] = fut
        return fut

    def handle(self, request: DimseRequest, responder: Responder) -> None:
        """N-EVENT-REPORT-RQ: answer it, and hand the report to whoever waits for it."""
        cmd = request.command
        if cmd.command_field != CommandField.N_EVENT_REPORT_RQ:
            responder.send(response_to(cmd, Status.UNRECOGNIZED_OPERATION))
            return
        if cmd.event_type_id not in (ALL_COMMITTED, SOME_FAILED):
            responder.send(response_to(cmd, Status.NO_SUCH_EVENT_TYPE))
            return
        try:
            ds = _quiet_decode(request.dataset or b"", request.context.transfer_syntax)
            report = parse_report(ds, cmd.event_type_id, request.association.calling_ae_title, self.label)
        except Exception as exc:
            responder.send(
                response_to(cmd, Status.PROCESSING_FAILURE, error_comment=f"unreadable: {exc}"[:64])
            )
            return
        responder.send(response_to(cmd, Status.SUCCESS))
        fut = self._waiting.pop(report.transaction_uid, None)
        if fut is None:
            log.warning("storage commitment report for unknown transaction %s", report.transaction_uid)
        elif not fut.done():
            fut.set_result(report)


def storage_commitment_service(
    verifier: Verifier | None, settings: Settings, connector: ReportConnector | None = None
) -> ServiceRegistration:
    """The Storage Commitment Push Model SOP class, SCP (and SCU through `pacsnode commit`)."""
    return ServiceRegistration(
        name="Storage Commitment Push Model",
        standard="PS3.4 Annex J",
        sop_classes=(SOPClass(STORAGE_COMMITMENT_SOP_CLASS, "Storage Commitment Push Model"),),
        transfer_syntaxes=UNCOMPRESSED,
        scp=True,
        scu=True,
        handler=StorageCommitmentSCP(verifier, settings, connector) if verifier is not None else None,
        notes=(
            "N-ACTION (Request Storage Commitment) is answered at once; then each referenced instance "
            "is looked up in the index and its stored file re-read and checked against the SHA-256 "
            "recorded when it was received. The N-EVENT-REPORT (event 1, all committed; 2, failures "
            "exist) goes on the requesting association while it is open, otherwise on a new "
            "association to the requester's [peers] address, proposing the SCP role with SCP/SCU Role "
            "Selection, retried [commitment] attempts times. Failed SOP Sequence items carry Failure "
            "Reason 0112 (not in the archive), 0119 (stored under another SOP class) or 0110 (the "
            "stored file is missing or altered). The commitment is that of the archive's disk: there "
            "is no removable media (Storage Media File-Set ID/UID are not sent). Pending reports live "
            "in memory: a report not yet sent when the node stops is not sent after a restart; the "
            "requester asks again. As SCU, `pacsnode commit` sends N-ACTION and waits for the report "
            "on the same or on a new association."
        ),
        scu_notes=(
            "Two activities initiate associations for it. `pacsnode commit` proposes the context "
            "without role selection, sends N-ACTION and waits for the N-EVENT-REPORT on that "
            "association, and with --listen-port also on associations the SCP opens to it (where it "
            "accepts the requestor in the SCP role). The node, when it must report and the requesting "
            "association has ended, proposes the context with SCP/SCU Role Selection, SCU role 0 and "
            "SCP role 1 (PS3.4 J.3.3), sends the N-EVENT-REPORT and releases; an acceptor that does "
            "not grant the SCP role gets no report (the log says so)."
        ),
        status_codes=(
            (Status.SUCCESS, "N-ACTION accepted: the report follows."),
            (0x0110, "Processing failure: the Action Information cannot be read."),
            (0x0117, "Invalid SOP instance: the Requested SOP Instance UID is not the well-known one."),
            (0x0120, "Missing attribute: no Action Information data set."),
            (0x0121, "Missing attribute value: no Transaction UID, or an empty Referenced SOP Sequence."),
            (0x0115, "Invalid argument value: the Transaction UID is not a UID."),
            (0x0123, "No such action type: an Action Type ID other than 1."),
            (0x0131, "Duplicate transaction UID: that transaction is still being processed."),
            (0x0213, f"Resource limitation: more than {_MAX_REFERENCES} instances in one request."),
        ),
    )
