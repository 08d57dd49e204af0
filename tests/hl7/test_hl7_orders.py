"""HL7 v2 messages to worklist changes (IHE RAD TF-2 Table B-1), patient feeds, character sets and ACKs.

No node here: the samples of tests/hl7 are read, mapped and acknowledged in memory.
"""

from __future__ import annotations

from typing import Any

import pytest
from hl7samples import parse_ack, sample, variant

from pacsnode.archive.orders import Action
from pacsnode.hl7.ack import acknowledge, reject
from pacsnode.hl7.message import Hl7Error, read, read_header
from pacsnode.hl7.orders import order_changes
from pacsnode.hl7.patients import patient_merges, patient_update

ORM = "orm_o01_new_latin1.hl7"
OMI = "omi_o23_new_utf8.hl7"


def changes_of(payload: bytes) -> list[Any]:
    return order_changes(read(payload))


def error_of(payload: bytes) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        received = read(payload)
        if received.message_type == "ADT":
            (patient_update if received.trigger == "A08" else patient_merges)(received)
        else:
            order_changes(received)
    return info.value


# ---------------------------------------------------------------- ORM^O01 and OMI^O23 to MWL items


def test_orm_new_order_maps_to_one_worklist_item_in_latin1() -> None:
    (change,) = changes_of(sample(ORM))
    assert change.action is Action.SCHEDULE
    assert (change.accession_number, change.step_id) == ("ACC7001", "SPS7001")
    assert change.keep_study_uid is False  # ZDS-1 names the study
    ds = change.dataset
    assert ds.SpecificCharacterSet == "ISO_IR 100"  # MSH-18 8859/1
    assert str(ds.PatientName) == "Müller^Jürgen^Karl^Dr."
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("PAT1001", "GENHOSP")
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19650412", "M")
    assert str(ds.ReferringPhysicianName) == "Schäfer^Anna^^Dr."
    assert str(ds.RequestingPhysician) == "Schäfer^Anna^^Dr."
    assert ds.AdmissionID == "V4711"
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.10.1001.7001"
    assert (ds.RequestedProcedureID, ds.RequestedProcedureDescription) == ("RP7001", "CT Kopf")
    assert ds.RequestedProcedureCodeSequence[0].CodeValue == "CTHEAD"
    assert ds.ReasonForTheRequestedProcedure == "Kopfschmerz seit 3 Tagen"
    assert ds.RequestedProcedurePriority == "ROUTINE"
    assert ds.PlacerOrderNumberImagingServiceRequest == "PL-7001"
    assert ds.FillerOrderNumberImagingServiceRequest == "FL-7001"
    (step,) = ds.ScheduledProcedureStepSequence
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepID) == (
        "CT",
        "CT01",
        "SPS7001",
    )
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == (
        "20240612",
        "093000",
    )
    assert str(step.ScheduledPerformingPhysicianName) == "Weiß^Petra"
    assert step.ScheduledProcedureStepDescription == "CT Schädel nativ"
    assert step.ScheduledProtocolCodeSequence[0].CodeMeaning == "CT Schädel nativ"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"


def test_omi_maps_each_ipc_to_an_item_in_utf8() -> None:
    first, second = changes_of(sample(OMI))
    assert [c.step_id for c in (first, second)] == ["SPS8001A", "SPS8001B"]
    for change in (first, second):
        ds = change.dataset
        assert ds.SpecificCharacterSet == "ISO_IR 192"  # MSH-18 UNICODE UTF-8
        assert str(ds.PatientName) == "Παπαδοπούλου^Ελένη"
        assert ds.AccessionNumber == "ACC8001"  # IPC-1
        assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.10.1001.8001"  # IPC-3
        assert str(ds.RequestingPhysician) == "Nuñez^José^^Dr."  # ORC-12 (no OBR-16)
        step = ds.ScheduledProcedureStepSequence[0]
        assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == (
            "20240613",
            "141500",
        )
        assert step.ScheduledStationName == "MR1-STATION"
    assert first.dataset.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "MRSCANNER1"
    assert list(second.dataset.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == [
        "MRSCANNER1",
        "MRSCANNER2",
    ]


def test_without_a_study_uid_one_is_derived_from_the_order() -> None:
    (one,) = changes_of(variant(ORM, drop=("ZDS",)))
    (again,) = changes_of(variant(ORM, {"MSH.10": "OTHER"}, drop=("ZDS",)))
    (other,) = changes_of(variant(ORM, {"OBR.18": "ACC7002"}, drop=("ZDS",)))
    uid = one.dataset.StudyInstanceUID
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert again.dataset.StudyInstanceUID == uid
    assert other.dataset.StudyInstanceUID != uid
    assert one.keep_study_uid is True


@pytest.mark.parametrize(
    ("control", "status", "action", "status_text"),
    [
        ("XO", "", Action.REPLACE, ""),
        ("SC", "SC", Action.REPLACE, ""),
        ("CA", "", Action.STATUS, "CANCELED"),
        ("OC", "", Action.STATUS, "CANCELED"),
        ("DC", "", Action.STATUS, "DISCONTINUED"),
        ("SC", "CM", Action.STATUS, "COMPLETED"),
        ("SC", "CA", Action.STATUS, "CANCELED"),
    ],
)
def test_order_control_codes(control: str, status: str, action: Action, status_text: str) -> None:
    (change,) = changes_of(variant(ORM, {"ORC.1": control, "ORC.5": status}))
    assert change.action is action
    assert change.status == status_text
    assert (change.accession_number, change.step_id) == ("ACC7001", "SPS7001")


def test_a_cancel_needs_only_the_accession_number() -> None:
    (change,) = changes_of(variant(ORM, {"ORC.1": "CA", "OBR.20": ""}, drop=("PID", "PV1")))
    assert (change.action, change.accession_number, change.step_id) == (Action.STATUS, "ACC7001", "")


# ---------------------------------------------------------------- what breaks the rules: AE with a 0357 code


@pytest.mark.parametrize(
    ("payload", "code", "where"),
    [
        pytest.param(variant(ORM, {"ORC.1": "ZZ"}), 103, ("ORC", 1), id="unknown-order-control"),
        pytest.param(variant(ORM, drop=("OBR",)), 101, ("OBR", 0), id="missing-obr"),
        pytest.param(variant(ORM, drop=("ORC", "OBR", "ZDS")), 101, ("ORC", 0), id="missing-orc"),
        pytest.param(variant(OMI, drop=("IPC",)), 101, ("IPC", 0), id="omi-missing-ipc"),
        pytest.param(variant(ORM, {"OBR.18": ""}), 101, ("OBR", 18), id="missing-accession"),
        pytest.param(variant(ORM, {"OBR.20": ""}), 101, ("OBR", 20), id="missing-step-id"),
        pytest.param(variant(ORM, {"PID.3": ""}), 101, ("PID", 3), id="missing-patient-id"),
        pytest.param(variant(ORM, {"OBR.18": "A" * 17}), 102, ("OBR", 18), id="accession-too-long"),
        pytest.param(variant(ORM, {"ORC.7": "^^^2024-06-12"}), 102, ("ORC", 7), id="bad-start-date"),
        pytest.param(variant(ORM, {"PID.7": "12.04.1965"}), 102, ("PID", 7), id="bad-birth-date"),
        pytest.param(variant(ORM, {"ZDS.1": "1.2.abc"}), 102, ("ZDS", 1), id="bad-study-uid"),
        pytest.param(variant(ORM, {"ORC.18": "STATION-NAME-TOO-LONG"}), 102, ("ORC", 18), id="bad-ae-title"),
        pytest.param(variant(ORM, drop=("PID", "PV1")), 101, ("PID", 0), id="new-order-without-pid"),
    ],
)
def test_order_errors(payload: bytes, code: int, where: tuple[str, int]) -> None:
    error = error_of(payload)
    assert (error.ack, error.code) == ("AE", code)
    assert (error.segment, error.field) == where


def _reordered(payload: bytes, move: str, after: str) -> bytes:
    lines = payload.decode("latin-1").split("\r")
    moved = next(line for line in lines if line.startswith(move + "|"))
    lines.remove(moved)
    lines.insert(next(i for i, line in enumerate(lines) if line.startswith(after + "|")) + 1, moved)
    return "\r".join(lines).encode("latin-1")


@pytest.mark.parametrize(
    ("drop", "move", "after", "segment"),
    [
        (("PV1",), "PID", "ORC", "PID"),
        ((), "PV1", "OBR", "PV1"),
        ((), "ORC", "OBR", "OBR"),
        ((), "PV1", "MSH", "PV1"),
    ],
    ids=["pid-after-orc", "pv1-after-orc", "obr-before-orc", "pv1-before-pid"],
)
def test_wrong_segment_order_is_a_sequence_error(
    drop: tuple[str, ...], move: str, after: str, segment: str
) -> None:
    error = error_of(_reordered(variant(ORM, drop=drop), move, after))
    assert (error.ack, error.code, error.segment) == ("AE", 100, segment)


# ---------------------------------------------------------------- ADT^A08 and ADT^A40


def test_a08_takes_the_fields_sent_only() -> None:
    update = patient_update(read(sample("adt_a08_update.hl7")))
    assert (update.key.patient_id, update.key.issuer) == ("PAT1001", "GENHOSP")
    assert update.values == {
        "PatientName": "Müller-Lüdenscheidt^Jürgen^Karl",
        "PatientBirthDate": "19650421",
        "PatientSex": "M",
    }


def test_a08_null_value_clears() -> None:
    update = patient_update(read(variant("adt_a08_update.hl7", {"PID.8": '""', "PID.7": ""})))
    assert update.values["PatientSex"] == ""
    assert "PatientBirthDate" not in update.values


def test_a40_names_prior_and_surviving_patients() -> None:
    (merge,) = patient_merges(read(sample("adt_a40_merge.hl7")))
    assert (merge.prior.patient_id, merge.surviving.patient_id) == ("PAT9009", "PAT3003")
    assert merge.values["PatientName"] == "Dupont^Marie"


def test_a40_without_mrg_or_onto_itself_is_an_error() -> None:
    assert error_of(variant("adt_a40_merge.hl7", drop=("MRG",))).code == 101
    assert error_of(variant("adt_a40_merge.hl7", {"MRG.1": "PAT3003^^^GENHOSP^MR"})).code == 204


# ---------------------------------------------------------------- character sets (MSH-18, HL7 Table 0211)


def test_empty_msh18_with_utf8_bytes_is_read_as_utf8() -> None:
    received = read(variant(OMI, {"MSH.18": ""}))
    assert received.charset.dicom == "ISO_IR 192"
    assert str(order_changes(received)[0].dataset.PatientName) == "Παπαδοπούλου^Ελένη"


def test_empty_msh18_with_latin1_bytes_is_read_as_latin1() -> None:
    received = read(variant(ORM, {"MSH.18": ""}))
    assert received.charset.dicom == "ISO_IR 100"
    assert str(order_changes(received)[0].dataset.PatientName).startswith("Müller")


def test_unknown_character_set_is_rejected() -> None:
    error = error_of(variant(ORM, {"MSH.18": "EBCDIC"}))
    assert (error.ack, error.code, error.segment, error.field) == ("AR", 103, "MSH", 18)


def test_declared_utf8_that_is_not_is_rejected() -> None:
    error = error_of(variant(ORM, {"MSH.18": "UNICODE UTF-8"}))  # the bytes are ISO 8859-1
    assert (error.ack, error.code) == ("AR", 102)


@pytest.mark.parametrize("payload", [b"", b"hello world", b"PID|1||X\r", b"MSH", b"\x00\x01\x02"])
def test_not_a_message_is_rejected(payload: bytes) -> None:
    assert error_of(payload).ack == "AR"


def test_line_feeds_as_segment_terminators_are_accepted() -> None:
    (change,) = changes_of(sample(ORM).replace(b"\r", b"\r\n"))
    assert change.accession_number == "ACC7001"


# ---------------------------------------------------------------- acknowledgements (HL7 v2.5.1 2.9.2)


def test_ack_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    received = read(sample(ORM))
    ack: Any = parse_ack(acknowledge(received.header, "AA", message=received.message).encode("latin-1"))
    assert str(ack["MSH.F3"]) == "PACSNODE" and str(ack["MSH.F4"]) == "RADIOLOGY"
    assert str(ack["MSH.F5"]) == "RIS" and str(ack["MSH.F6"]) == "GENERAL HOSP"
    assert str(ack.segment("MSH")(9)) == "ACK^O01^ACK"
    assert ack["MSH.F10"] and ack["MSH.F10"] != "ORM0001"
    assert (ack["MSH.F11"], ack["MSH.F12"], ack["MSH.F18"]) == ("P", "2.3.1", "8859/1")
    assert (ack["MSA.F1"], ack["MSA.F2"]) == ("AA", "ORM0001")
    assert "\rERR" not in str(ack)


def test_ack_application_and_facility_from_settings() -> None:
    received = read(sample(ORM))
    text = acknowledge(received.header, "AA", application="MY PACS", facility="X|Y")
    ack: Any = parse_ack(text.encode("latin-1"))
    assert (ack["MSH.F3"], ack["MSH.F4"]) == ("MY PACS", "X|Y")


def test_error_ack_v231_has_an_eld_err_segment() -> None:
    received = read(sample(ORM))  # v2.3.1
    error = Hl7Error("AE", 204, "no such order", "OBR", 1, 18)
    ack: Any = parse_ack(
        acknowledge(received.header, "AE", error, message=received.message).encode("latin-1")
    )
    assert (ack["MSA.F1"], ack["MSA.F3"]) == ("AE", "no such order")
    err = ack.segment("ERR")
    assert err.extract_field(1, 1, 1, 1) == "OBR"
    assert err.extract_field(1, 1, 1, 3) == "18"
    assert err.extract_field(1, 1, 1, 4, 1) == "204"
    assert err.extract_field(1, 1, 1, 4, 3) == "HL70357"


def test_error_ack_v251_has_location_code_and_severity() -> None:
    received = read(sample(OMI))  # v2.5.1
    error = Hl7Error("AE", 101, "IPC-4 is required", "IPC", 2, 4)
    ack: Any = parse_ack(acknowledge(received.header, "AE", error, message=received.message).encode("utf-8"))
    assert str(ack.segment("MSH")(9)) == "ACK^O23^ACK"
    assert ack["ERR.F2.R1.C1"] == "IPC" and ack["ERR.F2.R1.C2"] == "2" and ack["ERR.F2.R1.C3"] == "4"
    assert (ack["ERR.F3.R1.C1"], ack["ERR.F3.R1.C3"], ack["ERR.F4"]) == ("101", "HL70357", "E")
    assert ack["ERR.F8"] == "IPC-4 is required"


def test_minimal_reject_for_an_unreadable_message() -> None:
    ack: Any = parse_ack(reject(Hl7Error("AR", 100, "not HL7"), application="PACSNODE").encode())
    assert (ack["MSH.F3"], str(ack.segment("MSH")(9)), ack["MSH.F12"]) == ("PACSNODE", "ACK", "2.5.1")
    assert (ack["MSA.F1"], ack["MSA.F2"], ack["ERR.F3.R1.C1"]) == ("AR", "", "100")


def test_header_of_a_truncated_message_can_still_be_read() -> None:
    header = read_header(sample(ORM)[:200])
    assert str(header(10)) == "ORM0001"
