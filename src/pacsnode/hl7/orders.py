"""Orders to worklist items: ORM^O01 (v2.3.1) and OMI^O23 (v2.5.1) as IHE RAD TF-2 Table B-1 maps them to MWL.

Each ORC/OBR group of an ORM^O01, and each IPC of an OMI^O23 group, is one Scheduled
Procedure Step: one worklist item with one Scheduled Procedure Step Sequence item
(PS3.4 Table K.6-1), keyed by Accession Number and Scheduled Procedure Step ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.archive.orders import Action, StepChange
from pacsnode.archive.worklist import CANCELED, SCHEDULED, STARTED
from pacsnode.data.uids import is_valid_uid
from pacsnode.hl7.datatypes import cnn, code_item, code_text, date_time, xcn
from pacsnode.hl7.message import (
    DATA_TYPE_ERROR,
    ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    Hl7Error,
    Received,
    repetitions,
    segment_ids,
    value,
)
from pacsnode.hl7.patients import demographics, patient_key

COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"

# HL7 v2.5.1 Table 0119 Order Control -> what it does to the scheduled steps.
# NW new order; XO change order; SC status changed; CA cancel; OC order cancelled; DC discontinue.
_ENDS = {"CA": CANCELED, "OC": CANCELED, "DC": DISCONTINUED}
# SC with an Order Status (ORC-5, Table 0038) that ends or starts the step; any other SC
# carries the order's new content (a changed schedule).
_SC_STATUS = {"CA": CANCELED, "DC": DISCONTINUED, "CM": COMPLETED, "IP": STARTED}
# HL7 Table 0027 Priority -> (0040,1003) Requested Procedure Priority (PS3.3 C.4.11).
_PRIORITY = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "HIGH", "R": "ROUTINE", "T": "MEDIUM"}

# PS3.5 9.1: numeric components without leading zeros, separated by periods.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
# Segments of the patient part that may only come before the first ORC.
_PATIENT_PART = frozenset(("PID", "PD1", "PV1", "PV2", "IN1", "IN2", "IN3", "GT1", "AL1"))


@dataclass
class _Group:
    """One ORC with the segments of its order."""

    orc: Any
    number: int  # 1-based occurrence of the ORC in the message
    obr: Any = None
    obr_number: int = 0
    tq1: Any = None
    zds: Any = None
    ipcs: list[tuple[Any, int]] = field(default_factory=list)


@dataclass
class _Header:
    pid: Any = None
    pv1: Any = None


def order_changes(received: Received) -> list[StepChange]:
    """The worklist changes an ORM^O01 or OMI^O23 asks for; raises Hl7Error (AE) for what breaks the rules."""
    header, groups = _structure(received)
    changes: list[StepChange] = []
    for group in groups:
        control = value(group.orc, 1).upper()
        steps = group.ipcs or [(None, 0)]
        if control in _ENDS or (control == "SC" and value(group.orc, 5).upper() in _SC_STATUS):
            status = _ENDS.get(control) or _SC_STATUS[value(group.orc, 5).upper()]
            for ipc, n in steps:
                accession, step_id = _keys(group, ipc, n, required_step=False)
                changes.append(StepChange(Action.STATUS, accession, step_id, status=status))
        elif control in ("NW", "XO", "SC"):
            if header.pid is None:
                raise Hl7Error(
                    ERROR, REQUIRED_FIELD_MISSING, f"an {control} order needs a PID segment", "PID"
                )
            action = Action.SCHEDULE if control == "NW" else Action.REPLACE
            for ipc, n in steps:
                ds, explicit_uid = _item(received, header, group, ipc, n)
                changes.append(
                    StepChange(
                        action,
                        str(ds.AccessionNumber),
                        str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID),
                        ds,
                        keep_study_uid=not explicit_uid,
                    )
                )
        else:
            raise Hl7Error(
                ERROR,
                TABLE_VALUE_NOT_FOUND,
                f"unsupported order control (HL7 Table 0119): {control!r}",
                "ORC",
                group.number,
                1,
            )
    return changes


def _structure(received: Received) -> tuple[_Header, list[_Group]]:
    """The patient part and the order groups, checked against the message structure.

    ORM^O01 (v2.3.1 4.4.1): MSH [PID [PV1] ...] {ORC [OBR [NTE] [OBX] ...] [ZDS]};
    OMI^O23 (v2.5.1 4.4.8): MSH [PID [PV1] ...] {ORC [TQ1] OBR [NTE] [OBX] ... {IPC}}.
    """
    omi = received.message_type == "OMI"
    header = _Header()
    groups: list[_Group] = []
    counts: dict[str, int] = {}
    for seg, sid in zip(received.message, segment_ids(received.message), strict=True):
        counts[sid] = counts.get(sid, 0) + 1
        n = counts[sid]
        group = groups[-1] if groups else None
        if sid == "MSH":
            if n > 1:
                raise Hl7Error(ERROR, SEGMENT_SEQUENCE_ERROR, "a second MSH segment", "MSH", n)
        elif sid in _PATIENT_PART:
            if group is not None:
                raise Hl7Error(ERROR, SEGMENT_SEQUENCE_ERROR, f"{sid} after the first ORC", sid, n)
            if sid == "PID":
                if header.pid is not None:
                    raise Hl7Error(ERROR, SEGMENT_SEQUENCE_ERROR, "a second PID segment", sid, n)
                header.pid = seg
            elif sid == "PV1":
                if header.pid is None:
                    raise Hl7Error(ERROR, SEGMENT_SEQUENCE_ERROR, "PV1 before PID", sid, n)
                header.pv1 = seg
        elif sid == "ORC":
            groups.append(_Group(seg, n))
        elif sid in ("OBR", "TQ1", "IPC", "ZDS"):
            if group is None:
                raise Hl7Error(ERROR, SEGMENT_SEQUENCE_ERROR, f"{sid} before any ORC", sid, n)
            _place(group, seg, sid, n)
        # Any other segment (NTE, OBX, DG1, CTD, BLG, Z-segments, ...) is not used.
    if not groups:
        raise Hl7Error(ERROR, REQUIRED_FIELD_MISSING, "an order message needs an ORC segment", "ORC")
    for group in groups:
        if group.obr is None:
            raise Hl7Error(
                ERROR, REQUIRED_FIELD_MISSING, "an ORC without its OBR segment", "OBR", group.number
            )
        if omi and not group.ipcs:
            raise Hl7Error(ERROR, REQUIRED_FIELD_MISSING, "an OMI^O23 order needs an IPC segment", "IPC")
    return header, groups


def _place(group: _Group, seg: Any, sid: str, n: int) -> None:
    if sid == "OBR":
        if group.obr is not None:
            raise Hl7Error(ERROR, SEGMENT_SEQUENCE_ERROR, "a second OBR for one ORC", sid, n)
        group.obr, group.obr_number = seg, n
    elif sid == "IPC":
        if group.obr is None:
            raise Hl7Error(ERROR, SEGMENT_SEQUENCE_ERROR, "IPC before its OBR", sid, n)
        group.ipcs.append((seg, n))
    elif sid == "TQ1":
        group.tq1 = group.tq1 if group.tq1 is not None else seg
    else:
        group.zds = seg


def _keys(group: _Group, ipc: Any, ipc_number: int, *, required_step: bool) -> tuple[str, str]:
    """Accession Number and Scheduled Procedure Step ID: IPC-1 and IPC-4, else OBR-18 and OBR-20."""
    segment, source, number = (
        ("IPC", ipc, ipc_number) if ipc is not None else ("OBR", group.obr, group.obr_number)
    )
    first, second = (1, 4) if ipc is not None else (18, 20)
    accession, step_id = value(source, first), value(source, second)
    for text, position, name, required in (
        (accession, first, "accession number", True),
        (step_id, second, "scheduled procedure step ID", required_step),
    ):
        if required and not text:
            raise Hl7Error(
                ERROR,
                REQUIRED_FIELD_MISSING,
                f"{segment}-{position} ({name}) is required",
                segment,
                number,
                position,
            )
        if len(text) > 16:  # PS3.5 Table 6.2-1: SH
            raise Hl7Error(
                ERROR,
                DATA_TYPE_ERROR,
                f"{segment}-{position}: at most 16 characters",
                segment,
                number,
                position,
            )
    return accession, step_id


def _item(received: Received, header: _Header, group: _Group, ipc: Any, n: int) -> tuple[Dataset, bool]:
    """The worklist item of one step (IHE RAD TF-2 Table B-1); True when the order names its study."""
    orc, obr, pv1 = group.orc, group.obr, header.pv1
    accession, step_id = _keys(group, ipc, n, required_step=True)
    key = patient_key(header.pid)
    ds = Dataset()
    if received.charset.dicom:
        ds.SpecificCharacterSet = received.charset.dicom  # HL7 MSH-18 -> PS3.3 C.12.1.1.2
    # Patient (PID) and visit (PV1).
    ds.PatientID = key.patient_id
    if key.issuer:
        ds.IssuerOfPatientID = key.issuer
    for keyword, text in demographics(header.pid, sent_only=False).items():
        setattr(ds, keyword, text)
    ds.ReferringPhysicianName = xcn(pv1, 8)[:324]  # PV1-8 Referring Doctor
    ds.AdmissionID = value(pv1, 19)[:64]  # PV1-19 Visit Number
    ds.CurrentPatientLocation = " ".join(v for v in (value(pv1, 3, c) for c in (1, 2, 3)) if v)[:64]  # PV1-3
    # Imaging service request (ORC, OBR).
    ds.AccessionNumber = accession  # IPC-1 / OBR-18 Placer Field 1
    ds.PlacerOrderNumberImagingServiceRequest = (value(orc, 2) or value(obr, 2))[:64]  # ORC-2 / OBR-2
    ds.FillerOrderNumberImagingServiceRequest = (value(orc, 3) or value(obr, 3))[:64]  # ORC-3 / OBR-3
    ds.RequestingPhysician = (xcn(obr, 16) or xcn(orc, 12))[:324]  # OBR-16 Ordering Provider
    ds.ReasonForTheRequestedProcedure = code_text(obr, 31)[:64]  # OBR-31 Reason for Study
    # Requested procedure: OBR-44 Procedure Code (else OBR-4 Universal Service ID), IPC-2 / OBR-19.
    ds.RequestedProcedureID = (value(ipc, 2) if ipc is not None else value(obr, 19))[:16]
    ds.RequestedProcedureDescription = (code_text(obr, 44) or code_text(obr, 4))[:64]
    procedure_code = code_item(obr, 44) or code_item(obr, 4)
    if procedure_code is not None:
        ds.RequestedProcedureCodeSequence = DicomSequence([procedure_code])
    priority = value(group.tq1, 9) if group.tq1 is not None else value(orc, 7, 6)  # TQ1-9 / ORC-7.6
    if priority:
        ds.RequestedProcedurePriority = _PRIORITY.get(priority.upper(), "")
    uid = value(ipc, 3) if ipc is not None else value(group.zds, 1)  # IPC-3 / ZDS-1
    if uid and not (_UID.fullmatch(uid) and is_valid_uid(uid)):
        where = ("IPC", n, 3) if ipc is not None else ("ZDS", 1, 1)
        raise Hl7Error(ERROR, DATA_TYPE_ERROR, f"not a DICOM UID: {uid[:64]!r}", *where)
    # No study UID in the order: one derived from it, the same for every message of the order.
    ds.StudyInstanceUID = uid or generate_uid(
        prefix=f"{IMPLEMENTATION_CLASS_UID}.", entropy_srcs=["hl7-order", accession, ds.RequestedProcedureID]
    )
    ds.ScheduledProcedureStepSequence = DicomSequence([_step(group, ipc, n, step_id)])
    return ds, bool(uid)


def _step(group: _Group, ipc: Any, n: int, step_id: str) -> Dataset:
    """The Scheduled Procedure Step Sequence item (IHE RAD TF-2 Table B-1, PS3.4 Table K.6-1)."""
    orc, obr, tq1 = group.orc, group.obr, group.tq1
    step = Dataset()
    step.Modality = (value(ipc, 5) if ipc is not None else value(obr, 24))[:16]  # IPC-5 / OBR-24
    # IPC-9 Scheduled Station AE Title; an ORM has none in Table B-1: ORC-18 Entering Device.
    if ipc is not None:
        titles = [value(ipc, 9, 1, 1, r) for r in range(1, repetitions(ipc, 9) + 1)]
    else:
        titles = [value(orc, 18)]
    titles = [t for t in titles if t]
    if any(len(t) > 16 for t in titles):
        where = ("IPC", n, 9) if ipc is not None else ("ORC", group.number, 18)
        raise Hl7Error(ERROR, DATA_TYPE_ERROR, "an AE title has at most 16 characters", *where)
    step.ScheduledStationAETitle = titles if len(titles) > 1 else (titles[0] if titles else "")
    # TQ1-7 Start date/time (v2.5.1), else ORC-7.4 / OBR-27.4 Quantity/Timing start, else OBR-36.
    for segment, position, text in (
        ("TQ1", 7, value(tq1, 7)),
        ("ORC", 7, value(orc, 7, 4)),
        ("OBR", 27, value(obr, 27, 4)),
        ("OBR", 36, value(obr, 36)),
    ):
        if text:
            start_date, start_time = date_time(text, segment, position)
            break
    else:
        start_date, start_time = "", ""
    step.ScheduledProcedureStepStartDate = start_date
    step.ScheduledProcedureStepStartTime = start_time
    step.ScheduledPerformingPhysicianName = cnn(obr, 34)[:324]  # OBR-34 Technician
    # IPC-6 Protocol Code, else OBR-4 Universal Service ID.
    protocol = code_item(ipc, 6) if ipc is not None else code_item(obr, 4)
    step.ScheduledProcedureStepDescription = (code_text(ipc, 6) if ipc is not None else code_text(obr, 4))[
        :64
    ]
    if protocol is not None:
        step.ScheduledProtocolCodeSequence = DicomSequence([protocol])
    step.ScheduledProcedureStepID = step_id  # IPC-4 / OBR-20 Filler Field 1
    if ipc is not None:
        step.ScheduledStationName = value(ipc, 7)[:16]  # IPC-7
        step.ScheduledProcedureStepLocation = value(ipc, 8)[:16]  # IPC-8
    step.ScheduledProcedureStepStatus = SCHEDULED
    return step
