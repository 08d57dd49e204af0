"""PS3.4 Annex K: the Basic Worklist Management service class as SCP (Modality Worklist C-FIND)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor

from pacsnode.archive.qr_model import QueryOptions
from pacsnode.archive.query import Element, QueryError
from pacsnode.archive.worklist import Worklist
from pacsnode.audit.builders import association_peer, node_actor, query
from pacsnode.config.settings import Settings
from pacsnode.dimse.commands import CommandField
from pacsnode.dimse.messages import response_to
from pacsnode.dimse.status import Status
from pacsnode.security.events import AuditSink, NullAuditSink, Outcome
from pacsnode.services.base import DimseRequest, InMemoryDataSets, Responder, ServiceRegistration, SOPClass
from pacsnode.services.query_retrieve import (
    _requested_charset,
    decode_identifier,
    encode_answer,
    failure_response,
)

log = logging.getLogger("pacsnode.worklist")

# PS3.4 K.6.1.1.1 / PS3.6 Annex A: Modality Worklist Information Model - FIND.
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class ModalityWorklistSCP(InMemoryDataSets):
    """Answers Modality Worklist queries from the node's scheduled procedure steps."""

    def __init__(self, worklist: Worklist, settings: Settings, audit: AuditSink | None = None) -> None:
        self.worklist = worklist
        self.settings = settings
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        self.me = node_actor(settings.node.aet, settings.node.host)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pacsnode-worklist")

    def handle(self, request: DimseRequest, responder: Responder) -> Awaitable[None] | None:
        """C-FIND only (PS3.4 K.4.1); anything else is 0211 Unrecognized Operation."""
        cmd = request.command
        if cmd.command_field != CommandField.C_FIND_RQ:
            responder.send(response_to(cmd, Status.UNRECOGNIZED_OPERATION))
            return None
        try:
            identifier = decode_identifier(request.dataset, request.context.transfer_syntax)
        except QueryError as exc:
            responder.send(failure_response(cmd, exc))
            self._audit(request, f"0x{exc.status:04X} {exc.comment}")
            return None
        return self._find(request, responder, identifier)

    def _audit(self, request: DimseRequest, failure: str) -> None:
        """PS3.15 A.5.3.10 Query: a worklist C-FIND, with its identifier as received."""
        self.audit.emit(
            query(
                association_peer(request.association),
                self.me,
                request.context.abstract_syntax,
                request.dataset or b"",
                request.context.transfer_syntax,
                outcome=Outcome.MINOR_FAILURE if failure else Outcome.SUCCESS,
                description=failure,
            )
        )

    async def _find(self, request: DimseRequest, responder: Responder, identifier: list[Element]) -> None:
        cmd = request.command
        ts = request.context.transfer_syntax
        charset = _requested_charset(identifier)
        stop = threading.Event()
        responder.on_cancel(stop.set)
        options = QueryOptions(case_insensitive_names=self.settings.query.case_insensitive_names)

        def run() -> list[bytes]:
            return [
                encode_answer(answer, ts, charset) for answer in self.worklist.find(identifier, options, stop)
            ]

        try:
            answers = await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except QueryError as exc:
            log.info("worklist query from %s refused: %s", request.association.calling_ae_title, exc.comment)
            responder.send(failure_response(cmd, exc))
            self._audit(request, f"0x{exc.status:04X} {exc.comment}")
            return
        sent = 0
        for data in answers:
            if responder.cancelled:
                break
            responder.send(response_to(cmd, Status.PENDING, has_dataset=True), data)
            sent += 1
            if sent % 32 == 0:
                await responder.drain()
        self._audit(request, "")
        if responder.cancelled:
            # PS3.4 C.4.1.2.3 (K.4.1.3): C-CANCEL ends the matches with status Cancel.
            responder.send(response_to(cmd, Status.CANCEL))
            return
        responder.send(response_to(cmd, Status.SUCCESS))
        log.info("worklist query from %s: %d item(s)", request.association.calling_ae_title, sent)


def worklist_service(
    worklist: Worklist | None, settings: Settings, audit: AuditSink | None = None
) -> ServiceRegistration:
    """The Modality Worklist Information Model - FIND SOP class, SCP."""
    handler = ModalityWorklistSCP(worklist, settings, audit) if worklist is not None else None
    return ServiceRegistration(
        name="Basic Worklist Management - Modality Worklist",
        standard="PS3.4 Annex K",
        sop_classes=(SOPClass(MODALITY_WORKLIST_FIND, "Modality Worklist Information Model - FIND"),),
        transfer_syntaxes=_UNCOMPRESSED,
        scp=True,
        handler=handler,
        notes=(
            "Scheduled procedure steps come from the node's worklist (REST /api/worklist, "
            "`pacsnode worklist add`). Matching per PS3.4 K.2.2 and C.2.2.2 on any key of the item, "
            "the Scheduled Procedure Step Sequence's keys by sequence matching (Modality, Scheduled "
            "Station AE Title, start date and time ranges, performing physician); person names ignore "
            "case and accents by default. Each answer holds the keys of the query; answers are in the "
            "query's character set when it holds them, else UTF-8. A step an MPPS performs stays "
            "while IN PROGRESS and leaves the worklist when COMPLETED or DISCONTINUED. Items also come "
            "from HL7 v2 orders (ORM^O01, OMI^O23) over MLLP when [hl7] is enabled; ADT^A08 and "
            "ADT^A40 update and merge their patients (docs/hl7.md)."
        ),
        status_codes=(
            (Status.PENDING, "One scheduled procedure step, with the keys asked for."),
            (Status.SUCCESS, "All matches were sent."),
            (Status.CANCEL, "A C-CANCEL-RQ stopped the matches."),
            (Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "An Identifier that cannot be parsed."),
            (0xC000, "A key value no matching rule accepts (not a date, too long, ...)."),
        ),
    )
