"""A running node: the DICOM server of PS3.8 with the services of the settings, started and stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.archive.ingest import Archive
from pacsnode.archive.stability import StudyStability
from pacsnode.audit.builders import application_activity, local_user, node_actor
from pacsnode.audit.trail import AuditTrail
from pacsnode.config.settings import Settings
from pacsnode.net.server import DicomServer
from pacsnode.net.tls import PeerConnector, TlsListener
from pacsnode.security.access import AccessPolicy
from pacsnode.security.credentials import Authenticator
from pacsnode.security.events import AuditSink, NullAuditSink
from pacsnode.security.tls import dicom_client_context, dicom_server_context
from pacsnode.services.catalog import default_registry
from pacsnode.services.commitment import StorageCommitmentSCP
from pacsnode.services.ian import InstanceAvailabilityNotifier

log = logging.getLogger("pacsnode")


class Companion(Protocol):
    """A listener started after the archive and the DICOM server, stopped before them (HTTP, say)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Node:
    """One pacsnode device: its data folder and its DICOM listener."""

    def __init__(self, settings: Settings, audit: AuditSink | None = None) -> None:
        self.settings = settings
        # PS3.15 A.5: every part of the node reports its events here: with [audit] enabled, the
        # audit trail (kept in the index, sent to the syslog collector).
        self.trail = AuditTrail(settings) if audit is None and settings.audit.enabled else None
        self.audit: AuditSink = audit if audit is not None else self.trail or NullAuditSink()
        self.actor = node_actor(settings.node.aet, settings.node.host)  # this node in audit messages
        self.archive = Archive(settings)
        # PS3.4 Annex R: stable studies (change log) and their notifications to [ian] subscribers.
        ian = settings.ian
        self.stability = StudyStability(self.archive.index, ian.stable_after, ian.subscribers)
        self.archive.on_committed.append(self.stability.arrived)
        # PS3.15 B.9: the TLS contexts (and so their files) are made now, before anything starts;
        # associations the node opens go over TLS to the [peers.X] with tls = true.
        node = settings.node
        client_tls = dicom_client_context(node) if any(p.tls for p in settings.peers.values()) else None
        self.connector = PeerConnector(settings, client_tls, self.audit)
        self.notifier = InstanceAvailabilityNotifier(self.stability.store, settings, self.connector)
        self.stability.listeners.append(self.notifier.stable)
        # PS3.15 B.1: who may associate (host names of [peers] are resolved here, once), and the
        # [auth] users and tokens that DICOM User Identity and HTTP both check against.
        self.authenticator = Authenticator(settings.auth)
        self.server = DicomServer(
            ae_title=settings.node.aet,
            registry=default_registry(
                settings,
                self.archive,
                connector=self.connector,
                mpps_connector=self.connector,
                commitment_connector=self.connector,
                audit=self.audit,
            ),
            network=settings.network,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            audit=self.audit,
            access=AccessPolicy.from_settings(settings),
            authenticator=self.authenticator,
        )
        self.companions: list[Companion] = []
        # DICOM over TLS on [node] tls_port, beside (or, plain_dicom = false, instead of) plain DICOM.
        self.tls: TlsListener | None = None
        if node.tls_port is not None:
            self.tls = TlsListener(
                self.server,
                dicom_server_context(node),
                check_peer_name=node.tls_check_peer_name,
                peers=settings.peers,
            )

    async def start(self) -> None:
        """Create the data folder and start listening."""
        node = self.settings.node
        # Patient data: a new data folder is the service user's alone (files inside inherit nothing
        # else, so the folder's mode is what keeps other local users out).
        node.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.archive.start()
        if self.trail is not None:
            self.trail.start()  # after the archive: its index holds the trail
        if self.authenticator.jwks is not None:  # the OpenID Connect keys, read before the first token
            await asyncio.get_running_loop().run_in_executor(None, self.authenticator.jwks.preload)
        await self.notifier.start()  # before the tracker: notifications left from before go first
        await self.stability.start()
        if node.plain_dicom:
            try:
                await self.server.start(node.host, node.dicom_port)
            except OSError as exc:
                # The address goes with the error, so that the user sees which listener failed.
                raise OSError(exc.errno, exc.strerror or str(exc), f"{node.host}:{node.dicom_port}") from exc
            log.info(
                "pacsnode %s listening for DICOM on %s:%d (data in %s)",
                node.aet,
                node.host,
                self.server.port,
                node.data.resolve(),
            )
        if self.tls is not None and node.tls_port is not None:
            try:
                await self.tls.start(node.host, node.tls_port)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror or str(exc), f"{node.host}:{node.tls_port}") from exc
            log.info(
                "pacsnode %s listening for DICOM over TLS on %s:%d (BCP 195; client certificates %s)",
                node.aet,
                node.host,
                self.tls.port,
                "required" if node.tls_require_client_cert else "optional",
            )
        if node.host in ("127.0.0.1", "localhost", "::1"):
            log.info(
                "only this machine can connect; to open the node to the network use "
                "--host 0.0.0.0 (or PACSNODE_HOST, or host in [node])"
            )
        for companion in self.companions:
            await companion.start()
        # PS3.15 A.5.3.1: Application Activity, Application Start.
        self.audit.emit(application_activity(self.actor, start=True, launcher=local_user()))

    async def close(self) -> None:
        """Stop accepting, drain running associations and requests, stop."""
        for companion in reversed(self.companions):
            await companion.close()
        if self.tls is not None:
            await self.tls.close()  # no new TLS connection; its associations drain with the server's
        await self.server.close()
        for handler in set(self.server.handlers.values()):
            if isinstance(handler, StorageCommitmentSCP):
                await handler.close()  # reports still being prepared
        await self.stability.close()
        await self.notifier.close()
        self.audit.emit(application_activity(self.actor, start=False, launcher=local_user()))
        if self.trail is not None:  # keeps what was emitted, then sends what it can (bounded)
            await asyncio.get_running_loop().run_in_executor(None, self.trail.close)
        await self.archive.close()

    async def run_forever(self) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Handlers first: a signal that comes while the node starts stops it once started
        # (the log says it listens before the start is over).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("shutting down: draining associations")
            await self.close()
