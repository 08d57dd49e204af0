"""PS3.4 Annex F: the Modality Performed Procedure Step SOP class as SCP (N-CREATE, N-SET)."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor

from pydicom.uid import generate_uid

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.archive.mpps import MppsError, PerformedSteps
from pacsnode.data.transcode import decode
from pacsnode.dimse.commands import CommandField
from pacsnode.dimse.messages import response_to
from pacsnode.dimse.status import Status
from pacsnode.services.base import DimseRequest, InMemoryDataSets, Responder, ServiceRegistration, SOPClass

log = logging.getLogger("pacsnode.mpps")

# PS3.4 F.7.1 / PS3.6 Annex A: Modality Performed Procedure Step SOP Class.
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class PerformedProcedureStepSCP(InMemoryDataSets):
    """Keeps the MPPS instances modalities create and update."""

    def __init__(self, steps: PerformedSteps) -> None:
        self.steps = steps
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-mpps")

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
            return
        loop = asyncio.get_running_loop()
        try:
            if creating:
                await loop.run_in_executor(self._pool, self.steps.create, uid, ds)
            else:
                await loop.run_in_executor(self._pool, self.steps.set, uid, ds)
        except MppsError as exc:
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


def mpps_service(steps: PerformedSteps | None) -> ServiceRegistration:
    """The Modality Performed Procedure Step SOP class, SCP."""
    return ServiceRegistration(
        name="Modality Performed Procedure Step",
        standard="PS3.4 Annex F",
        sop_classes=(SOPClass(MPPS_SOP_CLASS, "Modality Performed Procedure Step"),),
        transfer_syntaxes=_UNCOMPRESSED,
        scp=True,
        scu=True,
        handler=PerformedProcedureStepSCP(steps) if steps is not None else None,
        notes=(
            "N-CREATE with Performed Procedure Step Status IN PROGRESS and the Type 1 attributes of "
            "Table F.7.2-1 (ID, station AE title, start date and time, modality, Scheduled Step "
            "Attributes Sequence); N-SET while IN PROGRESS, to COMPLETED or DISCONTINUED with the end "
            "date and time; a final step cannot change. The worklist items the step names (Accession "
            "Number, Scheduled Procedure Step ID) follow: STARTED, then off the worklist. Steps are "
            "kept in the index and listed at /api/mpps. As SCU, `pacsnode mpps create|set` sends one "
            "N-CREATE or N-SET. Forwarding to another MPPS SCP is not supported yet."
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
