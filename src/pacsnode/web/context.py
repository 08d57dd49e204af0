"""What every DICOMweb (PS3.18) resource handler needs: the archive, the query engine, threads, URLs."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request

from pacsnode.archive.ingest import Archive
from pacsnode.archive.qr_model import (
    IMAGE,
    QUERY_RETRIEVE_LEVEL,
    SERIES,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY,
    STUDY_INSTANCE_UID,
    QueryOptions,
)
from pacsnode.archive.query import Element, InstanceRef, QueryEngine, prepare
from pacsnode.config.settings import Settings
from pacsnode.security.credentials import Authenticator
from pacsnode.security.events import AuditSink, NullAuditSink

log = logging.getLogger("pacsnode.web")
T = TypeVar("T")
# PS3.5 9.1: numeric components without leading zeros, separated by periods.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def check_uid(uid: str) -> str:
    """A UID of the request path; 400 when it is not a UID (PS3.18 8.2, PS3.5 9.1)."""
    if not uid or len(uid) > 64 or not _UID.fullmatch(uid):
        raise HTTPException(400, f"not a valid UID: {uid[:80]!r}")
    return uid


class WebContext:
    """The archive and query engine of one node, as the HTTP handlers use them."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        *,
        audit: AuditSink | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        # [auth] users, API tokens and OpenID Connect (shared with DICOM User Identity when given).
        self.authenticator = authenticator if authenticator is not None else Authenticator(settings.auth)
        self.engine = QueryEngine(archive.index, archive.store.absolute, settings.node.aet)
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pacsnode-web")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (the index, files, codecs) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the worker threads."""
        self.pool.shutdown(wait=True)

    def base_url(self, request: Request) -> str:
        """The absolute URL of the DICOMweb root, as the client reached it."""
        root = str(request.base_url).rstrip("/")
        return root + self.settings.web.base_path

    def find_instances(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[InstanceRef]:
        """The stored instances a WADO-RS resource names, in series and instance order (blocking)."""
        identifier: list[Element] = [(STUDY_INSTANCE_UID, "UI", study)]
        level = STUDY
        if series is not None:
            identifier.append((SERIES_INSTANCE_UID, "UI", series))
            level = SERIES
        if instance is not None:
            identifier.append((SOP_INSTANCE_UID, "UI", instance))
            level = IMAGE
        identifier.append((QUERY_RETRIEVE_LEVEL, "CS", level))
        query = prepare(identifier, STUDY, QueryOptions(), retrieve=True)
        # Every unique key given filters (the levels above too): /studies/A/series/B never
        # returns series B of another study.
        return self.engine.instances(query)
