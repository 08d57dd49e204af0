"""PS3.4 Annex F: the Modality Performed Procedure Step SOP class as SCP (N-CREATE, N-SET)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeAlias

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.archive.mpps import MppsError, PerformedSteps
from pacsnode.audit.builders import association_peer, node_actor, performed_step, procedure_record
from pacsnode.config.settings import Settings
from pacsnode.data.transcode import decode
from pacsnode.dimse.commands import CommandField
from pacsnode.dimse.messages import response_to
from pacsnode.dimse.status import Status
from pacsnode.security.events import AuditSink, NullAuditSink, Outcome
from pacsnode.services.base import (
    AssociationOpener,
    DimseRequest,
    InMemoryDataSets,
    Responder,
    ServiceRegistration,
    SOPClass,
)
from pacsnode.ul.negotiation import ProposedContext

log = logging.getLogger("pacsnode.mpps")

# PS3.4 F.7.1 / PS3.6 Annex A: Modality Performed Procedure Step SOP Class.
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class MppsAssociation(Protocol):
    """An association to another MPPS SCP, as the net layer's client offers it."""

    def n_create(self, sop_class_uid: str, sop_instance_uid: str | None, dataset: Dataset) -> Awaitable[Any]:
        """N-CREATE."""

    def n_set(self, sop_class_uid: str, sop_instance_uid: str, modifications: Dataset) -> Awaitable[Any]:
        """N-SET."""

    def release(self, timeout: float | None = 30.0) -> Awaitable[None]:
        """A-RELEASE."""

    def abort(self) -> None:
        """A-ABORT."""


# Opens the associations that forward MPPS.
MppsConnector: TypeAlias = AssociationOpener[MppsAssociation]


class PerformedProcedureStepSCP(InMemoryDataSets):
    """Keeps the MPPS instances modalities create and update, and forwards them if asked."""

    def __init__(
        self,
        steps: PerformedSteps,
        settings: Settings | None = None,
        connector: MppsConnector | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.steps = steps
        self.settings = settings
        self.connector = connector
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        self.me = (
            node_actor(settings.node.aet, settings.node.host) if settings is not None else node_actor("")
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-mpps")
        self._forwarding: asyncio.Task[None] | None = None  # the last forward: the next waits for it

    def handle(self, request: DimseRequest, responder: Responder) -> Awaitable[None] | None:
        """N-CREATE and N-SET (PS3.4 F.7.2); anything else is 0211 Unrecognized Operation."""
        if request.command.command_field not in (CommandField.N_CREATE_RQ, CommandField.N_SET_RQ):
            responder.send(response_to(request.command, Status.UNRECOGNIZED_OPERATION))
            return None
        return self._run(request, responder)

    async def _run(self, request: DimseRequest, responder: Responder) -> None:
        cmd = request.command
        creating = cmd.command_field == CommandField.N_CREATE_RQ
        if creating:
            # PS3.7 10.1.5.1.1: the SCP assigns the instance UID when the SCU gives none.
            uid = cmd.affected_sop_instance_uid or generate_uid(prefix=f"{IMPLEMENTATION_CLASS_UID}.")
        else:
            uid = cmd.requested_sop_instance_uid or ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = decode(request.dataset or b"", request.context.transfer_syntax)
        except Exception as exc:
            responder.send(
                response_to(cmd, Status.PROCESSING_FAILURE, error_comment=f"unreadable: {exc}"[:64])
            )
            self._audit(request, creating, Dataset(), uid, f"unreadable: {exc}")
            return
        loop = asyncio.get_running_loop()
        step = ds
        try:
            if creating:
                await loop.run_in_executor(self._pool, self.steps.create, uid, ds)
            else:
                step = await loop.run_in_executor(self._pool, self.steps.set, uid, ds)
        except MppsError as exc:
            self._audit(request, creating, ds, uid, f"0x{exc.status:04X} {exc.comment}")
            log.info(
                "MPPS %s %s from %s refused (0x%04X): %s",
                "N-CREATE" if creating else "N-SET",
                uid,
                request.association.calling_ae_title,
                exc.status,
                exc.comment,
            )
            responder.send(response_to(cmd, exc.status, error_comment=exc.comment[:1024]))
            return
        log.info(
            "MPPS %s %s from %s", "created" if creating else "set", uid, request.association.calling_ae_title
        )
        responder.send(response_to(cmd, Status.SUCCESS, affected_sop_instance_uid=uid))
        self._audit(request, creating, step, uid, "")
        if self.settings is not None and self.settings.mpps.forward_to and self.connector is not None:
            previous = self._forwarding
            self._forwarding = asyncio.get_running_loop().create_task(
                self._forward(previous, "create" if creating else "set", uid, ds)
            )

    def _audit(self, request: DimseRequest, creating: bool, step: Dataset, uid: str, failure: str) -> None:
        """PS3.15 A.5.3.15 Procedure Record: the step created (N-CREATE) or updated (N-SET)."""
        patient_id, patient_name, studies = performed_step(step, uid)
        outcome = Outcome.MINOR_FAILURE if failure else Outcome.SUCCESS
        who = association_peer(request.association)
        self.audit.emit(
            procedure_record(
                "C" if creating else "U",
                who,
                self.me,
                patient_id,
                patient_name,
                studies,
                outcome=outcome,
                description=failure,
            )
        )

    async def _forward(
        self, previous: asyncio.Task[None] | None, operation: str, uid: str, ds: Dataset
    ) -> None:
        """Send an accepted N-CREATE or N-SET on to each [mpps] forward_to peer, in order."""
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous  # an N-SET goes after the N-CREATE it changes
        assert self.settings is not None and self.connector is not None
        settings = self.settings
        for title in settings.mpps.forward_to:
            peer = settings.peers.get(title)
            endpoint = peer.endpoint() if peer is not None else None
            if endpoint is None:
                log.warning("MPPS forward: no [peers.%s] host and port in the configuration", title)
                continue
            timeout = settings.query.move_timeout
            try:
                assoc = await self.connector(
                    *endpoint,
                    called_ae_title=title,
                    calling_ae_title=settings.node.aet,
                    contexts=[ProposedContext(MPPS_SOP_CLASS, _UNCOMPRESSED)],
                    connect_timeout=timeout,
                    acse_timeout=timeout,
                    dimse_timeout=timeout,
                )
                try:
                    if operation == "create":
                        rsp, _ = await assoc.n_create(MPPS_SOP_CLASS, uid, ds)
                    else:
                        rsp, _ = await assoc.n_set(MPPS_SOP_CLASS, uid, ds)
                finally:
                    await assoc.release()
            except Exception as exc:
                log.warning("MPPS forward of N-%s %s to %s failed: %s", operation.upper(), uid, title, exc)
                continue
            log.info(
                "MPPS N-%s %s forwarded to %s: status 0x%04X", operation.upper(), uid, title, rsp.status or 0
            )


def mpps_service(
    steps: PerformedSteps | None,
    settings: Settings | None = None,
    connector: MppsConnector | None = None,
    audit: AuditSink | None = None,
) -> ServiceRegistration:
    """The Modality Performed Procedure Step SOP class, SCP (forwarding to [mpps] forward_to)."""
    return ServiceRegistration(
        name="Modality Performed Procedure Step",
        standard="PS3.4 Annex F",
        sop_classes=(SOPClass(MPPS_SOP_CLASS, "Modality Performed Procedure Step"),),
        transfer_syntaxes=_UNCOMPRESSED,
        scp=True,
        scu=True,
        handler=PerformedProcedureStepSCP(steps, settings, connector, audit) if steps is not None else None,
        notes=(
            "N-CREATE with Performed Procedure Step Status IN PROGRESS and the Type 1 attributes of "
            "Table F.7.2-1 (ID, station AE title, start date and time, modality, Scheduled Step "
            "Attributes Sequence); N-SET while IN PROGRESS, to COMPLETED or DISCONTINUED with the end "
            "date and time; a final step cannot change. The worklist items the step names (Accession "
            "Number, Scheduled Procedure Step ID) follow: STARTED, then off the worklist. Steps are "
            "kept in the index and listed at /api/mpps. As SCU, `pacsnode mpps create|set` sends one "
            "N-CREATE or N-SET. Each accepted N-CREATE and N-SET is forwarded, in order, to the AEs "
            "of [mpps] forward_to (a failed forward is logged, the modality's answer stands)."
        ),
        status_codes=(
            (Status.SUCCESS, "Created or set."),
            (
                0x0106,
                "Invalid attribute value: a status other than IN PROGRESS at creation, or an "
                "attribute N-SET may not change.",
            ),
            (
                0x0110,
                "Processing failure: the step is COMPLETED or DISCONTINUED, or may not yet be "
                "(no end date and time).",
            ),
            (0x0111, "Duplicate SOP instance: an N-CREATE of an existing step."),
            (0x0112, "No such object instance: an N-SET of an unknown step."),
            (0x0120, "Missing attribute: a Type 1 attribute of the N-CREATE is missing or empty."),
        ),
    )
