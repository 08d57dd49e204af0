"""PS3.8 acceptor over asyncio: the DICOM server, one protocol object per association."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from pacsnode.config.settings import NetworkSettings
from pacsnode.net.association import AssociationProtocol
from pacsnode.security.events import AuditSink, NullAuditSink
from pacsnode.services.base import ServiceHandler, ServiceRegistry
from pacsnode.ul.connection import AssociationRequested, Role
from pacsnode.ul.errors import AbortReason, AbortSource
from pacsnode.ul.negotiation import AcceptorPolicy, UserIdentityPolicy, negotiate
from pacsnode.ul.pdu import AssociateRJ
from pacsnode.ul.state import State

log = logging.getLogger("pacsnode.net")


class AcceptorProtocol(AssociationProtocol):
    """One inbound connection: negotiates with the server's policy, then serves DIMSE."""

    def __init__(self, server: DicomServer) -> None:
        net = server.network
        super().__init__(
            Role.ACCEPTOR,
            handlers=server.handlers,
            max_pdu_length=net.max_pdu_length,
            artim_timeout=net.artim_timeout,
        )
        self.server = server
        self._watchdog: asyncio.TimerHandle | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.connections.add(self)
        super().connection_made(transport)
        net = self.server.network
        # Fix (tests/net): first check at the nearer of the two timers; arming at
        # read_timeout alone let an idle_timeout shorter than it fire late.
        self._arm_watchdog(min(net.read_timeout, net.idle_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.server.connections.discard(self)
        if self.counted:
            self.counted = False
            self.server.active -= 1

    def on_associate_request(self, ind: AssociationRequested) -> None:
        server = self.server
        rq = ind.request
        answer, negotiated = negotiate(
            rq,
            server.policy,
            at_association_limit=server.active >= server.network.max_associations,
            congested=server.draining,
        )
        if isinstance(answer, AssociateRJ):
            log.info(
                "%s: rejected association %s -> %s (result %d, source %d, reason %d)",
                self.peer,
                rq.calling_ae_title,
                rq.called_ae_title,
                answer.result,
                answer.source,
                answer.reason,
            )
            self.ul.reject(answer)
            return
        assert negotiated is not None
        self.ul.accept(answer)
        self.counted = True
        server.active += 1
        self.established(negotiated)
        log.info(
            "%s: association %s -> %s accepted, %d of %d presentation contexts",
            self.peer,
            rq.calling_ae_title,
            rq.called_ae_title,
            len(negotiated.contexts),
            len(rq.presentation_contexts),
        )

    def _arm_watchdog(self, delay: float) -> None:
        self._watchdog = self.loop.call_later(delay, self._check_timeouts)

    def _check_timeouts(self) -> None:
        # Lazy deadlines: the hot path only stamps last_rx; this re-checks and re-arms.
        self._watchdog = None
        if self.transport is None or self.transport.is_closing():
            return
        net = self.server.network
        now = self.loop.time()
        busy = self._inflight is not None or self._receiving is not None
        # Fix (tests/net): a command set whose last fragment never comes is an incomplete
        # message too; it used to wait for the idle timeout instead of the read timeout.
        partial = self.assembler is not None and self.assembler.in_message
        if self.ul.reader.buffered or self._receiving is not None or partial:
            limit, what = net.read_timeout, "read timeout (incomplete PDU or data set)"
        elif self.ul.state is State.Sta6 and not busy:
            limit, what = net.idle_timeout, "idle timeout"
        else:
            limit, what = net.idle_timeout, ""
        deadline = self.last_rx + limit
        if what and now >= deadline:
            log.warning("%s: %s after %.1f s, aborting", self.peer, what, limit)
            self.abort(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)
            return
        # Fix (tests/net): never re-check later than one read_timeout from now. Re-arming
        # at the idle deadline (600 s by default) let a PDU left half-sent after this
        # check go unnoticed far past read_timeout.
        nxt = min(deadline - now, net.read_timeout) if what else min(limit, net.read_timeout)
        self._arm_watchdog(max(nxt, 0.05))


class DicomServer:
    """Listens on a TCP port and serves DICOM associations until closed."""

    def __init__(
        self,
        *,
        ae_title: str,
        registry: ServiceRegistry,
        network: NetworkSettings,
        implementation_class_uid: str,
        implementation_version_name: str,
        user_identity: UserIdentityPolicy | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.network = network
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        self.registry = registry
        self.handlers: Mapping[str, ServiceHandler] = registry.handlers()
        self.policy = AcceptorPolicy(
            ae_title=ae_title,
            supported=registry.supported(),
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
            max_pdu_length=network.max_pdu_length,
            transfer_syntax_preference=tuple(network.transfer_syntax_preference),
            require_called_ae_title=network.require_called_aet,
            allowed_calling_ae_titles=(
                frozenset(network.allowed_calling_aets) if network.allowed_calling_aets is not None else None
            ),
            user_identity=user_identity,
            extended_negotiation=registry.extended_negotiation,
        )
        self.connections: set[AcceptorProtocol] = set()
        self.active = 0
        self.draining = False
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AcceptorProtocol(self), host, port, reuse_address=True, backlog=128
        )

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, timeout: float | None = None) -> None:
        """Stop listening, let running associations finish for ``timeout`` seconds, then abort them."""
        if timeout is None:
            timeout = self.network.shutdown_timeout
        self.draining = True
        if self._server is not None:
            self._server.close()
        pending = [c.closed for c in self.connections if not c.closed.done()]
        if pending:
            log.info("waiting up to %.1f s for %d association(s) to finish", timeout, len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout)
            for conn in list(self.connections):
                if not conn.closed.done():
                    conn.abort(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)
            if still:
                await asyncio.wait(still, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
