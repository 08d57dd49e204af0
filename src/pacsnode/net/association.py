"""PS3.8 / PS3.7 over asyncio: one association's transport, timers and DIMSE dispatch (both roles)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from pacsnode.dimse.assembler import CommandReceived, DataSetFragment, MessageAssembler
from pacsnode.dimse.commands import Command, CommandField, encode_command
from pacsnode.dimse.fragmentation import encode_message, fragment, fragment_dataset_stream
from pacsnode.dimse.messages import response_to
from pacsnode.dimse.status import Status
from pacsnode.services.base import DataSetSink, DimseRequest, MemorySink, ServiceHandler
from pacsnode.ul.connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DataReceived,
    Indication,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    UpperLayer,
)
from pacsnode.ul.errors import AbortReason, AbortSource, RemoteProtocolError
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext
from pacsnode.ul.state import State

log = logging.getLogger("pacsnode.net")

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_DEFAULT_IN_MEMORY_LIMIT = 64 << 20
_STREAM_CHUNK = 1 << 20  # bytes of PDUs queued before waiting for the socket to drain


class DimseStatusError(Exception):
    """Raised by a service handler: answer the request with this status (PS3.7 Annex C)."""

    def __init__(self, status: int, comment: str = "") -> None:
        super().__init__(comment or f"status 0x{status:04X}")
        self.status = status
        self.comment = comment


class AssociationClosed(Exception):
    """The association ended (released, aborted or the connection dropped) before the operation did."""


class _Responder:
    __slots__ = ("_context_id", "_message_id", "_protocol")

    def __init__(self, protocol: AssociationProtocol, context_id: int, message_id: int) -> None:
        self._protocol = protocol
        self._context_id = context_id
        self._message_id = message_id

    def send(self, command: Command, dataset: bytes | None = None) -> None:
        self._protocol.send_message(self._context_id, command, dataset)

    @property
    def cancelled(self) -> bool:
        return self._message_id in self._protocol.cancelled

    def on_cancel(self, callback: Callable[[], None]) -> None:
        self._protocol.cancel_callbacks.setdefault(self._message_id, []).append(callback)

    async def drain(self) -> None:
        await self._protocol.writable()

    async def sub_request(
        self, context_id: int, command: Command, dataset: bytes | Iterable[bytes] | None = None
    ) -> tuple[Command, bytes | None]:
        protocol = self._protocol
        assert command.message_id is not None
        queue = protocol.expect_responses(command.message_id)
        try:
            if dataset is None or isinstance(dataset, bytes):
                protocol.send_message(context_id, command, dataset)
            else:
                await protocol.send_stream(context_id, command, dataset)
            item = await queue.get()
        finally:
            protocol.forget_responses(command.message_id)
        if isinstance(item, BaseException):
            raise AssociationClosed(str(item)) from item
        return item

    def next_message_id(self) -> int:
        return self._protocol.next_message_id()

    @property
    def is_open(self) -> bool:
        return self._protocol.ul.state is State.Sta6


class AssociationProtocol(asyncio.Protocol):
    """Glue between an asyncio transport and the sans-IO Upper Layer and DIMSE cores."""

    def __init__(
        self,
        role: Role,
        *,
        handlers: Mapping[str, ServiceHandler],
        max_pdu_length: int,
        artim_timeout: float,
        in_memory_limit: int = _DEFAULT_IN_MEMORY_LIMIT,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.ul = UpperLayer(role, max_pdata_length=max_pdu_length)
        self.handlers = handlers
        self.max_pdu_length = max_pdu_length
        self.artim_timeout = artim_timeout
        self.in_memory_limit = in_memory_limit
        self.transport: asyncio.Transport | None = None
        self.peer: str = "?"
        self.negotiated: Negotiated | None = None
        self.assembler: MessageAssembler | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.last_rx = self.loop.time()
        self._peer_max = 0
        self._sock: socket.socket | None = None
        self._artim: asyncio.TimerHandle | None = None
        self._artim_generation = 0
        self._inflight: asyncio.Task[None] | None = None
        self._queue: deque[DimseRequest] = deque()
        self._receiving: tuple[Command, NegotiatedContext, DataSetSink] | None = None
        self._receiving_response: tuple[Command, MemorySink] | None = None
        self._release_deferred = False
        self._reading_paused = False
        self._response_queues: dict[int, asyncio.Queue[tuple[Command, bytes | None] | BaseException]] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self.cancelled: set[int] = set()
        self.cancel_callbacks: dict[int, list[Callable[[], None]]] = {}
        self._message_ids = itertools.count(1)

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Nagle would hold back the last PDU of a message waiting for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if _TCP_QUICKACK is not None:
                # uvloop hands out a pseudo-socket whose every call builds a new
                # socket object; a dup of the descriptor makes the per-read
                # setsockopt one plain system call.
                with contextlib.suppress(OSError):
                    self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self.ul.transport_connected()
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        if self._sock is not None and _TCP_QUICKACK is not None:
            # ACK at once, so a peer with Nagle on sends its next segment without
            # waiting for our delayed ACK (Linux re-arms delayed ACKs, so per read).
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        try:
            indications = self.ul.receive_data(data)
            if self.ul.last_error is not None:
                log.warning("%s: protocol error, A-ABORT sent: %s", self.peer, self.ul.last_error)
                self.ul.last_error = None
            for ind in indications:
                self._on_indication(ind)
            self.flush()
        except Exception:
            # A bug of ours must cost this association only, never the process.
            log.exception("%s: internal error, aborting the association", self.peer)
            self.abort(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for ind in self.ul.connection_lost():
            self._on_indication(ind)
        self._cleanup(AssociationClosed("connection closed" + (f": {exc}" if exc else "")))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ------------------------------------------------------------ plumbing

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        out = self.ul.data_to_send()
        if out:
            transport.write(out)
        if self.ul.artim_running:
            if self._artim is None or self._artim_generation != self.ul.artim_generation:
                if self._artim is not None:
                    self._artim.cancel()
                self._artim_generation = self.ul.artim_generation
                self._artim = self.loop.call_later(self.artim_timeout, self._on_artim)
        elif self._artim is not None:
            self._artim.cancel()
            self._artim = None
        # PS3.8 AA-1/AA-7/AA-8 wait for the peer to close under ARTIM; after an
        # A-ABORT we close at once, as DCMTK does, so that a misbehaving peer
        # cannot hold a connection slot for the ARTIM time.
        if (self.ul.close_requested or self.ul.sent_abort) and not transport.is_closing():
            transport.close()

    def _on_artim(self) -> None:
        self._artim = None
        log.info("%s: ARTIM timer expired in %s, closing", self.peer, self.ul.state.name)
        for ind in self.ul.artim_expired():
            self._on_indication(ind)
        self.flush()

    def _cleanup(self, reason: BaseException) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None
        if self._receiving is not None:
            self._receiving[2].discard()
            self._receiving = None
        self._queue.clear()
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        for q in self._response_queues.values():
            q.put_nowait(reason)
        self._writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self, source: int = AbortSource.SERVICE_USER, reason: int = AbortReason.NOT_SPECIFIED) -> None:
        """Send an A-ABORT (or just close, if not yet associated) and drop the connection."""
        if self.ul.state is State.Sta1:
            return
        self.ul.abort(source, reason)
        self.flush()  # closes the transport: the A-ABORT was sent, or close was requested

    # ------------------------------------------------------------ indications

    def _on_indication(self, ind: Indication) -> None:
        if isinstance(ind, DataReceived):
            self._on_data(ind)
        elif isinstance(ind, AssociationRequested):
            self.on_associate_request(ind)
        elif isinstance(ind, AssociationAccepted):
            self.on_associate_accept(ind)
        elif isinstance(ind, AssociationRejected):
            self.on_associate_reject(ind)
        elif isinstance(ind, ReleaseRequested):
            if self._inflight is not None or self._queue or self._receiving is not None:
                # PS3.7: finish the operation in progress before confirming the release.
                self._release_deferred = True
            else:
                self._answer_release()
        elif isinstance(ind, ReleaseConfirmed):
            self.on_release_confirmed()
        elif isinstance(ind, Aborted):
            self.on_abort(ind)

    def _answer_release(self) -> None:
        if self.ul.state in (State.Sta8, State.Sta9, State.Sta12):
            self.ul.release_response()

    def on_associate_request(self, ind: AssociationRequested) -> None:
        """Acceptor: answer the A-ASSOCIATE-RQ."""
        self.abort(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)

    def on_associate_accept(self, ind: AssociationAccepted) -> None:
        """Requestor: the association was accepted."""

    def on_associate_reject(self, ind: AssociationRejected) -> None:
        """Requestor: the association was rejected."""

    def on_release_confirmed(self) -> None:
        """The peer confirmed our A-RELEASE request."""

    def on_abort(self, ind: Aborted) -> None:
        """A-ABORT or A-P-ABORT indication."""
        if ind.by_peer:
            log.info("%s: peer aborted (source %d, reason %d)", self.peer, ind.source, ind.reason)
        elif ind.detail != "transport connection closed":
            log.warning("%s: association aborted: %s", self.peer, ind.detail)

    def established(self, negotiated: Negotiated) -> None:
        """Start DIMSE on a negotiated association."""
        self.negotiated = negotiated
        self._peer_max = negotiated.peer_max_pdu_length
        self.assembler = MessageAssembler(accepted_context_ids=frozenset(negotiated.contexts))

    # ------------------------------------------------------------ DIMSE in

    def _on_data(self, ind: DataReceived) -> None:
        assembler = self.assembler
        if assembler is None:
            self.abort(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)
            return
        try:
            for pdv in ind.pdvs:
                for event in assembler.receive(pdv):
                    if isinstance(event, DataSetFragment):
                        self._on_fragment(event)
                    else:
                        self._on_command(event)
        except RemoteProtocolError as exc:
            log.warning("%s: DIMSE protocol error, A-ABORT sent: %s", self.peer, exc)
            self.abort(AbortSource.SERVICE_PROVIDER, exc.reason)

    def _on_command(self, event: CommandReceived) -> None:
        cmd = event.command
        if cmd.command_field & 0x8000:
            if cmd.has_dataset:
                self._receiving_response = (cmd, MemorySink(self.in_memory_limit))
            else:
                self._deliver_response(cmd, None)
            return
        if cmd.command_field == CommandField.C_CANCEL_RQ:
            # PS3.7 9.3.2.3: cancel the operation with this Message ID, if still running.
            cancelled = cmd.message_id_being_responded_to
            if cancelled is not None:
                self.cancelled.add(cancelled)
                for callback in self.cancel_callbacks.pop(cancelled, []):
                    callback()
            return
        assert self.negotiated is not None
        context = self.negotiated.contexts[event.context_id]
        handler = self.handlers.get(context.abstract_syntax)
        if cmd.has_dataset:
            sink: DataSetSink | None = None
            if not self.permits(cmd, context):
                sink = _DiscardSink()  # refused in _run: the data set is not kept
            elif handler is not None:
                sink = handler.sink_for(cmd, context, self.negotiated)
            self._receiving = (cmd, context, sink or MemorySink(self.in_memory_limit))
            return
        self._submit(DimseRequest(cmd, context, self.negotiated))

    def _on_fragment(self, event: DataSetFragment) -> None:
        if self._receiving_response is not None:
            rsp, msink = self._receiving_response
            try:
                msink.write(event.data)
            except MemoryError as exc:
                raise RemoteProtocolError(str(exc)) from None
            if event.is_last:
                self._receiving_response = None
                self._deliver_response(rsp, msink.finish())
            return
        assert self._receiving is not None and self.negotiated is not None
        cmd, context, sink = self._receiving
        try:
            sink.write(event.data)
        except MemoryError as exc:
            sink.discard()
            raise RemoteProtocolError(f"data set refused: {exc}") from None
        if event.is_last:
            self._receiving = None
            dataset = sink.finish()
            self._submit(DimseRequest(cmd, context, self.negotiated, dataset, sink))

    def _submit(self, request: DimseRequest) -> None:
        if self._inflight is not None or self._queue:
            # The peer went past the asynchronous operations window (1, PS3.7 D.3.3.3):
            # keep this request, but read nothing more until the queue is served, so
            # that memory stays bounded whatever the peer sends.
            self._queue.append(request)
            if self.transport is not None and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
        else:
            self._run(request)

    def permits(self, command: Command, context: NegotiatedContext) -> bool:
        """Whether the peer may make this request (access control, PS3.15 B.1); cheap, no side effect."""
        return True

    def refused(self, request: DimseRequest) -> str:
        """Record a request ``permits`` refused; the Error Comment of its 0124H answer."""
        return "not authorized"

    def _run(self, request: DimseRequest) -> None:
        handler = self.handlers.get(request.context.abstract_syntax)
        responder = _Responder(self, request.context.context_id, request.command.message_id or 0)
        if not self.permits(request.command, request.context):
            # PS3.7 C.5.3 (0124H Refused: Not authorized); the association goes on.
            comment = self.refused(request)
            responder.send(_failure(request.command, Status.NOT_AUTHORIZED, comment))
            return
        if handler is None:
            # PS3.7 Annex C (0122H SOP Class Not Supported): negotiated, but nothing serves it.
            responder.send(response_to(request.command, Status.SOP_CLASS_NOT_SUPPORTED))
            return
        try:
            result = handler.handle(request, responder)
        except DimseStatusError as exc:
            responder.send(_failure(request.command, exc.status, exc.comment))
            return
        except Exception as exc:
            log.exception("%s: handler failed for message %s", self.peer, request.command.message_id)
            responder.send(_failure(request.command, Status.PROCESSING_FAILURE, str(exc)))
            return
        if result is not None:
            self._inflight = self.loop.create_task(self._await_handler(result, request, responder))

    async def _await_handler(
        self, result: Awaitable[None], request: DimseRequest, responder: _Responder
    ) -> None:
        try:
            await result
        except DimseStatusError as exc:
            responder.send(_failure(request.command, exc.status, exc.comment))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: handler failed for message %s", self.peer, request.command.message_id)
            responder.send(_failure(request.command, Status.PROCESSING_FAILURE, str(exc)))
        finally:
            self._inflight = None
        self.cancelled.discard(request.command.message_id or 0)
        self.cancel_callbacks.pop(request.command.message_id or 0, None)
        while self._queue and self._inflight is None:
            self._run(self._queue.popleft())
        if self._reading_paused and not self._queue and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._release_deferred and self._inflight is None and not self._queue:
            self._release_deferred = False
            self._answer_release()
        self.flush()

    # ------------------------------------------------------------ DIMSE out

    def next_message_id(self) -> int:
        """A Message ID for a request of ours (PS3.7 9.1.1.1: unique among outstanding requests)."""
        return next(self._message_ids) & 0xFFFF or next(self._message_ids)

    def send_message(
        self, context_id: int, command: Command, dataset: bytes | memoryview | None = None
    ) -> None:
        """Fragment and send one DIMSE message on a presentation context."""
        self._write_pdus([encode_message(context_id, command, dataset, self._peer_max)])

    async def send_stream(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | bytearray | memoryview | Iterable[bytes],
        timeout: float | None = None,
    ) -> None:
        """Send a message with a big data set (in memory, mapped, or as chunks) under flow control.

        PS3.8 9.3.1 / D.1: PDUs of the peer's maximum length; at most about 1 MiB is
        queued before waiting for the socket to drain (raises TimeoutError after
        ``timeout`` seconds without progress), so memory stays bounded.
        """
        if not command.has_dataset:
            raise ValueError("the command's Command Data Set Type says no data set follows")
        pdus: Iterator[bytes]
        if isinstance(dataset, bytes | bytearray | memoryview):
            view = dataset if isinstance(dataset, memoryview) else memoryview(dataset)
            pdus = fragment(context_id, encode_command(command), view, self._peer_max)
        else:
            pdus = itertools.chain(
                fragment(context_id, encode_command(command), None, self._peer_max),
                fragment_dataset_stream(context_id, dataset, self._peer_max),
            )
        batch: list[bytes] = []
        size = 0
        try:
            for pdu in pdus:
                batch.append(pdu)
                size += len(pdu)
                if size >= _STREAM_CHUNK:
                    self._write_pdus(batch)
                    batch, size = [], 0
                    # Set again when the connection is lost: an abort never leaves us here.
                    await asyncio.wait_for(self.writable(), timeout)
            if batch:
                self._write_pdus(batch)
                await asyncio.wait_for(self.writable(), timeout)
        finally:
            # Close the generators: they release their view of `dataset` (an mmap cannot be
            # closed while a view of it is held) and the chunk source.
            close = getattr(pdus, "close", None)
            if close is not None:
                close()
            close = getattr(dataset, "close", None)
            if close is not None and not isinstance(dataset, bytes | bytearray | memoryview):
                close()

    def _write_pdus(self, pdus: list[bytes]) -> None:
        """Queue whole P-DATA-TF PDUs and write them out (PS3.8: only in Sta6, or Sta8 before release)."""
        if self.ul.state not in (State.Sta6, State.Sta8):
            raise AssociationClosed(f"cannot send in {self.ul.state.name}: the association has ended")
        self.ul.send_pdata(b"".join(pdus))
        self.flush()

    async def writable(self) -> None:
        """Wait until the transport's write buffer has drained below its high-water mark."""
        await self._writable.wait()

    def expect_responses(
        self, message_id: int
    ) -> asyncio.Queue[tuple[Command, bytes | None] | BaseException]:
        """Register for the responses to a request we are about to send."""
        queue: asyncio.Queue[tuple[Command, bytes | None] | BaseException] = asyncio.Queue()
        self._response_queues[message_id] = queue
        return queue

    def forget_responses(self, message_id: int) -> None:
        """Stop routing responses for a message ID."""
        self._response_queues.pop(message_id, None)

    def _deliver_response(self, cmd: Command, dataset: bytes | None) -> None:
        queue = self._response_queues.get(cmd.message_id_being_responded_to or -1)
        if queue is None:
            log.warning(
                "%s: response to unknown message ID %s ignored", self.peer, cmd.message_id_being_responded_to
            )
            return
        queue.put_nowait((cmd, dataset))


class _DiscardSink:
    """The data set of a refused request: read off the wire and dropped."""

    def write(self, fragment: bytes) -> None:
        pass

    def finish(self) -> bytes | None:
        return None

    def discard(self) -> None:
        pass


def _failure(request: Command, status: int, comment: str) -> Command:
    fields: dict[str, Any] = {"error_comment": comment} if comment else {}
    return response_to(request, status, **fields)
