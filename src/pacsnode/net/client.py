"""PS3.8 requestor over asyncio: ``async with associate(...) as assoc`` and typed DIMSE operations."""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.data.transcode import decode, encode
from pacsnode.data.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    uid_name,
)
from pacsnode.dimse.commands import Command, Priority
from pacsnode.dimse.messages import (
    c_cancel_rq,
    c_echo_rq,
    c_find_rq,
    c_get_rq,
    c_move_rq,
    c_store_rq,
    n_action_rq,
    n_create_rq,
    n_event_report_rq,
    n_set_rq,
)
from pacsnode.dimse.status import StatusCategory, category
from pacsnode.net.association import AssociationClosed, AssociationProtocol
from pacsnode.security.tls import HandshakeFailure, describe_handshake_error
from pacsnode.services.base import ServiceHandler
from pacsnode.ul.connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    Role,
)
from pacsnode.ul.errors import AbortReason, AbortSource, RemoteProtocolError
from pacsnode.ul.negotiation import Negotiated, ProposedContext, build_request, interpret_accept
from pacsnode.ul.pdu import AssociateRJ, AssociateRQ, UserIdentityRQ
from pacsnode.ul.state import State

log = logging.getLogger("pacsnode.net")

# A data set longer than this is streamed: its PDUs are written this many bytes at a
# time, waiting for the transport to drain in between (bounded memory for any size).
_STREAM_CHUNK = 1 << 20

# A data set to send: in memory, or as chunks read while sending (a file of any size).
DataSetSource = bytes | bytearray | memoryview | Iterable[bytes]


class AssociationError(Exception):
    """The association could not be established or was lost."""


class ConnectionFailed(AssociationError):
    """No transport connection to the peer (refused, unreachable, timed out)."""


class TlsHandshakeError(ConnectionFailed):
    """The TLS handshake with the peer failed (PS3.15 B.9): the message says why."""

    def __init__(self, message: str, failure: HandshakeFailure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


class AssociationRejectedError(AssociationError):
    """The peer answered A-ASSOCIATE-RJ (PS3.8 Table 9-21)."""

    def __init__(self, reject: AssociateRJ) -> None:
        self.reject = reject
        super().__init__(describe_reject(reject))


class AssociationAbortedError(AssociationError):
    """The peer or the Upper Layer aborted the association."""


class DimseTimeout(AssociationError):
    """No DIMSE response within the DIMSE timeout."""


class NoAcceptedContext(LookupError):
    """No accepted presentation context for this SOP class and transfer syntax (PS3.7 9.1.1.1)."""


_REJECT_TEXT = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def describe_reject(rj: AssociateRJ) -> str:
    """PS3.8 Table 9-21 in words."""
    result = {1: "rejected-permanent", 2: "rejected-transient"}.get(rj.result, f"result {rj.result}")
    reason = _REJECT_TEXT.get((rj.source, rj.reason), f"source {rj.source} reason {rj.reason}")
    return f"association {result}: {reason}"


@dataclass(frozen=True, slots=True)
class EchoResult:
    """The outcome of one C-ECHO."""

    status: int

    @property
    def ok(self) -> bool:
        """True for Success."""
        return category(self.status) is StatusCategory.SUCCESS


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """The outcome of one C-STORE (PS3.4 B.2.3): the status and the peer's Error Comment."""

    status: int
    error_comment: str = ""

    @property
    def category(self) -> StatusCategory:
        """Success, Warning or Failure (PS3.7 Annex C)."""
        return category(self.status)

    @property
    def ok(self) -> bool:
        """True when the peer stored the instance: Success or Warning (PS3.4 B.2.3)."""
        return self.category in (StatusCategory.SUCCESS, StatusCategory.WARNING)


@dataclass(frozen=True, slots=True)
class FindResponse:
    """One C-FIND response (PS3.4 C.4.1.1.4): Pending ones carry a matching Identifier."""

    status: int
    identifier: Dataset | None
    message_id: int  # of the C-FIND-RQ (to cancel it)
    error_comment: str = ""

    @property
    def category(self) -> StatusCategory:
        """Pending, Success, Cancel, Warning or Failure (PS3.7 Annex C)."""
        return category(self.status)

    @property
    def pending(self) -> bool:
        """True while more responses follow (PS3.7 C.2)."""
        return self.category is StatusCategory.PENDING


@dataclass(frozen=True, slots=True)
class RetrieveProgress:
    """One C-MOVE or C-GET response (PS3.4 C.4.2.1.5, C.4.3.1.4): progress, or the final result.

    The sub-operation counts are None when the response did not carry them
    (PS3.7 9.3.3.2, 9.3.4.2: conditional in the final response).  The final
    response may list the SOP Instance UIDs whose sub-operation failed
    (Failed SOP Instance UID List (0008,0058), PS3.4 C.4.2.3.1).
    """

    status: int
    message_id: int  # of the C-MOVE-RQ or C-GET-RQ (to cancel it)
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    failed_sop_instance_uids: tuple[str, ...] = ()
    error_comment: str = ""
    identifier: Dataset | None = None

    @property
    def category(self) -> StatusCategory:
        """Pending, Success, Cancel, Warning or Failure (PS3.7 Annex C)."""
        return category(self.status)

    @property
    def final(self) -> bool:
        """True for the last response (any status but Pending)."""
        return self.category is not StatusCategory.PENDING

    @property
    def ok(self) -> bool:
        """True for a final Success, or a Warning with no failed sub-operation."""
        if self.category is StatusCategory.SUCCESS:
            return True
        return (
            self.category is StatusCategory.WARNING and not self.failed and not self.failed_sop_instance_uids
        )


class RequestorProtocol(AssociationProtocol):
    """The requestor side: sends the A-ASSOCIATE-RQ on connect and resolves ``associated``."""

    def __init__(
        self,
        request: AssociateRQ,
        *,
        handlers: Mapping[str, ServiceHandler],
        max_pdu_length: int,
        artim_timeout: float,
    ) -> None:
        super().__init__(
            Role.REQUESTOR, handlers=handlers, max_pdu_length=max_pdu_length, artim_timeout=artim_timeout
        )
        self.request = request
        self.ul.request_association(request)
        self.associated: asyncio.Future[Negotiated] = self.loop.create_future()
        self.released: asyncio.Future[None] = self.loop.create_future()
        for fut in (self.associated, self.released):
            # Fix (tests/cli): after a reject or an abort nobody awaits ``released``;
            # asyncio then logged "Future exception was never retrieved" at exit
            # (seen under `pacsnode echo` to a peer that rejects).  Awaiting still raises.
            fut.add_done_callback(_mark_retrieved)

    def on_associate_accept(self, ind: AssociationAccepted) -> None:
        try:
            negotiated = interpret_accept(self.request, ind.accept)
        except RemoteProtocolError as exc:
            self.abort(AbortSource.SERVICE_PROVIDER, exc.reason)
            if not self.associated.done():
                self.associated.set_exception(AssociationAbortedError(str(exc)))
            return
        self.established(negotiated)
        if not self.associated.done():
            self.associated.set_result(negotiated)

    def on_associate_reject(self, ind: AssociationRejected) -> None:
        if not self.associated.done():
            self.associated.set_exception(AssociationRejectedError(ind.reject))

    def on_release_confirmed(self) -> None:
        if not self.released.done():
            self.released.set_result(None)

    def on_abort(self, ind: Aborted) -> None:
        super().on_abort(ind)
        text = f"aborted by peer (source {ind.source}, reason {ind.reason})" if ind.by_peer else ind.detail
        for fut in (self.associated, self.released):
            if not fut.done():
                fut.set_exception(AssociationAbortedError(text))

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, _ssl.SSLError):
            # TLS 1.3: a server that refuses our certificate says so after our handshake is over.
            text = f"connection closed by peer: TLS: {describe_handshake_error(exc).reason}"
            for fut in (self.associated, self.released):
                if not fut.done():
                    fut.set_exception(AssociationAbortedError(text))
        super().connection_lost(exc)
        for fut in (self.associated, self.released):
            if not fut.done():
                fut.set_exception(AssociationAbortedError("connection closed by peer"))


def _mark_retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Association:
    """An established association we requested; use its DIMSE operations, then release."""

    def __init__(
        self, protocol: RequestorProtocol, negotiated: Negotiated, dimse_timeout: float | None
    ) -> None:
        self.protocol = protocol
        self.negotiated = negotiated
        self.dimse_timeout = dimse_timeout
        self._outstanding: dict[int, int] = {}  # message ID -> context ID of a C-FIND/GET/MOVE

    @property
    def is_established(self) -> bool:
        """True while DIMSE messages can be exchanged."""
        return self.protocol.ul.state is State.Sta6

    def next_message_id(self) -> int:
        """A fresh Message ID (PS3.7 9.1.1.1: unique among outstanding requests)."""
        return self.protocol.next_message_id()

    async def request(
        self, context_id: int, command: Command, dataset: DataSetSource | None = None
    ) -> AsyncIterator[tuple[Command, bytes | None]]:
        """Send a request and yield its responses until the final (non-Pending) one."""
        proto = self.protocol
        assert command.message_id is not None
        queue = proto.expect_responses(command.message_id)
        try:
            await self._send(context_id, command, dataset)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.dimse_timeout)
                except TimeoutError:
                    raise DimseTimeout(
                        f"no response to message {command.message_id} within {self.dimse_timeout} s"
                    ) from None
                if isinstance(item, BaseException):
                    raise AssociationAbortedError(str(item)) from item
                yield item
                if category(item[0].status or 0) is not StatusCategory.PENDING:
                    return
        finally:
            proto.forget_responses(command.message_id)

    async def _send(self, context_id: int, command: Command, dataset: DataSetSource | None) -> None:
        """Send one message; a big data set goes out in chunks, under transport flow control."""
        proto = self.protocol
        if dataset is None or (
            isinstance(dataset, bytes | bytearray | memoryview) and len(dataset) <= _STREAM_CHUNK
        ):
            small = bytes(dataset) if isinstance(dataset, bytearray | memoryview) else dataset
            proto.send_message(context_id, command, small)
            return
        try:
            await proto.send_stream(context_id, command, dataset, self.dimse_timeout)
        except AssociationClosed as exc:
            raise AssociationAbortedError(str(exc)) from None
        except TimeoutError:
            # A peer that stops reading for the DIMSE timeout is given up on.
            raise DimseTimeout(f"the peer read nothing for {self.dimse_timeout} s") from None

    async def store(
        self,
        dataset: DataSetSource,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        *,
        move_originator: tuple[str, int] | None = None,
        priority: int = Priority.MEDIUM,
    ) -> StoreResponse:
        """C-STORE (PS3.7 9.1.1) of a data set already encoded in `transfer_syntax`.

        The data set is sent as given (no File Meta Information, PS3.10 7.1), on the
        accepted context for (SOP class, transfer syntax); raises `NoAcceptedContext`
        when there is none. `dataset` may be bytes, a memoryview (of an mmap, say) or an
        iterable of chunks (read from a file while sending): past 1 MiB it is streamed
        in PDUs of the peer's maximum length, waiting for the socket between chunks.
        `move_originator` is (AE title, Message ID) of the C-MOVE this store is a
        sub-operation of (PS3.7 9.3.1.1).
        """
        ctx = self.negotiated.context_for(sop_class_uid, transfer_syntax)
        if ctx is None:
            raise NoAcceptedContext(
                f"no accepted presentation context for {sop_class_uid} in {transfer_syntax}"
            )
        originator, originator_id = move_originator if move_originator is not None else (None, None)
        command = c_store_rq(
            self.next_message_id(), sop_class_uid, sop_instance_uid, priority, originator, originator_id
        )
        status, comment = 0xFFFF, ""
        async for rsp, _ in self.request(ctx.context_id, command, dataset):
            status = rsp.status if rsp.status is not None else 0xFFFF
            comment = rsp.error_comment or ""
        return StoreResponse(status, comment)

    async def echo(self) -> EchoResult:
        """C-ECHO (PS3.7 9.1.5) on the Verification presentation context."""
        ctx = self.negotiated.context_for(VERIFICATION_SOP_CLASS)
        if ctx is None:
            raise AssociationError("the peer did not accept the Verification SOP class")
        status = 0xFFFF
        async for rsp, _ in self.request(ctx.context_id, c_echo_rq(self.next_message_id())):
            status = rsp.status if rsp.status is not None else 0xFFFF
        return EchoResult(status)

    async def n_create(
        self, sop_class_uid: str, sop_instance_uid: str | None, dataset: Dataset
    ) -> tuple[Command, Dataset | None]:
        """N-CREATE (PS3.7 10.1.5): the final response and its attribute list, if any."""
        return await self._n_request(sop_class_uid, dataset, n_create_rq, sop_instance_uid)

    async def n_set(
        self, sop_class_uid: str, sop_instance_uid: str, modifications: Dataset
    ) -> tuple[Command, Dataset | None]:
        """N-SET (PS3.7 10.1.3): the final response and its attribute list, if any."""
        return await self._n_request(sop_class_uid, modifications, n_set_rq, sop_instance_uid)

    async def n_action(
        self, sop_class_uid: str, sop_instance_uid: str, action_type_id: int, information: Dataset | None
    ) -> tuple[Command, Dataset | None]:
        """N-ACTION (PS3.7 10.1.4): the final response and its Action Reply, if any."""
        context_id = self._query_context(sop_class_uid)
        command = n_action_rq(
            self.next_message_id(), sop_class_uid, sop_instance_uid, action_type_id, information is not None
        )
        return await self._n_exchange(context_id, command, information)

    async def n_event_report(
        self, sop_class_uid: str, sop_instance_uid: str, event_type_id: int, information: Dataset | None
    ) -> tuple[Command, Dataset | None]:
        """N-EVENT-REPORT (PS3.7 10.1.1), sent by us in the SCP role: the response and its data set."""
        context_id = self._query_context(sop_class_uid)
        command = n_event_report_rq(
            self.next_message_id(), sop_class_uid, sop_instance_uid, event_type_id, information is not None
        )
        return await self._n_exchange(context_id, command, information)

    async def _n_request(
        self, sop_class_uid: str, dataset: Dataset, make: Any, sop_instance_uid: str | None
    ) -> tuple[Command, Dataset | None]:
        context_id = self._query_context(sop_class_uid)
        return await self._n_exchange(
            context_id, make(self.next_message_id(), sop_class_uid, sop_instance_uid), dataset
        )

    async def _n_exchange(
        self, context_id: int, command: Command, dataset: Dataset | None
    ) -> tuple[Command, Dataset | None]:
        data = (
            encode(dataset, self.negotiated.contexts[context_id].transfer_syntax)
            if dataset is not None
            else None
        )
        final: tuple[Command, Dataset | None] | None = None
        async for rsp, body in self.request(context_id, command, data):
            final = (rsp, self._decode(context_id, body))
        assert final is not None
        return final

    def _query_context(self, sop_class_uid: str) -> int:
        ctx = self.negotiated.context_for(sop_class_uid)
        if ctx is None:
            raise NoAcceptedContext(f"the peer did not accept {uid_name(sop_class_uid)}")
        return ctx.context_id

    def _decode(self, context_id: int, data: bytes | None) -> Dataset | None:
        if not data:
            return None
        # PS3.7 9.3.2.2: the Identifier is encoded in the context's transfer syntax; its
        # text is decoded with its own Specific Character Set (PS3.5 6.1.2.3), by pydicom.
        return decode(data, self.negotiated.contexts[context_id].transfer_syntax)

    async def _operation(
        self, context_id: int, command: Command, identifier: Dataset
    ) -> AsyncIterator[tuple[Command, bytes | None]]:
        """Send a Query/Retrieve request with its Identifier; yield responses; cancellable meanwhile."""
        assert command.message_id is not None
        data = encode(identifier, self.negotiated.contexts[context_id].transfer_syntax)
        self._outstanding[command.message_id] = context_id
        try:
            async for item in self.request(context_id, command, data):
                yield item
        finally:
            self._outstanding.pop(command.message_id, None)

    async def find(
        self, identifier: Dataset, sop_class_uid: str, *, priority: int = Priority.MEDIUM
    ) -> AsyncIterator[FindResponse]:
        """C-FIND (PS3.7 9.1.2, PS3.4 C.4.1): yield each response, the matches, then the final one.

        `identifier` is encoded in the accepted context's transfer syntax; raises
        `NoAcceptedContext` when the peer did not accept `sop_class_uid`.  Call
        `cancel(response.message_id)` to stop the query: the peer then ends with
        Cancel (FE00), possibly after a few more matches.
        """
        context_id = self._query_context(sop_class_uid)
        message_id = self.next_message_id()
        command = c_find_rq(message_id, sop_class_uid, priority)
        async for rsp, data in self._operation(context_id, command, identifier):
            yield FindResponse(
                rsp.status if rsp.status is not None else 0xFFFF,
                self._decode(context_id, data),
                message_id,
                rsp.error_comment or "",
            )

    async def move(
        self,
        identifier: Dataset,
        sop_class_uid: str,
        destination_ae: str,
        *,
        priority: int = Priority.MEDIUM,
    ) -> AsyncIterator[RetrieveProgress]:
        """C-MOVE (PS3.7 9.1.4, PS3.4 C.4.2): the peer stores the matches to `destination_ae`.

        Yields a `RetrieveProgress` per response; the last one (``final``) has the
        status, the counts and the Failed SOP Instance UID List.
        """
        context_id = self._query_context(sop_class_uid)
        command = c_move_rq(self.next_message_id(), sop_class_uid, destination_ae, priority)
        async for rsp, data in self._operation(context_id, command, identifier):
            yield self._progress(context_id, rsp, data)

    async def get(
        self, identifier: Dataset, sop_class_uid: str, *, priority: int = Priority.MEDIUM
    ) -> AsyncIterator[RetrieveProgress]:
        """C-GET (PS3.7 9.1.3, PS3.4 C.4.3): the peer sends the matches on this association.

        The association must have been opened with the Storage SOP classes proposed
        in the SCP role and a handler for them (`get_contexts` and
        `pacsnode.net.receive.InstanceWriter`): the C-STORE sub-operations arrive
        while this iterates.  Yields as `move` does.
        """
        context_id = self._query_context(sop_class_uid)
        command = c_get_rq(self.next_message_id(), sop_class_uid, priority)
        async for rsp, data in self._operation(context_id, command, identifier):
            yield self._progress(context_id, rsp, data)

    def _progress(self, context_id: int, rsp: Command, data: bytes | None) -> RetrieveProgress:
        identifier = self._decode(context_id, data)
        failed_uids: tuple[str, ...] = ()
        if identifier is not None:
            # PS3.4 C.4.2.3.1 / C.4.3.3.1: Failed SOP Instance UID List (0008,0058).
            value = identifier.get("FailedSOPInstanceUIDList")
            if value:
                failed_uids = tuple(str(v) for v in ([value] if isinstance(value, str) else value))
        return RetrieveProgress(
            rsp.status if rsp.status is not None else 0xFFFF,
            rsp.message_id_being_responded_to or 0,
            rsp.number_of_remaining_suboperations,
            rsp.number_of_completed_suboperations,
            rsp.number_of_failed_suboperations,
            rsp.number_of_warning_suboperations,
            failed_uids,
            rsp.error_comment or "",
            identifier,
        )

    def cancel(self, message_id: int) -> None:
        """C-CANCEL-RQ (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3) for our C-FIND, C-GET or C-MOVE `message_id`.

        It goes on the request's presentation context; the request's iterator goes on
        until the peer's final response (Cancel, or whatever came first).  Raises
        `LookupError` when no such request is outstanding.
        """
        context_id = self._outstanding.get(message_id)
        if context_id is None:
            raise LookupError(f"no outstanding C-FIND, C-GET or C-MOVE with message ID {message_id}")
        self.protocol.send_message(context_id, c_cancel_rq(message_id))

    async def release(self, timeout: float | None = 30.0) -> None:
        """A-RELEASE (PS3.8 7.2); aborts if the peer does not answer in time."""
        proto = self.protocol
        if proto.ul.state is not State.Sta6:
            return
        proto.ul.release()
        proto.flush()
        try:
            await asyncio.wait_for(asyncio.shield(proto.released), timeout)
        except TimeoutError:
            self.abort()
            return
        await proto.closed

    def abort(self) -> None:
        """A-ABORT (PS3.8 7.3) and close."""
        self.protocol.abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)


def verification_context() -> ProposedContext:
    """The Verification SOP class over the uncompressed transfer syntaxes."""
    return ProposedContext(VERIFICATION_SOP_CLASS, UNCOMPRESSED_TRANSFER_SYNTAXES)


# PS3.5 10.1: every peer supports Implicit VR Little Endian; Explicit is proposed first.
QUERY_TRANSFER_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def query_contexts(sop_class_uids: Iterable[str]) -> list[ProposedContext]:
    """One context per Query/Retrieve SOP class, over Explicit and Implicit VR Little Endian."""
    return [ProposedContext(uid, QUERY_TRANSFER_SYNTAXES) for uid in sop_class_uids]


def get_contexts(
    sop_class_uids: Iterable[str],
    storage_sop_classes: Iterable[str],
    extra_transfer_syntaxes: Sequence[str] = (),
) -> list[ProposedContext]:
    """The contexts of a C-GET association: the C-GET SOP classes, and Storage in the SCP role.

    PS3.4 C.4.3.1.1: the C-GET SCU is the Storage SCP of the sub-operations on the same
    association, so each Storage SOP class is proposed with SCP/SCU Role Selection
    (PS3.7 D.3.3.4) asking for the SCP role only: one context over Explicit and
    Implicit VR Little Endian, after one per transfer syntax of
    `extra_transfer_syntaxes` (the peer picks one syntax per context, PS3.8 9.3.3.2,
    so an instance it holds compressed needs a context of its own to come as it is).
    At most 128 contexts in all (PS3.8 9.3.2.2): the Storage SOP classes that do not
    fit, at the end of `storage_sop_classes`, are left out.
    """
    contexts = query_contexts(sop_class_uids)
    # The extra syntaxes come first: a peer that takes the first context of a class
    # (DCMTK's dcmqrscp) then sends its instances of that syntax untouched.
    syntaxes = [*((ts,) for ts in dict.fromkeys(extra_transfer_syntaxes)), QUERY_TRANSFER_SYNTAXES]
    fit = max((128 - len(contexts)) // len(syntaxes), 0)
    for uid in list(dict.fromkeys(storage_sop_classes))[:fit]:
        contexts += [ProposedContext(uid, ts, scu_role=False, scp_role=True) for ts in syntaxes]
    return contexts


@asynccontextmanager
async def associate(
    host: str,
    port: int,
    *,
    called_ae_title: str = "ANY-SCP",
    calling_ae_title: str = "PACSNODE",
    contexts: Sequence[ProposedContext] | None = None,
    max_pdu_length: int = 262_144,
    connect_timeout: float = 30.0,
    acse_timeout: float = 30.0,
    dimse_timeout: float | None = None,
    user_identity: UserIdentityRQ | None = None,
    extended_negotiation: Mapping[str, bytes] | None = None,
    handlers: Mapping[str, ServiceHandler] | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[Association]:
    """Open an association, yield it, and release it on exit (abort on error)."""
    assoc = await open_association(
        host,
        port,
        called_ae_title=called_ae_title,
        calling_ae_title=calling_ae_title,
        contexts=contexts,
        max_pdu_length=max_pdu_length,
        connect_timeout=connect_timeout,
        acse_timeout=acse_timeout,
        dimse_timeout=dimse_timeout,
        user_identity=user_identity,
        extended_negotiation=extended_negotiation,
        handlers=handlers,
        ssl=ssl,
        server_hostname=server_hostname,
    )
    try:
        yield assoc
    except BaseException:
        assoc.abort()
        raise
    await assoc.release(acse_timeout)


async def open_association(
    host: str,
    port: int,
    *,
    called_ae_title: str = "ANY-SCP",
    calling_ae_title: str = "PACSNODE",
    contexts: Sequence[ProposedContext] | None = None,
    max_pdu_length: int = 262_144,
    connect_timeout: float = 30.0,
    acse_timeout: float = 30.0,
    dimse_timeout: float | None = None,
    user_identity: UserIdentityRQ | None = None,
    extended_negotiation: Mapping[str, bytes] | None = None,
    handlers: Mapping[str, ServiceHandler] | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Association:
    """Connect and negotiate; the caller must ``release()`` or ``abort()`` the result.

    ``ssl``: DICOM over TLS (PS3.15 B.9) with this client context (`pacsnode.security.tls`);
    the server certificate is checked against ``server_hostname`` (default ``host``) when the
    context checks host names. A failed handshake raises `TlsHandshakeError` saying why.
    """
    rq = build_request(
        called_ae_title,
        calling_ae_title,
        contexts or [verification_context()],
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        max_pdu_length=max_pdu_length,
        extended_negotiation=extended_negotiation,
        user_identity=user_identity,
    )
    loop = asyncio.get_running_loop()
    proto = RequestorProtocol(
        rq, handlers=handlers or {}, max_pdu_length=max_pdu_length, artim_timeout=acse_timeout
    )
    tls: dict[str, Any] = {}
    if ssl is not None:
        tls = {"ssl": ssl, "server_hostname": server_hostname or host}
        tls["ssl_handshake_timeout"] = connect_timeout
    try:
        await asyncio.wait_for(loop.create_connection(lambda: proto, host, port, **tls), connect_timeout)
    except TimeoutError:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: timed out") from None
    except _ssl.SSLError as exc:
        failure = describe_handshake_error(exc, connect_timeout)
        text = f"TLS handshake with {host}:{port} failed: {failure.reason}"
        raise TlsHandshakeError(text, failure) from None
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    try:
        negotiated = await asyncio.wait_for(asyncio.shield(proto.associated), acse_timeout)
    except TimeoutError:
        proto.abort()
        raise AssociationError(f"no answer to A-ASSOCIATE-RQ within {acse_timeout} s") from None
    except AssociationAbortedError as exc:
        await proto.closed
        if ssl is None or "TLS" in str(exc) or str(exc).startswith("aborted by peer"):
            raise
        # Closed with no PDU and no TLS alert (Python's TLS servers send none): most likely the
        # peer refused our certificate, or wanted one, once its side of the handshake ended.
        raise AssociationAbortedError(
            f"{exc} right after the TLS handshake: the peer may want a client certificate, or refuse ours"
        ) from None
    except AssociationError:
        await proto.closed
        raise
    return Association(proto, negotiated, dimse_timeout)


__all__ = [
    "Association",
    "AssociationAbortedError",
    "AssociationClosed",
    "AssociationError",
    "AssociationRejectedError",
    "ConnectionFailed",
    "DataSetSource",
    "DimseTimeout",
    "EchoResult",
    "FindResponse",
    "NoAcceptedContext",
    "RetrieveProgress",
    "StoreResponse",
    "TlsHandshakeError",
    "associate",
    "get_contexts",
    "open_association",
    "query_contexts",
]
