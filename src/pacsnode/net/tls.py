"""PS3.15 B.9 over asyncio: the DICOM-over-TLS listener (refusals audited) and TLS to [peers] that want it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping, Sequence
from ssl import SSLContext
from typing import Any

from pacsnode.config.settings import PeerSettings, Settings
from pacsnode.net.client import Association, TlsHandshakeError, open_association
from pacsnode.net.server import AcceptorProtocol, DicomServer
from pacsnode.security.events import AuditSink, NullAuditSink
from pacsnode.security.tls import (
    certificate_subject,
    describe_handshake_error,
    peer_name_matches,
    security_alert,
)
from pacsnode.ul.connection import AssociationRequested
from pacsnode.ul.negotiation import ProposedContext
from pacsnode.ul.pdu import AssociateRJ, RejectReason, RejectResult, RejectSource

log = logging.getLogger("pacsnode.net")


class TlsAcceptorProtocol(AcceptorProtocol):
    """An inbound association over TLS: made only once the handshake succeeded; checks the peer's name."""

    def __init__(self, server: DicomServer, listener: TlsListener) -> None:
        super().__init__(server)
        self.listener = listener
        self._made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made = True
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        # The SSL layer may report a failed handshake to the protocol it was given: it never started.
        if self._made:
            super().connection_lost(exc)

    def on_associate_request(self, ind: AssociationRequested) -> None:
        listener = self.listener
        if listener.check_peer_name and self.transport is not None:
            rq = ind.request
            calling = rq.calling_ae_title.strip()
            peer = self.transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, tuple) else ""
            names = [calling, host]
            known = listener.peers.get(calling)
            if known is not None and "/" not in known.host:
                names.append(known.host)
            cert = self.transport.get_extra_info("peercert")
            # PS3.15 B.9 (optional): the certificate names the calling AE title or the peer's host.
            if not peer_name_matches(cert, names):
                subject = certificate_subject(cert)
                reason = (
                    f"TLS peer name check failed: the certificate ({subject or 'none'}) names neither "
                    f"the calling AE title {calling} nor the host {', '.join(dict.fromkeys(names[1:]))}"
                )
                log.warning(
                    "%s: refused association %s -> %s: %s", self.peer, calling, rq.called_ae_title, reason
                )
                server = self.server
                server.audit.emit(
                    security_alert(
                        reason,
                        peer_host=host,
                        peer_id=subject,
                        our_ae_title=server.policy.ae_title,
                        serious=True,
                    )
                )
                # PS3.8 Table 9-21: rejected-permanent, service-user, calling AE title not recognized.
                self.ul.reject(
                    AssociateRJ(
                        int(RejectResult.PERMANENT),
                        int(RejectSource.SERVICE_USER),
                        int(RejectReason.CALLING_AE_NOT_RECOGNIZED),
                    )
                )
                return
        super().on_associate_request(ind)


class TlsListener:
    """Accepts TCP on its own port, does the TLS handshake, then serves DICOM as ``server`` does.

    A failed handshake (no or a refused client certificate, TLS older than 1.2, plain DICOM on
    this port, a handshake that does not finish within ``handshake_timeout``) is logged in one
    line and audited as a Security Alert (PS3.15 A.5.3.11) on ``server.audit``; the connection
    is closed and the listener goes on. The associations share the server's limits and drain.
    """

    def __init__(
        self,
        server: DicomServer,
        context: SSLContext,
        *,
        check_peer_name: bool = False,
        peers: Mapping[str, PeerSettings] | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self.server = server
        self.context = context
        self.check_peer_name = check_peer_name
        self.peers: Mapping[str, PeerSettings] = peers or {}
        self.handshake_timeout = (
            handshake_timeout if handshake_timeout is not None else server.network.artim_timeout
        )
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Bind ``host:port`` (0: any free port) and start accepting; raises OSError when taken."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sockets.append(sock)
        self.port = int(sock.getsockname()[1])
        self._accepting.append(loop.create_task(self._accept(sock)))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # Out of file descriptors, say: log, back off a little, go on accepting.
                log.warning("TLS listener: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._handshakes) >= self.server.network.max_associations:
                # Handshakes cost CPU: no more of them at once than associations are allowed.
                log.warning(
                    "TLS listener: %d handshakes in progress, connection closed", len(self._handshakes)
                )
                conn.close()
                continue
            task = loop.create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            peer = conn.getpeername()
        except OSError:
            conn.close()
            return
        host, where = str(peer[0]), f"{peer[0]}:{peer[1]}"
        try:
            await loop.connect_accepted_socket(
                lambda: TlsAcceptorProtocol(self.server, self),
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            failure = describe_handshake_error(exc, self.handshake_timeout)
            if failure.quiet:
                log.debug("%s: %s", where, failure.reason)
                return
            log.warning("%s: TLS handshake failed: %s", where, failure.reason)
            self.server.audit.emit(
                security_alert(failure, peer_host=host, our_ae_title=self.server.policy.ae_title)
            )

    async def close(self) -> None:
        """Stop accepting and abandon handshakes in progress (established associations stay)."""
        for task in [*self._accepting, *self._handshakes]:
            task.cancel()
        for task in [*self._accepting, *self._handshakes]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._accepting.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


class PeerConnector:
    """Opens the node's associations to its [peers]: over TLS to those with ``tls = true``.

    The services (C-MOVE sub-operations, storage commitment reports, MPPS forwarding, IAN)
    call it as they call `open_association`; the peer is the ``[peers.X]`` table of the called
    AE title. A refused TLS handshake is audited as a Security Alert, as inbound ones are.
    """

    def __init__(
        self,
        settings: Settings,
        context: SSLContext | None,
        audit: AuditSink | None = None,
    ) -> None:
        self.peers = settings.peers
        self.ae_title = settings.node.aet
        self.context = context
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()

    async def __call__(
        self,
        host: str,
        port: int,
        *,
        called_ae_title: str,
        calling_ae_title: str,
        contexts: Sequence[ProposedContext],
        connect_timeout: float,
        acse_timeout: float,
        dimse_timeout: float | None,
        ssl: SSLContext | None = None,
        **options: Any,
    ) -> Association:
        peer = self.peers.get(called_ae_title.strip())
        if ssl is None and peer is not None and peer.tls:
            if self.context is None:
                raise TlsHandshakeError(f"[peers.{called_ae_title}] tls = true, but TLS is not configured")
            ssl = self.context
        try:
            return await open_association(
                host,
                port,
                called_ae_title=called_ae_title,
                calling_ae_title=calling_ae_title,
                contexts=contexts,
                connect_timeout=connect_timeout,
                acse_timeout=acse_timeout,
                dimse_timeout=dimse_timeout,
                ssl=ssl,
                **options,
            )
        except TlsHandshakeError as exc:
            log.warning("%s: %s", called_ae_title, exc)
            self.audit.emit(
                security_alert(
                    exc.failure if exc.failure is not None else str(exc),
                    peer_host=host,
                    peer_id=called_ae_title,
                    our_ae_title=self.ae_title,
                )
            )
            raise
