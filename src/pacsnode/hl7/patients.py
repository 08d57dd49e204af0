"""Patient feeds: ADT^A08 update and ADT^A40 merge (HL7 v2.5.1 3.3.8 / 3.3.40; IHE RAD TF-2 4.12)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacsnode.archive.patients import PatientKey
from pacsnode.hl7.datatypes import cx_issuer, date, xpn
from pacsnode.hl7.message import (
    ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    UNKNOWN_KEY_IDENTIFIER,
    Hl7Error,
    Received,
    is_null,
    present,
    segment_ids,
    value,
)

# HL7 Table 0001 Administrative Sex -> PS3.3 C.7.1.1 Patient's Sex (M, F, O).
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O"}


def patient_key(pid: Any, segment: str = "PID", field: int = 3) -> PatientKey:
    """PID-3 (or MRG-1): the first identifier and its assigning authority (IHE RAD TF-2 Table B-1)."""
    patient_id = value(pid, field, 1)
    if not patient_id or is_null(patient_id):
        raise Hl7Error(
            ERROR, REQUIRED_FIELD_MISSING, f"{segment}-{field} (patient ID) is required", segment, field=field
        )
    if len(patient_id) > 64:  # PS3.5 Table 6.2-1: LO
        raise Hl7Error(
            ERROR, 102, f"{segment}-{field}: a patient ID has at most 64 characters", segment, field=field
        )
    return PatientKey(patient_id, cx_issuer(pid, field)[:64])


def demographics(pid: Any, *, sent_only: bool) -> dict[str, str]:
    """The patient attributes of a PID segment (IHE RAD TF-2 Table B-1 / B-2), DICOM keyword -> value.

    ``sent_only``: only the fields the segment holds (an update); "" (HL7's null) clears.
    Otherwise every attribute, empty when the field is absent (a new worklist item).
    """
    fields: dict[str, tuple[int, Callable[[], str]]] = {
        "PatientName": (5, lambda: xpn(pid, 5)[:324]),
        "PatientBirthDate": (7, lambda: date(value(pid, 7), "PID", 7)),
        "PatientSex": (8, lambda: _SEX.get(value(pid, 8).upper(), "")),
        "PatientMotherBirthName": (6, lambda: xpn(pid, 6)[:324]),
    }
    out: dict[str, str] = {}
    for keyword, (field, read) in fields.items():
        if sent_only and not present(pid, field):
            continue
        out[keyword] = "" if is_null(value(pid, field)) else read()
    return out


@dataclass(frozen=True, slots=True)
class PatientUpdate:
    """An ADT^A08: set these attributes of this patient."""

    key: PatientKey
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class PatientMerge:
    """One PID/MRG group of an ADT^A40: ``prior`` goes into ``surviving``, which gets ``values``."""

    prior: PatientKey
    surviving: PatientKey
    values: dict[str, str]


def patient_update(received: Received) -> PatientUpdate:
    """The update an ADT^A08 asks for (HL7 v2.5.1 3.3.8: MSH EVN PID ...)."""
    pid = next(
        (s for s, i in zip(received.message, segment_ids(received.message), strict=True) if i == "PID"), None
    )
    if pid is None:
        raise Hl7Error(ERROR, REQUIRED_FIELD_MISSING, "ADT^A08 needs a PID segment", "PID")
    return PatientUpdate(patient_key(pid), demographics(pid, sent_only=True))


def patient_merges(received: Received) -> list[PatientMerge]:
    """The merges of an ADT^A40 (HL7 v2.5.1 3.3.40: MSH EVN {PID [PD1] MRG [PV1]})."""
    merges: list[PatientMerge] = []
    pid: Any = None
    pid_number = mrg_number = 0
    for seg, sid in zip(received.message, segment_ids(received.message), strict=True):
        if sid == "PID":
            if pid is not None:
                raise Hl7Error(
                    ERROR, SEGMENT_SEQUENCE_ERROR, "a PID without its MRG segment", "PID", pid_number
                )
            pid, pid_number = seg, pid_number + 1
        elif sid == "MRG":
            mrg_number += 1
            if pid is None:
                raise Hl7Error(
                    ERROR, SEGMENT_SEQUENCE_ERROR, "an MRG segment before its PID", "MRG", mrg_number
                )
            surviving = patient_key(pid)
            prior = patient_key(seg, "MRG", 1)
            if prior.patient_id == surviving.patient_id and prior.issuer == surviving.issuer:
                raise Hl7Error(
                    ERROR,
                    UNKNOWN_KEY_IDENTIFIER,
                    "MRG-1 names the surviving patient itself",
                    "MRG",
                    mrg_number,
                    1,
                )
            merges.append(PatientMerge(prior, surviving, demographics(pid, sent_only=True)))
            pid = None
    if pid is not None:
        raise Hl7Error(ERROR, REQUIRED_FIELD_MISSING, "ADT^A40 needs an MRG segment after its PID", "MRG")
    if not merges:
        raise Hl7Error(ERROR, REQUIRED_FIELD_MISSING, "ADT^A40 needs PID and MRG segments", "PID")
    return merges
