"""PS3.15 A.5: every audit message pacsnode builds validates against the A.5.1.1 schema; RFC 5424 framing."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree

from pacsnode.audit import builders as b
from pacsnode.audit.message import AuditSource, render, schema_path
from pacsnode.audit.syslog import BOM, MSGID, octet_counted, syslog_message
from pacsnode.security.events import AuditEvent, EventKind, Outcome, Participant, ParticipantObject

SCHEMA = etree.RelaxNG(etree.parse(schema_path()))
SOURCE = AuditSource("PACSNODE", "Hospital")
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"

NODE = b.node_actor("PACSNODE", "127.0.0.1")
MODALITY = b.dicom_peer("MODALITY", "10.0.0.7:40000")
DESTINATION = b.dicom_peer("VIEWER", "viewer.example.org")
WEB_USER = b.http_actor("alice", "192.0.2.1")


def _study(failed: int = 0) -> b.StudyRef:
    tally = b.StudyTally()
    for _ in range(3):
        tally.add("1.2.3.4", CT, patient_id="P-1", patient_name="Doe^Jane", accession_number="A1")
    tally.add("1.2.3.4", MR, patient_id="P-1", patient_name="Doe^Jane")
    for _ in range(failed):
        tally.add("1.2.3.4", MR, failure="0xA700 out of resources")
    return tally.studies()[0]


def _valid(event: AuditEvent) -> etree._Element:
    xml = render(event, SOURCE)
    doc = etree.fromstring(xml.encode("utf-8"))
    assert SCHEMA.validate(doc), f"{SCHEMA.error_log}\n{xml}"
    return doc


EVENTS = {
    "application start": b.application_activity(NODE, start=True, launcher=b.local_user()),
    "application stop": b.application_activity(NODE, start=False),
    "audit log used": b.audit_log_used(WEB_USER, NODE, "/api/audit?patient=P-1"),
    "query": b.query(MODALITY, NODE, "1.2.840.10008.5.1.4.1.2.2.1", b"\x08\x00\x52\x00", "1.2.840.10008.1.2"),
    "query refused": b.query(
        MODALITY, NODE, "1.2.840.10008.5.1.4.31", b"", "1.2.840.10008.1.2.1", outcome=Outcome.MINOR_FAILURE
    ),
    "web query": b.web_query(WEB_USER, NODE, "/dicom-web/studies?PatientID=P-1&limit=5"),
    "begin transferring": b.begin_transferring(NODE, DESTINATION, _study(), initiator=MODALITY),
    "instances received": b.instances_transferred("C", MODALITY, NODE, _study(failed=2)),
    "instances sent": b.instances_transferred("R", NODE, WEB_USER, _study(), initiator="destination"),
    "instances accessed": b.instances_accessed("D", WEB_USER, NODE, _study()),
    "study deleted": b.study_deleted(WEB_USER, NODE, _study()),
    "import": b.imported(b.local_user(), "file:///media/cd", _study()),
    "export": b.exported(b.local_user(), "file:///tmp/out", _study()),
    "order record": b.order_record("C", MODALITY, NODE, "P-1", "Doe^Jane", accession_number="A1"),
    "patient record": b.patient_record("U", MODALITY, NODE, "P-1", "Doe^Jane"),
    "procedure record": b.procedure_record("U", MODALITY, NODE, "P-1", "Doe^Jane", [_study()]),
    "unreadable instances": b.instances_transferred("C", MODALITY, NODE, b.StudyRef("", failed=1)),
    # As the access-control and TLS parts build theirs: directly from the event model.
    "security alert": AuditEvent(
        kind=EventKind.SECURITY_ALERT,
        action="E",
        outcome=Outcome.MINOR_FAILURE,
        outcome_description="not authorized",
        type_codes=(("110132", "DCM", "Use of Restricted Function"),),
        participants=(Participant("EVIL", requestor=True, network_access_point="203.0.113.9"),),
        objects=(
            ParticipantObject(2, ("110181", "DCM", "SOP Class UID"), CT, description="C-STORE refused"),
        ),
    ),
    "user authentication": AuditEvent(
        kind=EventKind.USER_AUTHENTICATION,
        action="E",
        type_codes=(("110122", "DCM", "Login"),),
        participants=(
            Participant(
                "bob", requestor=True, network_access_point="host.example", network_access_point_type=1
            ),
        ),
    ),
}


@pytest.mark.parametrize("name", list(EVENTS))
def test_every_message_validates_against_the_schema(name: str) -> None:
    doc = _valid(EVENTS[name])
    event = EVENTS[name]
    event_id = doc.find("EventIdentification/EventID")
    assert event_id is not None
    assert (event_id.get("csd-code"), event_id.get("codeSystemName"), event_id.get("originalText")) == (
        event.kind.code,
        "DCM",
        event.kind.meaning,
    )
    source = doc.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "PACSNODE"
    assert source.get("AuditEnterpriseSiteID") == "Hospital"
    assert doc.find("AuditSourceIdentification/AuditSourceTypeCode").get("csd-code") == "4"


def test_the_builders_cover_every_event_kind_but_network_entry() -> None:
    kinds = {event.kind for event in EVENTS.values()}
    assert set(EventKind) - kinds == {EventKind.NETWORK_ENTRY}  # a node is not a mobile machine


def test_a_transfer_names_source_destination_study_and_patient() -> None:
    # PS3.15 A.5.3.7: Source Role ID, Destination Role ID, the study with its SOP classes, the patient.
    doc = _valid(b.instances_transferred("C", MODALITY, NODE, _study(failed=2)))
    identification = doc.find("EventIdentification")
    assert identification.get("EventActionCode") == "C"
    assert identification.get("EventOutcomeIndicator") == "4"
    assert doc.findtext("EventIdentification/EventOutcomeDescription").startswith("2 of 6 instance(s) failed")
    source, destination = doc.findall("ActiveParticipant")
    assert source.get("UserID") == "MODALITY" and source.get("UserIsRequestor") == "true"
    assert source.get("AlternativeUserID") == "AETITLES=MODALITY"
    assert source.get("NetworkAccessPointID") == "10.0.0.7"
    assert source.get("NetworkAccessPointTypeCode") == "2"
    assert source.find("RoleIDCode").get("csd-code") == "110153"
    assert destination.get("UserID") == "PACSNODE" and destination.get("UserIsRequestor") == "false"
    assert destination.find("RoleIDCode").get("csd-code") == "110152"
    study, patient = doc.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == "1.2.3.4"
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    classes = {s.get("UID"): s.get("NumberOfInstances") for s in study.iter("SOPClass")}
    assert classes == {CT: "3", MR: "3"}
    assert [a.get("Number") for a in study.iter("Accession")] == ["A1"]
    assert patient.get("ParticipantObjectID") == "P-1"
    assert patient.findtext("ParticipantObjectName") == "Doe^Jane"
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == (
        "1",
        "1",
    )


def test_a_move_names_the_requestor_as_a_third_participant() -> None:
    doc = _valid(b.instances_transferred("R", NODE, DESTINATION, _study(), initiator=MODALITY))
    parties = {p.get("UserID"): p for p in doc.findall("ActiveParticipant")}
    assert parties["PACSNODE"].get("UserIsRequestor") == "false"
    assert parties["VIEWER"].get("UserIsRequestor") == "false"
    assert parties["VIEWER"].get("NetworkAccessPointTypeCode") == "1"  # a host name
    assert parties["MODALITY"].get("UserIsRequestor") == "true"
    assert parties["MODALITY"].find("RoleIDCode") is None


def test_a_query_carries_its_identifier_and_transfer_syntax() -> None:
    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
    doc = _valid(b.query(MODALITY, NODE, "1.2.840.10008.5.1.4.1.2.2.1", identifier, "1.2.840.10008.1.2"))
    assert doc.find("EventIdentification").get("EventActionCode") == "E"
    obj = doc.find("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    assert obj.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181"
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery")) == identifier
    detail = obj.find("ParticipantObjectDetail")
    assert detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value")) == b"1.2.840.10008.1.2"


def test_text_that_xml_cannot_carry_is_written_out_and_the_message_stays_valid() -> None:
    tally = b.StudyTally()
    tally.add("1.2.3", CT, patient_id="P\x00 1 \n", patient_name="Bad\x1bName<&>\ufffe")
    doc = _valid(b.study_deleted(b.http_actor("", "::1"), NODE, tally.studies()[0]))
    patient = doc.findall("ParticipantObjectIdentification")[1]
    assert patient.findtext("ParticipantObjectName") == "Bad\\x1bName<&>\ufffd"  # the escape as text
    assert patient.get("ParticipantObjectID") == "P\\x00 1"
    assert doc.find("ActiveParticipant").get("UserID") == "::1"


def test_event_date_time_keeps_its_time_zone() -> None:
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    event = AuditEvent(EventKind.QUERY, "E", participants=(Participant("X"),), at=at)
    doc = _valid(event)
    assert doc.find("EventIdentification").get("EventDateTime") == "2024-05-06T07:08:09.123+02:00"


def test_syslog_message_is_rfc_5424_with_the_ihe_msgid_and_a_bom() -> None:
    at = datetime(2024, 5, 6, 7, 8, 9, 5000, tzinfo=UTC)
    ok = syslog_message("<AuditMessage/>", at=at, failure=False, hostname="node.example", procid="42")
    assert ok == (
        b"<85>1 2024-05-06T07:08:09.005000+00:00 node.example pacsnode 42 IHE+RFC-3881 - "
        + BOM
        + b"<AuditMessage/>"
    )
    failed = syslog_message("<AuditMessage/>", at=at, failure=True, hostname="a b", procid="")
    # PRI 84: authpriv (10) warning (4); header fields without spaces, "-" when empty.
    assert failed.startswith(b"<84>1 2024-05-06T07:08:09.005000+00:00 ab pacsnode - " + MSGID.encode())
    header = ok.split(BOM)[0].decode("ascii")
    assert re.fullmatch(r"<\d{1,3}>1 \S+ \S+ \S+ \S+ \S+ - ", header)


def test_octet_counting_frames_the_message_by_its_length_in_bytes() -> None:
    message = syslog_message("<A>é</A>", at=datetime.now(UTC), failure=False, hostname="h", procid="1")
    framed = octet_counted(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(message) == len(rest)
    assert rest == message


def test_a_message_is_one_line_whatever_its_text_holds() -> None:
    event = b.query(MODALITY, NODE, "1.2", b"q", "1.2.840.10008.1.2", description="line one\nline two\tand\r")
    xml = render(event, SOURCE)
    assert "\n" not in xml and "\r" not in xml and "\t" not in xml
    doc = _valid(event)
    assert doc.findtext("EventIdentification/EventOutcomeDescription") == "line one\nline two\tand\r"
