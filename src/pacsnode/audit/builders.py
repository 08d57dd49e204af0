"""PS3.15 A.5.3: one builder per DICOM audit message, with the participants and objects each one requires.

The emitting code says what happened in its own terms (who took part, which studies, the
outcome) and calls one builder; the builder sets the roles, codes and object types of the
message as PS3.15 A.5.3 (and IHE ITI TF-2a 3.20) give them.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from pacsnode.security.events import Action, AuditEvent, EventKind, Outcome, Participant, ParticipantObject

# PS3.16 CID 403 / RFC 3881 ParticipantObjectIDTypeCode.
PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
URI = ("12", "RFC-3881", "URI")
STUDY_INSTANCE_UID = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = ("110181", "DCM", "SOP Class UID")
# PS3.16 CID 404 (Audit Event Type Code): Application Activity.
APPLICATION_START = ("110120", "DCM", "Application Start")
APPLICATION_STOP = ("110121", "DCM", "Application Stop")
# PS3.16 CID 405 (Media Type Code): a folder or a file named by a URI.
MEDIA_URI = ("110037", "DCM", "URI")

# PS3.15 A.5.1.2.2 ParticipantObjectTypeCodeRole and A.5.1 ParticipantObjectTypeCode.
_PERSON, _SYSTEM_OBJECT = 1, 2
_ROLE_PATIENT, _ROLE_REPORT, _ROLE_SECURITY_RESOURCE, _ROLE_QUERY = 1, 3, 13, 24
# PS3.15 A.5.1.2.3 ParticipantObjectDataLifeCycle.
_ORIGINATION, _IMPORT, _LOGICAL_DELETION = 1, 2, 14

SOURCE, DESTINATION = "Source Role ID", "Destination Role ID"
APPLICATION, LAUNCHER = "Application", "Application Launcher"


# ---------------------------------------------------------------- who


def host_of(presentation_address: str) -> str:
    """The host part of "host:port" (the net layer's peer string; IPv6 addresses keep their colons)."""
    host, sep, port = presentation_address.rpartition(":")
    if not sep or not port.isdigit():
        return presentation_address
    return host.strip("[]")


def _access_point_type(address: str) -> int:
    # PS3.15 A.5.1 NetworkAccessPointTypeCode: 2 an IP address, 1 a machine (DNS) name.
    try:
        ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return 1
    return 2


@dataclass(frozen=True, slots=True)
class Actor:
    """A party to an event: a remote AE, an HTTP client or user, this node, a local user."""

    user_id: str  # PS3.15 A.5.2.1: an AE title, a user name, an address
    address: str = ""  # IP address or host name (NetworkAccessPointID), no port
    ae_title: str = ""  # a DICOM application's AE title (AlternativeUserID "AETITLES=...")
    user_name: str = ""  # PS3.15 A.5.2.3: a person's name, a process's name

    def participant(self, *, requestor: bool, role: str = "") -> Participant:
        """This party as an ActiveParticipant with a role (PS3.16 CID 402 meaning) or none."""
        return Participant(
            user_id=self.user_id or self.address or "unknown",
            requestor=requestor,
            role=role,
            # PS3.15 A.5.2.2: a DICOM application's AlternativeUserID lists its AE titles.
            alternative_user_id=f"AETITLES={self.ae_title}" if self.ae_title else "",
            user_name=self.user_name,
            network_access_point=self.address,
            network_access_point_type=_access_point_type(self.address) if self.address else 2,
        )


def dicom_peer(ae_title: str, presentation_address: str = "") -> Actor:
    """A remote AE: its AE title, at the host of its "host:port"."""
    return Actor(ae_title, host_of(presentation_address), ae_title=ae_title)


def node_actor(ae_title: str, host: str = "") -> Actor:
    """This node: its AE title, at its listening address (the host name when it listens on all)."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return Actor(ae_title, host, ae_title=ae_title, user_name="pacsnode")


def http_actor(user: str, client_address: str) -> Actor:
    """An HTTP client: its authenticated user name, else its address (IHE ATNA: the Node ID)."""
    return Actor(user or client_address, client_address)


def local_user() -> Actor:
    """The operating-system user running this process (a command-line tool's user)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return Actor(name, socket.gethostname())


# ---------------------------------------------------------------- what


class _InstanceRecord(Protocol):
    """An index record (pacsnode.archive.index.InstanceRecord) as the tally reads it."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def patient(self) -> dict[str, str]: ...
    @property
    def study(self) -> dict[str, str]: ...


class _InstanceRef(Protocol):
    """A retrieve's reference (pacsnode.archive.query.InstanceRef) as the tally reads it."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def patient_name(self) -> str: ...
    @property
    def accession_number(self) -> str: ...


@dataclass(slots=True)
class StudyRef:
    """One study of an event: its patient, and how many instances of each SOP class (how many failed)."""

    uid: str  # "" when the failed instances could not even be read
    patient_id: str = ""
    patient_name: str = ""
    accession_numbers: list[str] = field(default_factory=list)
    sop_classes: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    comment: str = ""  # the first failure's reason
    mpps_uids: list[str] = field(default_factory=list)

    @property
    def instances(self) -> int:
        """How many instances of the study the event involved."""
        return sum(self.sop_classes.values())


class StudyTally:
    """Instances as an event meets them, gathered study by study (with the failures among them)."""

    def __init__(self) -> None:
        self._studies: dict[str, StudyRef] = {}

    def __bool__(self) -> bool:
        return bool(self._studies)

    def add(
        self,
        study_uid: str,
        sop_class_uid: str,
        *,
        patient_id: str = "",
        patient_name: str = "",
        accession_number: str = "",
        failure: str | None = None,
    ) -> None:
        """One instance; ``failure`` is why it failed (None: it succeeded)."""
        study = self._studies.get(study_uid)
        if study is None:
            study = self._studies[study_uid] = StudyRef(study_uid, patient_id, patient_name)
        if accession_number and accession_number not in study.accession_numbers:
            study.accession_numbers.append(accession_number)
        if sop_class_uid:
            study.sop_classes[sop_class_uid] = study.sop_classes.get(sop_class_uid, 0) + 1
        if failure is not None:
            study.failed += 1
            study.comment = study.comment or failure or "failed"

    def add_record(self, record: _InstanceRecord | None, sop_class_uid: str, failure: str | None) -> None:
        """A received instance: its index record when it could be read (else an unknown study)."""
        if record is None:
            self.add("", sop_class_uid, failure=failure)
            return
        self.add(
            record.study_instance_uid,
            record.sop_class_uid,
            patient_id=record.patient.get("patient_id", ""),
            patient_name=record.patient.get("patient_name", ""),
            accession_number=record.study.get("accession_number", ""),
            failure=failure,
        )

    def add_ref(self, ref: _InstanceRef, failure: str | None = None) -> None:
        """A stored instance sent, or to be sent."""
        self.add(
            ref.study_instance_uid,
            ref.sop_class_uid,
            patient_id=ref.patient_id,
            patient_name=ref.patient_name,
            accession_number=ref.accession_number,
            failure=failure,
        )

    def add_refs(self, refs: Iterable[_InstanceRef]) -> StudyTally:
        """Several instances, all succeeded (or not yet sent); returns the tally."""
        for ref in refs:
            self.add_ref(ref)
        return self

    def studies(self) -> list[StudyRef]:
        """The studies, in the order they were met."""
        return list(self._studies.values())


def study_object(study: StudyRef, data_life_cycle: int | None = None) -> ParticipantObject:
    """A study (PS3.15 A.5.3: system object, role Report, its SOP classes and accession numbers)."""
    return ParticipantObject(
        type_code=_SYSTEM_OBJECT,
        id_type=STUDY_INSTANCE_UID,
        object_id=study.uid,
        role=_ROLE_REPORT,
        sop_classes=tuple(sorted(study.sop_classes.items())),
        accession_numbers=tuple(study.accession_numbers),
        mpps_uids=tuple(study.mpps_uids),
        data_life_cycle=data_life_cycle,
    )


def patient_object(patient_id: str, patient_name: str = "") -> ParticipantObject:
    """A patient (PS3.15 A.5.3: person, role Patient, the Patient ID, the name)."""
    return ParticipantObject(
        type_code=_PERSON,
        id_type=PATIENT_NUMBER,
        object_id=patient_id,
        role=_ROLE_PATIENT,
        name=patient_name,
    )


def _objects(study: StudyRef, data_life_cycle: int | None = None) -> tuple[ParticipantObject, ...]:
    # PS3.15 A.5.3.3-A.5.3.8: the studies, then their patient. Instances that could not be
    # read belong to no known study: the message then names none.
    if not study.uid:
        return ()
    return (study_object(study, data_life_cycle), patient_object(study.patient_id, study.patient_name))


def _study_outcome(study: StudyRef, outcome: Outcome | None, description: str) -> tuple[Outcome, str]:
    if outcome is not None:
        return outcome, description
    if not study.failed:
        return Outcome.SUCCESS, description
    # PS3.15 A.5.2 EventOutcomeIndicator: some of the instances failed, the rest went.
    text = f"{study.failed} of {study.instances or study.failed} instance(s) failed: {study.comment}"
    return Outcome.MINOR_FAILURE, text[:1024]


Initiator = Literal["source", "destination"] | Actor


def _transfer_parties(source: Actor, destination: Actor, initiator: Initiator) -> tuple[Participant, ...]:
    parties = [
        source.participant(requestor=initiator == "source", role=SOURCE),
        destination.participant(requestor=initiator == "destination", role=DESTINATION),
    ]
    if isinstance(initiator, Actor):
        # PS3.15 A.5.3.3 / A.5.3.7: other participants, e.g. the AE that asked for a C-MOVE.
        parties.append(initiator.participant(requestor=True))
    return tuple(parties)


# ---------------------------------------------------------------- the messages


def application_activity(
    node: Actor,
    *,
    start: bool,
    launcher: Actor | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.1 Application Activity: the node started (110120) or stopped (110121)."""
    parties = [node.participant(requestor=False, role=APPLICATION)]
    if launcher is not None:
        parties.append(launcher.participant(requestor=True, role=LAUNCHER))
    return AuditEvent(
        kind=EventKind.APPLICATION_ACTIVITY,
        action="E",
        outcome=outcome,
        outcome_description=description,
        type_codes=(APPLICATION_START if start else APPLICATION_STOP,),
        participants=tuple(parties),
    )


def _query_event(
    requestor: Actor, responder: Actor, what: ParticipantObject, outcome: Outcome, description: str
) -> AuditEvent:
    """PS3.15 A.5.3.10 Query: the requestor as source, the responder as destination, what was asked."""
    return AuditEvent(
        kind=EventKind.QUERY,
        action="E",
        outcome=outcome,
        outcome_description=description,
        participants=(
            requestor.participant(requestor=True, role=SOURCE),
            responder.participant(requestor=False, role=DESTINATION),
        ),
        objects=(what,),
    )


def query(
    requestor: Actor,
    responder: Actor,
    sop_class_uid: str,
    identifier: bytes,
    transfer_syntax: str,
    *,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.10 Query: a C-FIND, its identifier as sent (ParticipantObjectQuery)."""
    what = ParticipantObject(
        type_code=_SYSTEM_OBJECT,
        id_type=SOP_CLASS_UID,
        object_id=sop_class_uid,
        role=_ROLE_REPORT,
        # PS3.15 A.5.3.10: the query data set, and its transfer syntax as a detail.
        query=identifier,
        detail=(("TransferSyntax", transfer_syntax.encode("ascii", "replace")),),
    )
    return _query_event(requestor, responder, what, outcome, description)


def web_query(
    requestor: Actor,
    responder: Actor,
    target: str,
    *,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.10 Query over HTTP (QIDO-RS): the request target (path and query string)."""
    what = ParticipantObject(
        type_code=_SYSTEM_OBJECT,
        id_type=URI,
        object_id=target.split("?", 1)[0],
        role=_ROLE_QUERY,
        query=target.encode("utf-8"),
        detail=(("QueryEncoding", b"UTF-8"),),
    )
    return _query_event(requestor, responder, what, outcome, description)


def begin_transferring(
    source: Actor, destination: Actor, study: StudyRef, *, initiator: Initiator = "destination"
) -> AuditEvent:
    """PS3.15 A.5.3.3 Begin Transferring DICOM Instances: a retrieve starts sending a study."""
    return AuditEvent(
        kind=EventKind.BEGIN_TRANSFERRING,
        action="E",
        participants=_transfer_parties(source, destination, initiator),
        objects=_objects(study),
    )


def instances_transferred(
    action: Literal["C", "R", "U"],
    source: Actor,
    destination: Actor,
    study: StudyRef,
    *,
    initiator: Initiator = "source",
    outcome: Outcome | None = None,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.7 DICOM Instances Transferred: a study's instances received (C) or sent (R).

    The outcome is the study's (some instance failed: 4) unless given.
    """
    result, text = _study_outcome(study, outcome, description)
    return AuditEvent(
        kind=EventKind.INSTANCES_TRANSFERRED,
        action=action,
        outcome=result,
        outcome_description=text,
        participants=_transfer_parties(source, destination, initiator),
        objects=_objects(study, _ORIGINATION if action == "C" else None),
    )


def instances_accessed(
    action: Action,
    accessor: Actor,
    node: Actor,
    study: StudyRef,
    *,
    outcome: Outcome | None = None,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.6 DICOM Instances Accessed: instances of a study read, changed or deleted in place."""
    result, text = _study_outcome(study, outcome, description)
    return AuditEvent(
        kind=EventKind.INSTANCES_ACCESSED,
        action=action,
        outcome=result,
        outcome_description=text,
        participants=(accessor.participant(requestor=True), node.participant(requestor=False)),
        objects=_objects(study, _LOGICAL_DELETION if action == "D" else None),
    )


def study_deleted(
    user: Actor, node: Actor, study: StudyRef, *, outcome: Outcome | None = None, description: str = ""
) -> AuditEvent:
    """PS3.15 A.5.3.8 DICOM Study Deleted: a whole study removed from the archive."""
    result, text = _study_outcome(study, outcome, description)
    return AuditEvent(
        kind=EventKind.STUDY_DELETED,
        action="D",
        outcome=result,
        outcome_description=text,
        participants=(user.participant(requestor=True), node.participant(requestor=False)),
        objects=_objects(study, _LOGICAL_DELETION),
    )


def _media(uri: str, media_type: tuple[str, str, str], role: str) -> Participant:
    # PS3.15 A.5.2.1: the UserID of a media participant is preferably a URI.
    return Participant(user_id=uri, requestor=False, role=role, media_type=media_type)


def _media_event(
    kind: EventKind, actor: Actor, uri: str, study: StudyRef, outcome: Outcome | None, description: str
) -> AuditEvent:
    """Import and Export (PS3.15 A.5.3.4, A.5.3.5): the node and the media, on either side."""
    result, text = _study_outcome(study, outcome, description)
    importing = kind is EventKind.IMPORT
    return AuditEvent(
        kind=kind,
        action="C" if importing else "R",
        outcome=result,
        outcome_description=text,
        participants=(
            actor.participant(requestor=True, role=DESTINATION if importing else SOURCE),
            _media(uri, MEDIA_URI, "Source Media" if importing else "Destination Media"),
        ),
        objects=_objects(study, _IMPORT) if importing else _objects(study),
    )


def imported(
    importer: Actor,
    source_uri: str,
    study: StudyRef,
    *,
    outcome: Outcome | None = None,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.5 Import: a study's instances read from media (files, a folder) into the archive."""
    return _media_event(EventKind.IMPORT, importer, source_uri, study, outcome, description)


def exported(
    exporter: Actor,
    destination_uri: str,
    study: StudyRef,
    *,
    outcome: Outcome | None = None,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.4 Export: a study's instances leaving the archive's control (media, a copy)."""
    return _media_event(EventKind.EXPORT, exporter, destination_uri, study, outcome, description)


def order_record(
    action: Literal["C", "R", "U", "D"],
    user: Actor,
    node: Actor,
    patient_id: str,
    patient_name: str = "",
    *,
    accession_number: str = "",
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.13 Order Record: a scheduled procedure step created, changed or cancelled."""
    detail = (("AccessionNumber", accession_number.encode("utf-8")),) if accession_number else ()
    return AuditEvent(
        kind=EventKind.ORDER_RECORD,
        action=action,
        outcome=outcome,
        outcome_description=description,
        participants=(user.participant(requestor=True), node.participant(requestor=False)),
        objects=(replace(patient_object(patient_id, patient_name), detail=detail),),
    )


def patient_record(
    action: Literal["C", "R", "U", "D"],
    user: Actor,
    node: Actor,
    patient_id: str,
    patient_name: str = "",
    *,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.14 Patient Record: a patient's demographics updated (HL7 ADT), merged or deleted."""
    return AuditEvent(
        kind=EventKind.PATIENT_RECORD,
        action=action,
        outcome=outcome,
        outcome_description=description,
        participants=(user.participant(requestor=True), node.participant(requestor=False)),
        objects=(patient_object(patient_id, patient_name),),
    )


def procedure_record(
    action: Literal["C", "R", "U", "D"],
    user: Actor,
    node: Actor,
    patient_id: str,
    patient_name: str = "",
    studies: Sequence[StudyRef] = (),
    *,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> AuditEvent:
    """PS3.15 A.5.3.15 Procedure Record: a performed procedure step (MPPS) created or updated."""
    return AuditEvent(
        kind=EventKind.PROCEDURE_RECORD,
        action=action,
        outcome=outcome,
        outcome_description=description,
        participants=(user.participant(requestor=True), node.participant(requestor=False)),
        objects=(
            *(study_object(study) for study in studies if study.uid),
            patient_object(patient_id, patient_name),
        ),
    )


class _Association(Protocol):
    """A negotiated association (pacsnode.ul.negotiation.Negotiated) as the audit reads it."""

    @property
    def calling_ae_title(self) -> str: ...
    @property
    def calling_presentation_address(self) -> str: ...


def association_peer(association: _Association) -> Actor:
    """The requestor of an association we accepted: its AE title, at its address."""
    return dicom_peer(association.calling_ae_title, association.calling_presentation_address)


def performed_step(step: Any, mpps_uid: str) -> tuple[str, str, list[StudyRef]]:
    """An MPPS data set's patient (ID, name) and the studies it performs (PS3.4 F.7.2.1.1)."""
    patient_id = str(step.get("PatientID", "") or "")
    patient_name = str(step.get("PatientName", "") or "")
    studies: dict[str, StudyRef] = {}
    for item in step.get("ScheduledStepAttributesSequence") or ():
        uid = str(item.get("StudyInstanceUID", "") or "")
        if not uid:
            continue
        study = studies.setdefault(uid, StudyRef(uid, patient_id, patient_name, mpps_uids=[mpps_uid]))
        accession = str(item.get("AccessionNumber", "") or "")
        if accession and accession not in study.accession_numbers:
            study.accession_numbers.append(accession)
    return patient_id, patient_name, list(studies.values())


def audit_log_used(user: Actor, node: Actor, uri: str) -> AuditEvent:
    """PS3.15 A.5.3.2 Audit Log Used: the trail read (GET /api/audit), the log named by its URI."""
    return AuditEvent(
        kind=EventKind.AUDIT_LOG_USED,
        action="R",
        participants=(user.participant(requestor=True), node.participant(requestor=False)),
        objects=(
            ParticipantObject(
                type_code=_SYSTEM_OBJECT,
                id_type=URI,
                object_id=uri,
                role=_ROLE_SECURITY_RESOURCE,
                name="Security Audit Log",  # PS3.15 A.5.3.2
            ),
        ),
    )
