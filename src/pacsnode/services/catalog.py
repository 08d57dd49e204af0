"""The services a node runs, assembled from its settings (PS3.4 service classes by annex)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pacsnode.archive.commitment import Reference, Verdict, verify
from pacsnode.archive.ingest import Archive
from pacsnode.config.settings import Settings
from pacsnode.security.events import AuditSink
from pacsnode.services.base import ServiceRegistry
from pacsnode.services.commitment import ReportConnector, storage_commitment_service
from pacsnode.services.ian import ian_service
from pacsnode.services.mpps import MppsConnector, mpps_service
from pacsnode.services.query_retrieve import Connector, query_retrieve_services
from pacsnode.services.storage import storage_service
from pacsnode.services.verification import verification_service
from pacsnode.services.worklist import worklist_service


def default_registry(
    settings: Settings,
    archive: Archive | None = None,
    *,
    describe_storage: bool = False,
    connector: Connector | None = None,
    mpps_connector: MppsConnector | None = None,
    commitment_connector: ReportConnector | None = None,
    audit: AuditSink | None = None,
) -> ServiceRegistry:
    """Every service class this node offers with these settings.

    Storage and Query/Retrieve are served when an archive is given;
    ``describe_storage`` lists them without one, for the conformance statement of
    a node that is not running.  ``connector`` opens C-MOVE sub-associations,
    ``mpps_connector`` the associations that forward MPPS, ``commitment_connector``
    those that carry Storage Commitment reports; the services report to ``audit`` (PS3.15 A.5).
    """
    registry = ServiceRegistry()
    registry.register(verification_service())
    if archive is not None or describe_storage:
        registry.register(storage_service(archive, settings.storage.private_sop_classes, audit))
        registry.extend(query_retrieve_services(archive, settings, connector, audit))
        worklist = archive.worklist if archive is not None else None
        registry.register(worklist_service(worklist, settings, audit))
        steps = archive.performed_steps if archive is not None else None
        registry.register(mpps_service(steps, settings, mpps_connector, audit))
        registry.register(ian_service(settings))  # SCU only: sent by the node's notifier
        registry.register(
            storage_commitment_service(
                _verifier(archive) if archive is not None else None, settings, commitment_connector
            )
        )
    return registry


def _verifier(archive: Archive) -> Callable[[Sequence[Reference]], list[Verdict]]:
    """Storage Commitment's check of references against this archive (PS3.4 J.3.2)."""

    def check(references: Sequence[Reference]) -> list[Verdict]:
        return verify(archive.index, archive.store, references)

    return check
