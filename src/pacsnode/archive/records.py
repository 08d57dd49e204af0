"""PS3.3 / PS3.4 C.6: the index keys of one instance, read from its header."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsnode.archive.index import InstanceRecord
from pacsnode.data.header import HeaderError, RawHeader, Truncated, read_header
from pacsnode.data.uids import NON_PATIENT_SOP_CLASSES


class InvalidInstance(ValueError):
    """The data set lacks what storage needs (PS3.4 B.2.3: 0xA900 / 0xC000)."""


# (index column, tag, VR, kind, maximum length) for each level; kind is "text" or "int".
_Field = tuple[str, int, str, str, int]
PATIENT: tuple[_Field, ...] = (
    ("patient_id", 0x00100020, "LO", "text", 64),
    ("issuer_of_patient_id", 0x00100021, "LO", "text", 64),
    ("patient_name", 0x00100010, "PN", "text", 324),
    ("patient_birth_date", 0x00100030, "DA", "text", 8),
    ("patient_sex", 0x00100040, "CS", "text", 16),
)
STUDY: tuple[_Field, ...] = (
    ("study_date", 0x00080020, "DA", "text", 8),
    ("study_time", 0x00080030, "TM", "text", 16),
    ("accession_number", 0x00080050, "SH", "text", 64),
    ("study_id", 0x00200010, "SH", "text", 16),
    ("study_description", 0x00081030, "LO", "text", 64),
    ("referring_physician_name", 0x00080090, "PN", "text", 324),
)
SERIES: tuple[_Field, ...] = (
    ("modality", 0x00080060, "CS", "text", 16),
    ("series_number", 0x00200011, "IS", "int", 0),
    ("series_description", 0x0008103E, "LO", "text", 64),
    ("series_date", 0x00080021, "DA", "text", 8),
    ("series_time", 0x00080031, "TM", "text", 16),
    ("body_part_examined", 0x00180015, "CS", "text", 16),
    ("performed_procedure_step_start_date", 0x00400244, "DA", "text", 8),
    ("performed_procedure_step_start_time", 0x00400245, "TM", "text", 16),
    ("station_name", 0x00081010, "SH", "text", 16),
    ("institution_name", 0x00080080, "LO", "text", 64),
)
INSTANCE: tuple[_Field, ...] = (
    ("instance_number", 0x00200013, "IS", "int", 0),
    ("specific_character_set", 0x00080005, "CS", "text", 256),
    ("rows", 0x00280010, "US", "int", 0),
    ("columns", 0x00280011, "US", "int", 0),
    ("number_of_frames", 0x00280008, "IS", "int", 0),
    ("content_date", 0x00080023, "DA", "text", 8),
    ("content_time", 0x00080033, "TM", "text", 16),
)
UIDS: tuple[tuple[str, int], ...] = (
    ("SOPInstanceUID", 0x00080018),
    ("SOPClassUID", 0x00080016),
    ("StudyInstanceUID", 0x0020000D),
    ("SeriesInstanceUID", 0x0020000E),
)
WANTED: dict[int, bytes] = {
    tag: vr.encode("ascii") for _, tag, vr, _, _ in PATIENT + STUDY + SERIES + INSTANCE
} | {tag: b"UI" for _, tag in UIDS}


class _Source(Protocol):
    def text(self, tag: int) -> str: ...
    def integer(self, tag: int) -> int | None: ...


class _DatasetSource:
    """The same questions, asked of a pydicom Dataset (the fallback path)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def text(self, tag: int) -> str:
        elem = self.ds.get(tag)
        value = None if elem is None else elem.value
        if value is None or value == "":
            return ""
        # A multi-valued element keeps the DICOM backslash form.
        if isinstance(value, MultiValue | list | tuple):
            return "\\".join(str(v) for v in value)
        return str(value)

    def integer(self, tag: int) -> int | None:
        elem = self.ds.get(tag)
        value = None if elem is None else elem.value
        if value is None or value == "":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            return None


def _int(value: int | None) -> int | None:
    return value if value is not None and -(2**31) <= value < 2**31 else None


def _date(text: str) -> str:
    # Fix (tests/interop/test_storage_scp.py): PS3.5 6.2 DA, the ACR-NEMA form YYYY.MM.DD
    # (e.g. NM_multiframe_13f.dcm) was cut to 8 characters, '1995.05.'; kept as YYYYMMDD.
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        return text.replace(".", "")
    return text


def _level(source: _Source, fields: tuple[_Field, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column, tag, vr, kind, limit in fields:
        if kind == "int":
            out[column] = _int(source.integer(tag))
        else:
            # Fix (tests/security): no NUL in the index (PostgreSQL text cannot hold one: the whole
            # group commit failed, "index database unavailable"); the file keeps its value.
            text = source.text(tag).replace("\0", "")
            out[column] = (_date(text) if vr == "DA" else text)[:limit]
    return out


def _uid(source: _Source, keyword: str, tag: int, *, required: bool = True) -> str:
    value = source.text(tag).strip("\0 ")
    if not (value.isascii() and value.isprintable()):  # only " " to "~"
        # Fix (tests/security): a UID with a control character (a NUL, a line feed) is refused;
        # PostgreSQL failed the whole group commit on a NUL, SQLite indexed it.
        raise InvalidInstance(f"{keyword} holds control or non-ASCII characters")
    if not required:
        return value
    if not value:
        raise InvalidInstance(f"{keyword} is missing or empty")
    if len(value) > 64:
        raise InvalidInstance(f"{keyword} is longer than 64 characters")
    return value


def uid_of(header: Dataset | RawHeader, tag: int) -> str:
    """A UID of the header, padding removed; '' when absent."""
    source: _Source = header if isinstance(header, RawHeader) else _DatasetSource(header)
    return source.text(tag).strip("\0 ")


def read_keys(data: bytes, offset: int, transfer_syntax_uid: str, *, whole: bool = False) -> RawHeader | None:
    """The index keys by the fast reader, or None when pydicom must do it.

    ``whole``: also walk the rest of the data set; raises Truncated if it is cut short.
    """
    try:
        header = read_header(data, offset, transfer_syntax_uid, WANTED, whole=whole)
    except Truncated:
        if whole:
            raise
        return None
    except (HeaderError, LookupError, UnicodeError, ValueError):
        return None
    # Elements out of order (a malformed header) can hide a UID from a reader that
    # stops early: then pydicom, which reads everything, decides.
    needed = UIDS[:2] if header.text(0x00080016) in NON_PATIENT_SOP_CLASSES else UIDS
    return header if all(tag in header.values for _, tag in needed) else None


def instance_record(
    header: Dataset | RawHeader,
    *,
    transfer_syntax_uid: str,
    path: str,
    size: int,
    sha256: str,
    source_ae_title: str,
    received_at: datetime,
) -> InstanceRecord:
    """Build the index record from a header: a pydicom Dataset or the fast reader's RawHeader."""
    source: _Source = header if isinstance(header, RawHeader) else _DatasetSource(header)
    try:
        uids = [_uid(source, keyword, tag) for keyword, tag in UIDS[:2]]
        if uids[1] in NON_PATIENT_SOP_CLASSES:
            # Stored outside the hierarchy: no study and series UIDs to require.
            uids += [_uid(source, keyword, tag, required=False) for keyword, tag in UIDS[2:]]
        else:
            uids += [_uid(source, keyword, tag) for keyword, tag in UIDS[2:]]
        patient, study, series = _level(source, PATIENT), _level(source, STUDY), _level(source, SERIES)
        instance = _level(source, INSTANCE)
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed values
        raise InvalidInstance(f"cannot read the header: {exc}") from exc
    instance["transfer_syntax_uid"] = transfer_syntax_uid
    return InstanceRecord(
        sop_instance_uid=uids[0],
        sop_class_uid=uids[1],
        study_instance_uid=uids[2],
        series_instance_uid=uids[3],
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
