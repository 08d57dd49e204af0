"""The node's HL7 v2 application: one message in, its acknowledgement out (HL7 v2.5.1 2.9.2 original mode)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pacsnode.archive.orders import Action, UnknownOrder, apply_changes
from pacsnode.archive.patients import PatientRecords
from pacsnode.archive.worklist import CANCELED, Worklist
from pacsnode.audit.builders import Actor, host_of, node_actor, order_record, patient_record
from pacsnode.config.settings import Hl7Settings
from pacsnode.hl7.ack import acknowledge, reject
from pacsnode.hl7.datatypes import xpn
from pacsnode.hl7.message import (
    ACCEPT,
    APPLICATION_INTERNAL_ERROR,
    ERROR,
    REJECT,
    REQUIRED_FIELD_MISSING,
    UNKNOWN_KEY_IDENTIFIER,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION_ID,
    Hl7Error,
    Received,
    read,
    read_header,
    value,
)
from pacsnode.hl7.orders import DISCONTINUED, order_changes
from pacsnode.hl7.patients import patient_merges, patient_update
from pacsnode.security.events import AuditSink, NullAuditSink, Outcome

log = logging.getLogger("pacsnode.hl7")

# The messages this node takes (HL7 Table 0076 message type, Table 0003 event type).
SUPPORTED = {"ORM": ("O01",), "OMI": ("O23",), "ADT": ("A08", "A40")}
# MSH-12 versions read (HL7 Table 0104): v2.3 to v2.9, whose fields this mapping uses alike.
VERSIONS = frozenset(
    ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2", "2.9")
)


# PS3.15 A.5.3.13 EventActionCode of a worklist change: a new step is created, new content
# updates one; a status change that ends a step (cancelled, discontinued) deletes it from the
# worklist, any other updates it.
_ORDER_ACTIONS: dict[Action, Literal["C", "U"]] = {Action.SCHEDULE: "C", Action.REPLACE: "U"}
_ENDED = (CANCELED, DISCONTINUED)


@dataclass(frozen=True, slots=True)
class Reply:
    """The acknowledgement to send (an MLLP payload) and a line for the log."""

    ack: bytes
    code: str  # MSA-1: AA, AE or AR
    summary: str


class Hl7Feed:
    """Orders into the worklist, patient updates and merges into the index; blocking, one at a time."""

    def __init__(
        self,
        settings: Hl7Settings,
        worklist: Worklist,
        patients: PatientRecords,
        aet: str,
        audit: AuditSink | None = None,
        node: Actor | None = None,
    ) -> None:
        self.settings = settings
        self.worklist = worklist
        self.patients = patients
        self.aet = aet
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        self.node = node if node is not None else node_actor(aet)

    def handle(self, payload: bytes, peer: str = "") -> Reply:
        """Process one message from ``peer`` ("host:port"); a failure becomes AE or AR, never an exception."""
        try:
            received = read(payload)
        except Hl7Error as exc:
            return self._unreadable(payload, exc)
        label = f"{received.message_type}^{received.trigger} {received.control_id or '(no control ID)'}"
        error: Hl7Error | None = None
        try:
            self._check(received)
            outcome = self._dispatch(received)
        except Hl7Error as exc:
            error, outcome = exc, exc.text
        except Exception as exc:  # one bad message never stops the feed
            log.exception("HL7 %s: processing failed", label)
            error = Hl7Error(ERROR, APPLICATION_INTERNAL_ERROR, f"processing failed: {type(exc).__name__}")
            outcome = error.text
        try:
            self._audit(received, peer, error)
        except Exception:  # the audit must never cost the acknowledgement
            log.exception("HL7 %s: audit failed", label)
        code = error.ack if error is not None else ACCEPT
        header = received.header
        text = acknowledge(
            header,
            code,
            error,
            application=self.settings.application or ("" if value(header, 5) else self.aet),
            facility=self.settings.facility,
            message=received.message,
        )
        # The ACK is written in the message's character set (its own text is ASCII, escaped).
        return Reply(
            text.encode(received.charset.codec, errors="replace"), code, f"{label}: {code} {outcome}"
        )

    def oversize(self, head: bytes, limit: int) -> Reply:
        """The AR for a block over ``max_message`` bytes (what of its header could be read answers it)."""
        error = Hl7Error(REJECT, APPLICATION_INTERNAL_ERROR, f"message larger than {limit} bytes")
        return self._unreadable(head, error)

    def _unreadable(self, payload: bytes, error: Hl7Error) -> Reply:
        """AR to a message that cannot be read whole: echo its MSH if that much can be read."""
        try:
            header = read_header(payload)
        except Hl7Error:
            text = reject(
                error, application=self.settings.application or self.aet, facility=self.settings.facility
            )
            return Reply(
                text.encode("ascii", errors="replace"), REJECT, f"unreadable message: AR {error.text}"
            )
        text = acknowledge(
            header,
            REJECT,
            error,
            application=self.settings.application or self.aet,
            facility=self.settings.facility,
        )
        label = f"{value(header, 9, 1)}^{value(header, 9, 2)} {value(header, 10) or '(no control ID)'}"
        return Reply(text.encode("latin-1", errors="replace"), REJECT, f"{label}: AR {error.text}")

    def _check(self, received: Received) -> None:
        """HL7 v2.5.1 2.9.2.2: message type, version and processing ID the receiver takes, else AR."""
        events = SUPPORTED.get(received.message_type)
        if events is None:
            raise Hl7Error(
                REJECT,
                UNSUPPORTED_MESSAGE_TYPE,
                f"unsupported message type {received.message_type!r}",
                "MSH",
                1,
                9,
            )
        if received.trigger not in events:
            raise Hl7Error(
                REJECT,
                UNSUPPORTED_EVENT_CODE,
                f"unsupported event {received.message_type}^{received.trigger}",
                "MSH",
                1,
                9,
            )
        if not received.control_id:
            raise Hl7Error(
                REJECT, REQUIRED_FIELD_MISSING, "MSH-10 (message control ID) is required", "MSH", 1, 10
            )
        if received.version not in VERSIONS:
            raise Hl7Error(
                REJECT, UNSUPPORTED_VERSION_ID, f"unsupported HL7 version {received.version!r}", "MSH", 1, 12
            )
        if received.processing_id != self.settings.processing_id:
            raise Hl7Error(
                REJECT,
                UNSUPPORTED_PROCESSING_ID,
                f"processing ID {received.processing_id!r}, this node takes {self.settings.processing_id!r}",
                "MSH",
                1,
                11,
            )

    def _dispatch(self, received: Received) -> str:
        if received.message_type in ("ORM", "OMI"):
            return self._orders(received)
        if received.trigger == "A08":
            update = patient_update(received)
            change = self.patients.update(update.key, update.values)
            if change.nothing:
                return f"patient {update.key.patient_id!r} is not in the index: nothing to update"
            return (
                f"patient {update.key.patient_id!r} updated: {change.patients} record(s), "
                f"{change.studies} stud(ies), {change.worklist_items} worklist item(s)"
            )
        lines = []
        for merge in patient_merges(received):
            change = self.patients.merge(merge.prior, merge.surviving, merge.values)
            lines.append(
                f"patient {merge.prior.patient_id!r} merged into {merge.surviving.patient_id!r}: "
                f"{change.studies} stud(ies), {change.worklist_items} worklist item(s)"
                if not change.nothing
                else f"patient {merge.prior.patient_id!r} is not in the index: nothing to merge"
            )
        return "; ".join(lines)

    def _audit(self, received: Received, peer: str, error: Hl7Error | None) -> None:
        """PS3.15 A.5.3.13 Order Record per worklist change, A.5.3.14 Patient Record per patient changed."""
        if received.trigger not in SUPPORTED.get(received.message_type, ()):
            return  # not an order or a patient update: nothing in the archive was asked for
        header = received.header
        facility = "|".join(v for v in (value(header, 3), value(header, 4)) if v)
        sender = Actor(facility or host_of(peer), host_of(peer))  # HL7 sending application|facility
        outcome = Outcome.MINOR_FAILURE if error is not None else Outcome.SUCCESS
        why = error.text if error is not None else ""
        try:
            pid = received.message.segment("PID")
            patient = (value(pid, 3, 1), xpn(pid, 5)[:324])
        except Exception:  # no PID (an A40 has its own), or one that cannot be read
            patient = ("", "")
        events = []
        try:
            if received.message_type in ("ORM", "OMI"):
                for change in order_changes(received):
                    ds = change.dataset
                    subject = (
                        (str(ds.get("PatientID", "")), str(ds.get("PatientName", ""))) if ds else patient
                    )
                    events.append(
                        order_record(
                            _ORDER_ACTIONS.get(change.action) or ("D" if change.status in _ENDED else "U"),
                            sender,
                            self.node,
                            *subject,
                            accession_number=change.accession_number,
                            outcome=outcome,
                            description=why,
                        )
                    )
            elif received.trigger == "A08":
                update = patient_update(received)
                name = update.values.get("PatientName", patient[1])
                events.append(
                    patient_record(
                        "U", sender, self.node, update.key.patient_id, name, outcome=outcome, description=why
                    )
                )
            else:
                for merge in patient_merges(received):
                    events.append(
                        patient_record(
                            "U",
                            sender,
                            self.node,
                            merge.surviving.patient_id,
                            outcome=outcome,
                            description=why,
                        )
                    )
                    events.append(
                        patient_record(
                            "D", sender, self.node, merge.prior.patient_id, outcome=outcome, description=why
                        )
                    )
        except Exception:
            # The message could not be read as far as its changes: one event for it, failed.
            build = order_record if received.message_type in ("ORM", "OMI") else patient_record
            events = [build("U", sender, self.node, *patient, outcome=Outcome.MINOR_FAILURE, description=why)]
        for event in events:
            self.audit.emit(event)

    def _orders(self, received: Received) -> str:
        changes = order_changes(received)
        try:
            return "; ".join(apply_changes(self.worklist, changes))
        except UnknownOrder as exc:
            # Each change is one OBR (ORM) or one IPC (OMI), in message order.
            segment, field = ("IPC", 1) if received.message_type == "OMI" else ("OBR", 18)
            raise Hl7Error(
                ERROR, UNKNOWN_KEY_IDENTIFIER, str(exc), segment, exc.position + 1, field
            ) from None
