"""PS3.8 requestor over asyncio: ``async with associate(...) as assoc`` and typed DIMSE operations."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.data.uids import UNCOMPRESSED_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
from pacsnode.dimse.commands import Command, Priority, encode_command
from pacsnode.dimse.fragmentation import fragment, fragment_dataset_stream
from pacsnode.dimse.messages import c_echo_rq, c_store_rq
from pacsnode.dimse.status import StatusCategory, category
from pacsnode.net.association import AssociationClosed, AssociationProtocol
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
        self._ids = itertools.count(1)

    @property
    def is_established(self) -> bool:
        """True while DIMSE messages can be exchanged."""
        return self.protocol.ul.state is State.Sta6

    def next_message_id(self) -> int:
        """A fresh Message ID (PS3.7 9.1.1.1: unique among outstanding requests)."""
        return next(self._ids) & 0xFFFF or next(self._ids)

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
        pdus: Iterator[bytes]
        if dataset is None or isinstance(dataset, bytes | bytearray | memoryview):
            if dataset is None or len(dataset) <= _STREAM_CHUNK:
                small = bytes(dataset) if isinstance(dataset, bytearray | memoryview) else dataset
                proto.send_message(context_id, command, small)
                return
            if not command.has_dataset:
                raise ValueError("the command's Command Data Set Type says no data set follows")
            # PS3.8 9.3.1 / D.1: no PDU longer than the maximum length the peer announced.
            view = dataset if isinstance(dataset, memoryview) else memoryview(dataset)
            pdus = fragment(context_id, encode_command(command), view, self.negotiated.peer_max_pdu_length)
        else:
            if not command.has_dataset:
                raise ValueError("the command's Command Data Set Type says no data set follows")
            peer_max = self.negotiated.peer_max_pdu_length
            pdus = itertools.chain(
                fragment(context_id, encode_command(command), None, peer_max),
                fragment_dataset_stream(context_id, dataset, peer_max),
            )
        try:
            batch: list[bytes] = []
            size = 0
            for pdu in pdus:
                batch.append(pdu)
                size += len(pdu)
                if size >= _STREAM_CHUNK:
                    await self._write(batch)
                    batch, size = [], 0
            if batch:
                await self._write(batch)
        finally:
            # Close the generators: they release their view of `dataset` (an mmap cannot be
            # closed while a view of it is held) and the chunk source.
            close = getattr(pdus, "close", None)
            if close is not None:
                close()
            close = getattr(dataset, "close", None)
            if close is not None and not isinstance(dataset, bytes | bytearray | memoryview):
                close()

    async def _write(self, pdus: list[bytes]) -> None:
        proto = self.protocol
        if proto.ul.state not in (State.Sta6, State.Sta8):
            raise AssociationAbortedError(f"association ended while sending ({proto.ul.state.name})")
        proto.ul.send_pdata(b"".join(pdus))
        proto.flush()
        # Wait for the socket to drain below the transport's high-water mark (set again
        # when the connection is lost, so an abort never leaves us waiting here); a peer
        # that stops reading for the DIMSE timeout is given up on.
        try:
            await asyncio.wait_for(proto.writable(), self.dimse_timeout)
        except TimeoutError:
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
) -> Association:
    """Connect and negotiate; the caller must ``release()`` or ``abort()`` the result."""
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
    try:
        await asyncio.wait_for(loop.create_connection(lambda: proto, host, port), connect_timeout)
    except TimeoutError:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: timed out") from None
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    try:
        negotiated = await asyncio.wait_for(asyncio.shield(proto.associated), acse_timeout)
    except TimeoutError:
        proto.abort()
        raise AssociationError(f"no answer to A-ASSOCIATE-RQ within {acse_timeout} s") from None
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
    "NoAcceptedContext",
    "StoreResponse",
    "associate",
    "open_association",
]
