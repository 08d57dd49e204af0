"""PS3.15 A.5.3 over HTTP: the audit messages of DICOMweb (PS3.18) and the admin API, with their outcome.

Who asked is the authenticated user (``scope["pacsnode.principal"]``, set by web.auth), else
the client's address (IHE ITI TF-2a 3.20: the Node ID of an unauthenticated client).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pacsnode.archive.ingest import StoreResult
from pacsnode.archive.query import InstanceRef
from pacsnode.audit.builders import (
    Actor,
    StudyTally,
    http_actor,
    instances_accessed,
    instances_transferred,
    node_actor,
    order_record,
    patient_record,
    study_deleted,
    web_query,
)
from pacsnode.audit.lookup import instances_under
from pacsnode.security.events import Outcome
from pacsnode.web.context import WebContext

F = TypeVar("F", bound=Callable[..., Awaitable[Response]])

# The instances the retrieve being served sends (set by its handler, read by `audited_retrieve`).
_SENT: ContextVar[list[InstanceRef] | None] = ContextVar("pacsnode_audit_sent", default=None)


def requester(request: Request) -> Actor:
    """Who made the request: its user (not the anonymous loopback principal), at its address."""
    principal = request.scope.get("pacsnode.principal")
    user = "" if principal is None or getattr(principal, "method", "") == "loopback" else principal.name
    return http_actor(user, request.client.host if request.client is not None else "")


def node(ctx: WebContext) -> Actor:
    """This node, as the HTTP side of an audit message names it."""
    return node_actor(ctx.settings.node.aet, ctx.settings.node.host)


def target(request: Request) -> str:
    """The request target: path and query string."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _failure(exc: BaseException) -> str:
    if isinstance(exc, HTTPException):
        return f"HTTP {exc.status_code}: {exc.detail}"[:1024]
    return f"{type(exc).__name__}: {exc}"[:1024]


def audited_query(
    ctx: WebContext | None, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """A QIDO-RS handler that reports PS3.15 A.5.3.10 Query, with its outcome (an error: 4)."""
    if ctx is None:
        return handler

    async def audited(request: Request) -> Response:
        try:
            response = await handler(request)
        except Exception as exc:
            ctx.audit.emit(
                web_query(
                    requester(request),
                    node(ctx),
                    target(request),
                    outcome=Outcome.MINOR_FAILURE,
                    description=_failure(exc),
                )
            )
            raise
        ctx.audit.emit(web_query(requester(request), node(ctx), target(request)))
        return response

    audited.transaction = getattr(handler, "transaction", "search")  # type: ignore[attr-defined]
    return audited


def note_sent(refs: Sequence[InstanceRef]) -> None:
    """The retrieve being served sends these instances (called once it has found them)."""
    sent = _SENT.get()
    if sent is not None:
        sent.extend(refs)


def audited_retrieve(fn: F) -> F:
    """A WADO handler that reports PS3.15 A.5.3.7 DICOM Instances Transferred (Read), per study.

    The instances are those the handler noted (`note_sent`); a handler that fails after
    finding them reports the failure (outcome 4). The message goes when the answer starts,
    before a streamed body is sent.
    """

    @functools.wraps(fn)
    async def audited(ctx: WebContext, request: Request, *args: Any, **kwargs: Any) -> Response:
        sent: list[InstanceRef] = []
        token = _SENT.set(sent)
        failure = ""
        try:
            return await fn(ctx, request, *args, **kwargs)
        except Exception as exc:
            failure = _failure(exc)
            raise
        finally:
            _SENT.reset(token)
            if sent:
                outcome = Outcome.MINOR_FAILURE if failure else None
                me, them = node(ctx), requester(request)
                for study in StudyTally().add_refs(sent).studies():
                    ctx.audit.emit(
                        instances_transferred(
                            "R",
                            me,
                            them,
                            study,
                            initiator="destination",
                            outcome=outcome,
                            description=failure,
                        )
                    )

    return audited  # type: ignore[return-value]


def audit_stored(ctx: WebContext, request: Request, outcomes: Sequence[tuple[StoreResult, str]]) -> None:
    """STOW-RS: PS3.15 A.5.3.7 DICOM Instances Transferred (Create), per study, each instance's outcome."""
    tally = StudyTally()
    for result, sop_class in outcomes:
        failure = None if result.ok else f"0x{result.status:04X} {result.comment}".strip()
        tally.add_record(result.record, sop_class, failure)
    me, them = node(ctx), requester(request)
    for study in tally.studies():
        ctx.audit.emit(instances_transferred("C", them, me, study))


@contextlib.asynccontextmanager
async def audited_deletion(ctx: WebContext, request: Request, level: str, key: str) -> AsyncIterator[None]:
    """Around a deletion: PS3.15 A.5.3.8 Study Deleted for a study or a patient's studies, A.5.3.6
    Instances Accessed (Delete) for a series or instances, A.5.3.14 Patient Record (Delete) for a
    patient; nothing when nothing matched. The subjects are read before they go."""
    tally = await ctx.run(instances_under, ctx.archive.index.reader, level, key)
    failure = ""
    try:
        yield
    except Exception as exc:
        failure = _failure(exc)
        raise
    finally:
        outcome = Outcome.MINOR_FAILURE if failure else None
        me, them = node(ctx), requester(request)
        for study in tally.studies():
            if level in ("PATIENT", "STUDY"):
                ctx.audit.emit(study_deleted(them, me, study, outcome=outcome, description=failure))
            else:
                ctx.audit.emit(instances_accessed("D", them, me, study, outcome=outcome, description=failure))
        if level == "PATIENT" and tally:
            name = tally.studies()[0].patient_name
            ctx.audit.emit(
                patient_record(
                    "D", them, me, key, name, outcome=outcome or Outcome.SUCCESS, description=failure
                )
            )


@contextlib.asynccontextmanager
async def audited_read(ctx: WebContext, request: Request) -> AsyncIterator[None]:
    """Around an admin API read of patients, studies, series or instances: PS3.15 A.5.3.10 Query."""
    failure = ""
    try:
        yield
    except Exception as exc:
        failure = _failure(exc)
        raise
    finally:
        outcome = Outcome.MINOR_FAILURE if failure else Outcome.SUCCESS
        ctx.audit.emit(
            web_query(requester(request), node(ctx), target(request), outcome=outcome, description=failure)
        )


def audit_order(
    ctx: WebContext,
    request: Request,
    action: Literal["C", "U", "D"],
    subject: tuple[str, str, str],
    failure: str = "",
) -> None:
    """A worklist item scheduled or cancelled through the admin API: PS3.15 A.5.3.13 Order Record.

    ``subject`` is the item's (Patient ID, Patient's Name, Accession Number)."""
    patient_id, patient_name, accession = subject
    ctx.audit.emit(
        order_record(
            action,
            requester(request),
            node(ctx),
            patient_id,
            patient_name,
            accession_number=accession,
            outcome=Outcome.MINOR_FAILURE if failure else Outcome.SUCCESS,
            description=failure,
        )
    )
