"""The services a node runs, assembled from its settings (PS3.4 service classes by annex)."""

from __future__ import annotations

from pacsnode.config.settings import Settings
from pacsnode.services.base import ServiceRegistry
from pacsnode.services.verification import verification_service


def default_registry(settings: Settings) -> ServiceRegistry:
    """Every service class this node offers with these settings."""
    registry = ServiceRegistry()
    registry.register(verification_service())
    return registry
