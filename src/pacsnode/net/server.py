"""PS3.8 acceptor over asyncio: the DICOM server, one protocol object per association."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from pacsnode.config.settings import AuthSettings, NetworkSettings
from pacsnode.dimse.commands import Command
from pacsnode.net.association import AssociationProtocol
from pacsnode.security.access import (
    AccessPolicy,
    IdentityVerdict,
    Refusal,
    association_refused,
    check_user_identity,
    restricted_function,
    service_of,
    user_authentication,
)
from pacsnode.security.credentials import Authenticator
from pacsnode.security.events import AuditSink, NullAuditSink
from pacsnode.services.base import AssociationListener, DimseRequest, ServiceHandler, ServiceRegistry
from pacsnode.ul.connection import AssociationRequested, Role
from pacsnode.ul.errors import AbortReason, AbortSource
from pacsnode.ul.negotiation import (
    AcceptorPolicy,
    NegotiatedContext,
    UserIdentityDecision,
    UserIdentityPolicy,
    negotiate,
)
from pacsnode.ul.pdu import AssociateRJ, AssociateRQ, RejectReason, RejectResult, RejectSource, UserIdentityRQ
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
        self.peer_host = ""
        self.tls = False
        self._admission: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) else ""
        # PS3.15 B.9: the association is over TLS when its transport has an SSL object.
        self.tls = transport.get_extra_info("ssl_object") is not None
        super().connection_made(transport)
        net = self.server.network
        # Fix (tests/net): first check at the nearer of the two timers; arming at
        # read_timeout alone let an idle_timeout shorter than it fire late.
        self._arm_watchdog(min(net.read_timeout, net.idle_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.negotiated is not None:  # e.g. the Storage SCP audits what the association stored
            for handler in {id(h): h for h in self.server.handlers.values()}.values():
                if isinstance(handler, AssociationListener):
                    handler.association_ended(self.negotiated)
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.server.connections.discard(self)
        if self.counted:
            self.counted = False
            self.server.active -= 1

    def on_associate_request(self, ind: AssociationRequested) -> None:
        rq = ind.request
        access = self.server.access
        if access is None:
            self._answer(rq, self.server.policy)
            return
        # PS3.15 B.1: the calling AE, its address and transport first, then its user identity.
        refusal = access.admit(rq.calling_ae_title, rq.called_ae_title, self.peer_host, self.tls)
        identity = rq.user_information.user_identity_rq
        if refusal is not None or access.identity_mode == "off":
            self._answer_checked(rq, refusal, None)
        elif identity is None:
            verdict = check_user_identity(access.identity_mode, self.server.authenticator, None)
            self._answer_checked(rq, None, verdict)
        else:
            # scrypt or a JWKS download: off the event loop; the answer follows when it is done.
            self._admission = self.loop.create_task(self._check_identity(rq, access, identity))

    async def _check_identity(self, rq: AssociateRQ, access: AccessPolicy, identity: UserIdentityRQ) -> None:
        try:
            verdict = await self.loop.run_in_executor(
                None,
                check_user_identity,
                access.identity_mode,
                self.server.authenticator,
                identity.identity_type,
                identity.primary_field,
                identity.secondary_field,
            )
        except Exception:
            log.exception("%s: user identity check failed", self.peer)
            verdict = IdentityVerdict(False, detail="internal error")
        if self.transport is None or self.transport.is_closing() or self.ul.state is not State.Sta3:
            return  # the peer went away (or aborted) meanwhile
        try:
            self._answer_checked(rq, None, verdict)
        except Exception:
            log.exception("%s: internal error, aborting the association", self.peer)
            self.abort(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)
        self.flush()

    def _answer_checked(
        self, rq: AssociateRQ, refusal: Refusal | None, verdict: IdentityVerdict | None
    ) -> None:
        """Negotiate with the outcome of access control (and of the user identity check) known."""
        server = self.server
        address = self.peer_host or self.peer
        refused_by_access: list[str] = []

        def admit(_rq: AssociateRQ) -> AssociateRJ | None:
            if refusal is not None:
                refused_by_access.append(refusal.description)
                # PS3.8 Table 9-21: rejected-permanent, service-user, reason 3 or 7.
                return AssociateRJ(
                    int(RejectResult.PERMANENT), int(RejectSource.SERVICE_USER), int(refusal.reason)
                )
            if verdict is not None and not verdict.accepted:
                refused_by_access.append(f"user identity refused: {verdict.detail}")
                # PS3.7 D.3.3.7: an identity that is not accepted rejects the association.
                return AssociateRJ(
                    int(RejectResult.PERMANENT),
                    int(RejectSource.SERVICE_USER),
                    int(RejectReason.NO_REASON_GIVEN),
                )
            return None

        policy = server.policy
        if verdict is not None:
            # The identity is decided: a positive response only for one checked and accepted.
            decision = UserIdentityDecision(True)
            policy = replace(policy, user_identity=(lambda _i, _c: decision) if verdict.respond else None)
        self._answer(rq, policy, admit, refused_by_access)
        if verdict is not None and verdict.checked:
            server.audit.emit(
                user_authentication(
                    verdict.user,
                    address,
                    server.policy.ae_title,
                    success=verdict.accepted,
                    description=verdict.detail,
                    calling=rq.calling_ae_title,
                )
            )
        # Fix (tests/security): audited too when negotiation refused first (a calling AE title
        # with control characters failed its AE checks before access control was asked).
        if refusal is not None:
            server.audit.emit(
                association_refused(
                    rq.calling_ae_title,
                    rq.called_ae_title,
                    address,
                    server.policy.ae_title,
                    refusal.description,
                )
            )

    def _answer(
        self,
        rq: AssociateRQ,
        policy: AcceptorPolicy,
        admit: Callable[[AssociateRQ], AssociateRJ | None] | None = None,
        why: list[str] | None = None,
    ) -> None:
        server = self.server
        answer, negotiated = negotiate(
            rq,
            policy,
            at_association_limit=server.active >= server.network.max_associations,
            congested=server.draining,
            admit=admit,
        )
        if isinstance(answer, AssociateRJ):
            # One line per rejection; access control's say why (a warning: someone was refused).
            log.log(
                logging.WARNING if why else logging.INFO,
                "%s: rejected association %s -> %s (result %d, source %d, reason %d)%s",
                self.peer,
                rq.calling_ae_title,
                rq.called_ae_title,
                answer.result,
                answer.source,
                answer.reason,
                f": {why[0]}" if why else "",
            )
            self.ul.reject(answer)
            return
        assert negotiated is not None
        self.ul.accept(answer)
        self.counted = True
        server.active += 1
        self.established(replace(negotiated, calling_presentation_address=self.peer))
        log.info(
            "%s: association %s -> %s accepted, %d of %d presentation contexts",
            self.peer,
            rq.calling_ae_title,
            rq.called_ae_title,
            len(negotiated.contexts),
            len(rq.presentation_contexts),
        )

    def permits(self, command: Command, context: NegotiatedContext) -> bool:
        access = self.server.access
        if access is None or self.negotiated is None:
            return True
        return access.allows(self.negotiated.calling_ae_title, context.abstract_syntax, command.command_field)

    def refused(self, request: DimseRequest) -> str:
        calling = request.association.calling_ae_title
        service = service_of(request.context.abstract_syntax, request.command.command_field)
        comment = (
            f"{calling} may not use {service} (not in [peers.{calling}] allow)"
            if service is not None
            else f"{calling} may not use this request on {request.context.abstract_syntax}"
        )
        log.warning("%s: %s: refused with 0124H", self.peer, comment)
        server = self.server
        server.audit.emit(
            restricted_function(
                calling,
                self.peer_host or self.peer,
                server.policy.ae_title,
                comment,
                sop_class=request.context.abstract_syntax,
            )
        )
        return comment

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
        access: AccessPolicy | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.network = network
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        # PS3.15 B.1 access control ([peers], [node] accept_unknown_peers, [auth]); None: only
        # the [network] AE title checks of the acceptor policy.
        self.access = access
        self.authenticator = authenticator if authenticator is not None else Authenticator(AuthSettings())
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
