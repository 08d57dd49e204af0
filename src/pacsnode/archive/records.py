"""PS3.3 / PS3.4 C.6: the index keys of one instance, read from its header through pydicom."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from pacsnode.archive.index import InstanceRecord


class InvalidInstance(ValueError):
    """The data set lacks what storage needs (PS3.4 B.2.3: 0xA900 / 0xC000)."""


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    # A multi-valued element keeps the DICOM backslash form.
    text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    return text[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip("\0 ")
    if not value:
        raise InvalidInstance(f"{keyword} is missing or empty")
    if len(value) > 64:
        raise InvalidInstance(f"{keyword} is longer than 64 characters")
    return value


def instance_record(
    ds: Dataset,
    *,
    transfer_syntax_uid: str,
    path: str,
    size: int,
    sha256: str,
    source_ae_title: str,
    received_at: datetime,
) -> InstanceRecord:
    """Build the index record of a header read with ``stop_before_pixels``."""
    try:
        sop_instance_uid = _uid(ds, "SOPInstanceUID")
        sop_class_uid = _uid(ds, "SOPClassUID")
        study_uid = _uid(ds, "StudyInstanceUID")
        series_uid = _uid(ds, "SeriesInstanceUID")
        patient: dict[str, str] = {
            "patient_id": _text(ds, "PatientID", 64),
            "issuer_of_patient_id": _text(ds, "IssuerOfPatientID", 64),
            "patient_name": _text(ds, "PatientName", 324),
            "patient_birth_date": _text(ds, "PatientBirthDate", 8),
            "patient_sex": _text(ds, "PatientSex", 16),
        }
        study: dict[str, str] = {
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": _text(ds, "StudyTime", 16),
            "accession_number": _text(ds, "AccessionNumber", 64),
            "study_id": _text(ds, "StudyID", 16),
            "study_description": _text(ds, "StudyDescription", 64),
            "referring_physician_name": _text(ds, "ReferringPhysicianName", 324),
        }
        series: dict[str, Any] = {
            "modality": _text(ds, "Modality", 16),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription", 64),
            "series_date": _text(ds, "SeriesDate", 8),
            "series_time": _text(ds, "SeriesTime", 16),
            "body_part_examined": _text(ds, "BodyPartExamined", 16),
            "performed_procedure_step_start_date": _text(ds, "PerformedProcedureStepStartDate", 8),
            "performed_procedure_step_start_time": _text(ds, "PerformedProcedureStepStartTime", 16),
            "station_name": _text(ds, "StationName", 16),
            "institution_name": _text(ds, "InstitutionName", 64),
        }
        instance: dict[str, Any] = {
            "instance_number": _int(ds, "InstanceNumber"),
            "transfer_syntax_uid": transfer_syntax_uid,
            "specific_character_set": _text(ds, "SpecificCharacterSet", 256),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "number_of_frames": _int(ds, "NumberOfFrames"),
            "content_date": _text(ds, "ContentDate", 8),
            "content_time": _text(ds, "ContentTime", 16),
        }
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed values
        raise InvalidInstance(f"cannot read the header: {exc}") from exc
    return InstanceRecord(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        patient=patient,
        study=study,
        series=series,
        instance=instance,
        path=path,
        size=size,
        sha256=sha256,
        source_ae_title=source_ae_title,
        received_at=received_at,
    )
