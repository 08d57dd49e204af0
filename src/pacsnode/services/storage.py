"""PS3.4 Annex B: the Storage service class, as SCP, over the archive's ingest pipeline."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from pacsnode.archive.ingest import Archive, SpoolSink
from pacsnode.audit.builders import StudyTally, association_peer, instances_transferred, node_actor
from pacsnode.data.uids import SUPPLEMENTARY_STORAGE_SOP_CLASSES, all_transfer_syntaxes
from pacsnode.dimse.commands import Command, CommandField
from pacsnode.dimse.messages import response_to
from pacsnode.dimse.status import Status
from pacsnode.security.events import AuditSink, NullAuditSink
from pacsnode.services.base import (
    DataSetSink,
    DimseRequest,
    Responder,
    ServiceRegistration,
    SOPClass,
)
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext

log = logging.getLogger("pacsnode.storage")

_NOT_STORAGE = ("Commitment", "Storage Management", "Media Storage Directory")


@cache
def storage_sop_classes() -> tuple[SOPClass, ...]:
    """Every Storage SOP class pydicom's UID registry knows (PS3.4 Annex B, B.5), current and retired."""
    from pydicom._uid_dict import UID_dictionary

    out = [
        SOPClass(uid, name)
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class" and "Storage" in name and not any(x in name for x in _NOT_STORAGE)
    ]
    out += [SOPClass(uid, name) for uid, name in SUPPLEMENTARY_STORAGE_SOP_CLASSES.items()]
    return tuple(sorted(out, key=lambda s: s.name))


def storage_transfer_syntaxes() -> tuple[str, ...]:
    """Every network transfer syntax: instances are stored as received, in their own syntax."""
    return all_transfer_syntaxes()


class StorageSCP:
    """C-STORE SCP: data sets stream into the spool, and are answered once durable (PS3.4 B.2)."""

    def __init__(self, archive: Archive, audit: AuditSink | None = None) -> None:
        self.archive = archive
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        self.me = node_actor(archive.settings.node.aet, archive.settings.node.host)
        # PS3.15 A.5.3.7: what each association sent us, study by study, audited when it ends.
        self._received: dict[int, StudyTally] = {}

    def sink_for(
        self, command: Command, context: NegotiatedContext, association: Negotiated
    ) -> DataSetSink | None:
        """A spool sink named by the server; the command's UIDs only go into the file's meta."""
        if command.command_field != CommandField.C_STORE_RQ:
            return None
        return self.archive.open_sink(
            command.affected_sop_class_uid or "",
            command.affected_sop_instance_uid or "",
            context.transfer_syntax,
            association.calling_ae_title,
        )

    async def handle(self, request: DimseRequest, responder: Responder) -> None:
        """Ingest the instance and answer C-STORE-RSP with the pipeline's status."""
        cmd = request.command
        if cmd.command_field != CommandField.C_STORE_RQ:
            responder.send(response_to(cmd, Status.UNRECOGNIZED_OPERATION))
            return
        sink = request.sink
        if not isinstance(sink, SpoolSink):
            responder.send(response_to(cmd, Status.CANNOT_UNDERSTAND, error_comment="no data set"))
            return
        if cmd.affected_sop_class_uid != request.context.abstract_syntax:
            # PS3.4 B.2.3: the instance must belong to the negotiated SOP class.
            sink.discard()
            self._tally(request).add_record(None, cmd.affected_sop_class_uid or "", "SOP class mismatch")
            responder.send(
                response_to(
                    cmd,
                    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    error_comment="Affected SOP Class UID differs from the presentation context",
                )
            )
            return
        tally = self._tally(request)
        result = await self.archive.ingest(
            sink, alone=len(self._received) == 1, origin=id(request.association)
        )
        failure = None if result.ok else f"0x{result.status:04X} {result.comment}".strip()
        tally.add_record(result.record, cmd.affected_sop_class_uid or "", failure)
        if not result.ok:
            log.warning(
                "C-STORE of %s from %s refused: 0x%04X %s",
                cmd.affected_sop_instance_uid,
                request.association.calling_ae_title,
                result.status,
                result.comment,
            )
        fields: dict[str, Any] = {"error_comment": result.comment} if result.comment and not result.ok else {}
        responder.send(response_to(cmd, result.status, **fields))

    def _tally(self, request: DimseRequest) -> StudyTally:
        tally = self._received.get(id(request.association))
        if tally is None:
            tally = self._received[id(request.association)] = StudyTally()
        return tally

    def association_ended(self, association: Negotiated) -> None:
        """PS3.15 A.5.3.7: DICOM Instances Transferred (Create), one message per study received."""
        tally = self._received.pop(id(association), None)
        if not tally:
            return
        try:
            peer = association_peer(association)
            for study in tally.studies():
                self.audit.emit(instances_transferred("C", peer, self.me, study))
        except Exception:  # called as the connection closes: never raises
            log.exception("audit of the instances received from %s failed", association.calling_ae_title)


def storage_service(
    archive: Archive | None, private_sop_classes: list[str], audit: AuditSink | None = None
) -> ServiceRegistration:
    """The Storage SOP classes (standard and configured private ones), SCP; no handler without archive."""
    known = {s.uid for s in storage_sop_classes()}
    private = tuple(
        SOPClass(uid, f"Private SOP Class {uid}")
        for uid in dict.fromkeys(private_sop_classes)
        if uid not in known
    )
    return ServiceRegistration(
        name="Storage",
        standard="PS3.4 Annex B",
        sop_classes=storage_sop_classes() + private,
        transfer_syntaxes=storage_transfer_syntaxes(),
        scp=True,
        scu=True,  # as C-MOVE and C-GET sub-operations
        handler=StorageSCP(archive, audit) if archive is not None else None,
        # PS3.7 D.3.3.4: a C-GET SCU takes the SCP role for the classes it retrieves.
        requestor_may_be_scp=True,
        notes=(
            "Every instance is stored exactly as received, in the negotiated transfer syntax, "
            "behind new File Meta Information (our Implementation Class UID and Version Name, the "
            "sender's AE title as Source AE Title). The C-STORE-RSP is sent only once the file and "
            "its index row are durable (fsync/syncfs, then the index commit). Level 2 (Full) storage "
            "conformance: no element is coerced or discarded. Resending an identical instance "
            "succeeds and keeps one copy; a different object under a stored SOP Instance UID "
            "follows the configured duplicate policy (reject, keep-first or replace). A data set "
            "of up to 1 MiB that ends inside an element is refused (C000H); larger ones are "
            "streamed to disk and only their header is checked. Non-patient objects (Hanging "
            "Protocol, Color Palette, implant templates, defined procedure protocols, protocol "
            "approvals, inventories) are stored outside the Patient/Study/Series hierarchy; any "
            "other instance without Study or Series Instance UID (Type 1) is refused with A900H."
        ),
        status_codes=(
            (Status.SUCCESS, "The instance is stored durably (or an identical copy already was)."),
            (Status.DUPLICATE_SOP_INSTANCE, "duplicate_policy = reject: a different object has this UID."),
            (Status.OUT_OF_RESOURCES, "Disk full, a write error, or the index database is unavailable."),
            (
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "The data set's SOP Class/Instance UID differ from the command's, or a Type 1 "
                "identifying UID (Study/Series Instance UID) is missing.",
            ),
            (Status.CANNOT_UNDERSTAND, "The data set cannot be parsed."),
        ),
    )
