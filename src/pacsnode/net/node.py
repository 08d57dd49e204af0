"""A running node: the DICOM server of PS3.8 with the services of the settings, started and stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.archive.ingest import Archive
from pacsnode.archive.stability import StudyStability
from pacsnode.config.settings import Settings
from pacsnode.net.client import open_association
from pacsnode.net.server import DicomServer
from pacsnode.security.events import AuditSink, NullAuditSink
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
        # PS3.15 A.5: every part of the node reports its events here.
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        self.archive = Archive(settings)
        # PS3.4 Annex R: stable studies (change log) and their notifications to [ian] subscribers.
        ian = settings.ian
        self.stability = StudyStability(self.archive.index, ian.stable_after, ian.subscribers)
        self.archive.on_committed.append(self.stability.arrived)
        self.notifier = InstanceAvailabilityNotifier(self.stability.store, settings, open_association)
        self.stability.listeners.append(self.notifier.stable)
        self.server = DicomServer(
            ae_title=settings.node.aet,
            registry=default_registry(
                settings,
                self.archive,
                connector=open_association,
                mpps_connector=open_association,
                commitment_connector=open_association,
            ),
            network=settings.network,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            audit=self.audit,
        )
        self.companions: list[Companion] = []

    async def start(self) -> None:
        """Create the data folder and start listening."""
        node = self.settings.node
        node.data.mkdir(parents=True, exist_ok=True)
        await self.archive.start()
        await self.notifier.start()  # before the tracker: notifications left from before go first
        await self.stability.start()
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
        if node.host in ("127.0.0.1", "localhost", "::1"):
            log.info(
                "only this machine can connect; to open the node to the network use "
                "--host 0.0.0.0 (or PACSNODE_HOST, or host in [node])"
            )
        for companion in self.companions:
            await companion.start()

    async def close(self) -> None:
        """Stop accepting, drain running associations and requests, stop."""
        for companion in reversed(self.companions):
            await companion.close()
        await self.server.close()
        for handler in set(self.server.handlers.values()):
            if isinstance(handler, StorageCommitmentSCP):
                await handler.close()  # reports still being prepared
        await self.stability.close()
        await self.notifier.close()
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
