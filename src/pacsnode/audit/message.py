"""PS3.15 A.5.1: an audit event as the DICOM audit message (XML valid against the A.5.1.1 schema)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC
from importlib import resources
from xml.etree import ElementTree as ET

from pacsnode.config.logsafe import clean
from pacsnode.security.events import AuditEvent, Participant, ParticipantObject

# PS3.16 CID 402 (Audit Active Participant Role ID Code): a Participant names its role by
# meaning or by code.
_ROLES = (
    ("110150", "Application"),
    ("110151", "Application Launcher"),
    ("110152", "Destination Role ID"),
    ("110153", "Source Role ID"),
    ("110154", "Destination Media"),
    ("110155", "Source Media"),
)
ROLE_CODES: dict[str, tuple[str, str, str]] = {
    key: (code, "DCM", meaning) for code, meaning in _ROLES for key in (code, meaning)
}

# PS3.15 A.5.1.2.1: Audit Source Type Code 4, application server process or thread.
APPLICATION_SERVER = "4"

# XML 1.0 (2.2 Characters): what may appear in a document at all. Control characters (a NUL
# or an ESC in a patient name, a line feed in an AE title) are written out as text first
# ("\x00", "\n": pacsnode.config.logsafe); what is left (U+FFFE, U+FFFF) becomes U+FFFD.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Peer-supplied values are cut (with "…(N chars)") so that a message stays well within what a
# syslog collector takes (UDP: 64 KiB at most), however long what a peer sent: a value (a user
# ID, a UID, a name), a free text (an outcome description), a binary value (a C-FIND identifier,
# a detail) in bytes before base64.
VALUE_LIMIT = 1024
TEXT_LIMIT = 4096
BINARY_LIMIT = 16384


@dataclass(frozen=True, slots=True)
class AuditSource:
    """AuditSourceIdentification: who reports (PS3.15 A.5.2, AuditSourceID and AuditEnterpriseSiteID)."""

    source_id: str
    enterprise_site_id: str = ""


def schema_path() -> str:
    """The PS3.15 A.5.1.1 schema in RELAX NG XML syntax, shipped with the package (for validators)."""
    return str(resources.files("pacsnode.audit") / "schema" / "audit-message.rng")


def _text(value: str) -> str:
    # A value (user ID, user name): every control character written out, tabs and breaks too.
    return _NOT_XML.sub("\ufffd", clean(value, VALUE_LIMIT))


def _free(value: str) -> str:
    # Free text: tabs and line breaks kept (as character references, see render).
    return _NOT_XML.sub("\ufffd", clean(value, TEXT_LIMIT, keep_breaks=True))


def _token(value: str) -> str:
    # xsd:token: no leading, trailing or repeated whitespace, no tab or line break.
    return " ".join(_NOT_XML.sub("\ufffd", clean(value, VALUE_LIMIT, keep_breaks=True)).split())


def _b64(data: bytes) -> str:
    return base64.b64encode(data[:BINARY_LIMIT]).decode("ascii")


def _code(parent: ET.Element, tag: str, code: tuple[str, str, str]) -> None:
    # PS3.15 A.5.1.1 CodedValueType: csd-code, codeSystemName, originalText (the code meaning).
    ET.SubElement(
        parent,
        tag,
        {"csd-code": _token(code[0]), "codeSystemName": _token(code[1]), "originalText": _token(code[2])},
    )


def _participant(root: ET.Element, who: Participant) -> None:
    attrs = {"UserID": _text(who.user_id)}
    if who.alternative_user_id:
        attrs["AlternativeUserID"] = _text(who.alternative_user_id)
    if who.user_name:
        attrs["UserName"] = _text(who.user_name)
    attrs["UserIsRequestor"] = "true" if who.requestor else "false"
    if who.network_access_point:
        attrs["NetworkAccessPointID"] = _token(who.network_access_point)
        attrs["NetworkAccessPointTypeCode"] = str(who.network_access_point_type)
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    role = ROLE_CODES.get(who.role)
    if role is not None:
        _code(element, "RoleIDCode", role)
    if who.media_type is not None:
        _code(ET.SubElement(element, "MediaIdentifier"), "MediaType", who.media_type)


def _object(root: ET.Element, obj: ParticipantObject) -> None:
    attrs = {"ParticipantObjectID": _token(obj.object_id), "ParticipantObjectTypeCode": str(obj.type_code)}
    if obj.role is not None:
        attrs["ParticipantObjectTypeCodeRole"] = str(obj.role)
    if obj.data_life_cycle is not None:
        attrs["ParticipantObjectDataLifeCycle"] = str(obj.data_life_cycle)
    element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _code(element, "ParticipantObjectIDTypeCode", obj.id_type)
    # PS3.15 A.5.1.1: either a ParticipantObjectName or a ParticipantObjectQuery. An object
    # without a name of its own (a study) is named by its identifier.
    if obj.query:
        ET.SubElement(element, "ParticipantObjectQuery").text = _b64(obj.query)
    else:
        ET.SubElement(element, "ParticipantObjectName").text = _token(obj.name or obj.object_id)
    details = list(obj.detail)
    if len(obj.query) > BINARY_LIMIT:
        # A query cut to its first bytes says so (a data set cut short no longer parses).
        details.append(("QueryTruncated", f"first {BINARY_LIMIT} of {len(obj.query)} bytes".encode()))
    if obj.description:
        details.append(("Description", _free(obj.description).encode("utf-8")))
    for kind, value in details:
        # PS3.15 A.5.1.1 ValuePair: the value base64, whatever it holds.
        ET.SubElement(element, "ParticipantObjectDetail", {"type": _token(kind), "value": _b64(value)})
    if obj.mpps_uids or obj.accession_numbers or obj.sop_classes:
        # PS3.15 A.5.1.1 DICOMObjectDescriptionContents: MPPS*, Accession*, SOPClass*, in this order.
        description = ET.SubElement(element, "ParticipantObjectDescription")
        for uid in obj.mpps_uids:
            ET.SubElement(description, "MPPS", {"UID": _token(uid)})
        for number in obj.accession_numbers:
            ET.SubElement(description, "Accession", {"Number": _token(number)})
        for uid, count in obj.sop_classes:
            ET.SubElement(description, "SOPClass", {"UID": _token(uid), "NumberOfInstances": str(count)})


def render(event: AuditEvent, source: AuditSource) -> str:
    """The AuditMessage of PS3.15 A.5.1 for one event, as XML text (with its declaration)."""
    root = ET.Element("AuditMessage")
    at = event.at if event.at.tzinfo is not None else event.at.replace(tzinfo=UTC)
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": event.action,
            # PS3.15 A.5.2.5: the EventDateTime includes the time zone.
            "EventDateTime": at.isoformat(timespec="milliseconds"),
            "EventOutcomeIndicator": str(int(event.outcome)),
        },
    )
    _code(identification, "EventID", (event.kind.code, "DCM", event.kind.meaning))
    for type_code in event.type_codes:
        _code(identification, "EventTypeCode", type_code)
    if event.outcome_description:
        ET.SubElement(identification, "EventOutcomeDescription").text = _free(event.outcome_description)
    for who in event.participants:
        _participant(root, who)
    attrs = {"AuditSourceID": _token(source.source_id)}
    if source.enterprise_site_id:
        attrs["AuditEnterpriseSiteID"] = _token(source.enterprise_site_id)
    audit_source = ET.SubElement(root, "AuditSourceIdentification", attrs)
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": APPLICATION_SERVER})
    for obj in event.objects:
        _object(root, obj)
    body = ET.tostring(root, encoding="unicode")
    # One line: line breaks and tabs in text become character references (the same XML), so that
    # a collector that writes one message per line, or escapes control characters, keeps it whole.
    body = body.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    return '<?xml version="1.0" encoding="UTF-8"?>' + body
