"""PS3.15 A.5: the audit events the node's parts emit, and the sink they go to (rendered elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Literal, Protocol


class EventKind(Enum):
    """PS3.15 A.5.3 (with the EventID codes of PS3.16 CID 400): which audit message."""

    APPLICATION_ACTIVITY = ("110100", "Application Activity")
    AUDIT_LOG_USED = ("110101", "Audit Log Used")
    BEGIN_TRANSFERRING = ("110102", "Begin Transferring DICOM Instances")
    INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
    STUDY_DELETED = ("110105", "DICOM Study Deleted")
    EXPORT = ("110106", "Export")
    IMPORT = ("110107", "Import")
    NETWORK_ENTRY = ("110108", "Network Entry")
    ORDER_RECORD = ("110109", "Order Record")
    PATIENT_RECORD = ("110110", "Patient Record")
    PROCEDURE_RECORD = ("110111", "Procedure Record")
    QUERY = ("110112", "Query")
    SECURITY_ALERT = ("110113", "Security Alert")
    USER_AUTHENTICATION = ("110114", "User Authentication")

    @property
    def code(self) -> str:
        """The EventID code (DCM)."""
        return self.value[0]

    @property
    def meaning(self) -> str:
        """The EventID code meaning."""
        return self.value[1]


# PS3.15 A.5.1 EventActionCode: Create, Read, Update, Delete, Execute.
Action = Literal["C", "R", "U", "D", "E"]


class Outcome(int, Enum):
    """PS3.15 A.5.1 EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True, slots=True)
class Participant:
    """An ActiveParticipant: who took part (a user, a remote AE, this node)."""

    user_id: str  # an AE title, a user name, a process id
    requestor: bool = False
    # PS3.16 CID 402 role: "Application", "Application Launcher", "Source Role ID",
    # "Destination Role ID", "Source Media", "Destination Media"; "" for none.
    role: str = ""
    alternative_user_id: str = ""  # e.g. "AETITLES=PACSNODE"
    user_name: str = ""
    network_access_point: str = ""  # an address or host name
    network_access_point_type: int = 2  # 1 machine name, 2 IP address
    # MediaIdentifier's MediaType (PS3.16 CID 405), for a "Source Media" or "Destination Media".
    media_type: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """A ParticipantObjectIdentification: what the event is about (a patient, a study, a query...)."""

    # PS3.15 A.5.1: type code 1 person, 2 system object, 3 organization, 4 other.
    type_code: int
    # ParticipantObjectIDTypeCode: e.g. ("2", "RFC-3881", "Patient Number"),
    # ("110180", "DCM", "Study Instance UID"), ("110181", "DCM", "SOP Class UID").
    id_type: tuple[str, str, str]
    object_id: str
    role: int | None = None  # ParticipantObjectTypeCodeRole: 1 patient, 3 report, 24 query, ...
    name: str = ""  # e.g. the patient's name
    query: bytes = b""  # ParticipantObjectQuery (base64 in the message): e.g. a C-FIND identifier
    detail: tuple[tuple[str, bytes], ...] = ()  # ParticipantObjectDetail (type, value)
    # For a study: the SOP classes of its instances involved, with how many of each.
    sop_classes: tuple[tuple[str, int], ...] = ()
    description: str = ""  # free text (a ParticipantObjectDetail "Description": the schema's
    # ParticipantObjectDescription holds only the DICOM items below and sop_classes)
    accession_numbers: tuple[str, ...] = ()  # ParticipantObjectDescription Accession
    mpps_uids: tuple[str, ...] = ()  # ParticipantObjectDescription MPPS
    data_life_cycle: int | None = None  # ParticipantObjectDataLifeCycle (e.g. 14 permanent erasure)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event to audit, as the emitting code knows it; the audit trail makes the message."""

    kind: EventKind
    action: Action
    outcome: Outcome = Outcome.SUCCESS
    outcome_description: str = ""
    # EventTypeCode, e.g. ("110120", "DCM", "Application Start"), ("110127", "DCM", "Emergency Override
    # Started"), ("110122", "DCM", "Login"), ("110126", "DCM", "Node Authentication").
    type_codes: tuple[tuple[str, str, str], ...] = ()
    participants: tuple[Participant, ...] = ()
    objects: tuple[ParticipantObject, ...] = ()
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class AuditSink(Protocol):
    """Where events go. ``emit`` never blocks for long and never raises (thread-safe)."""

    def emit(self, event: AuditEvent) -> None:
        """Record the event (the sink keeps it durably and sends it on)."""


class NullAuditSink:
    """A sink that keeps nothing (tools and tests that do not audit)."""

    def emit(self, event: AuditEvent) -> None:
        """Drop the event."""


class MemoryAuditSink:
    """A sink that keeps events in a list (unit tests)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        """Keep the event."""
        self.events.append(event)
