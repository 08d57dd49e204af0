"""The services a node runs, assembled from its settings (PS3.4 service classes by annex)."""

from __future__ import annotations

from pacsnode.archive.ingest import Archive
from pacsnode.config.settings import Settings
from pacsnode.services.base import ServiceRegistry
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
) -> ServiceRegistry:
    """Every service class this node offers with these settings.

    Storage and Query/Retrieve are served when an archive is given;
    ``describe_storage`` lists them without one, for the conformance statement of
    a node that is not running.  ``connector`` opens C-MOVE sub-associations,
    ``mpps_connector`` the associations that forward MPPS.
    """
    registry = ServiceRegistry()
    registry.register(verification_service())
    if archive is not None or describe_storage:
        registry.register(storage_service(archive, settings.storage.private_sop_classes))
        registry.extend(query_retrieve_services(archive, settings, connector))
        registry.register(worklist_service(archive.worklist if archive is not None else None, settings))
        steps = archive.performed_steps if archive is not None else None
        registry.register(mpps_service(steps, settings, mpps_connector))
    return registry
