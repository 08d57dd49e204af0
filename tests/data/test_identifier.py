"""Identifiers from KEY=VALUE texts (PS3.4 C.2.2, C.4.1.1.3), as DCMTK's `-k` builds them."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacsnode.data.identifier import IdentifierError, build_identifier, set_key


def test_keywords_tags_and_return_keys() -> None:
    ds = build_identifier(
        ["QueryRetrieveLevel=STUDY", "PatientName", "0010,0020=12*", "(0020,000D)=", "StudyDate=20240101-"]
    )
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds["PatientName"].value is None and ds["PatientName"].VR == "PN"  # universal matching
    assert ds.PatientID == "12*"
    assert ds["StudyInstanceUID"].value is None
    assert ds.StudyDate == "20240101-"  # a range stays text (PS3.4 C.2.2.2.5)


def test_numbers_and_multiple_values() -> None:
    ds = build_identifier(["ModalitiesInStudy=CT\\MR", "NumberOfStudyRelatedInstances=", "Rows=512"])
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert ds["NumberOfStudyRelatedInstances"].value is None
    assert ds.Rows == 512 and ds["Rows"].VR == "US"


def test_sequence_paths() -> None:
    ds = build_identifier(
        [
            "ReferencedStudySequence[0].ReferencedSOPClassUID=",
            "ReferencedStudySequence[0].ReferencedSOPInstanceUID=1.2.3",
            "ScheduledProcedureStepSequence[1].Modality=MR",
            "ReferencedPatientSequence",
        ]
    )
    (item,) = ds.ReferencedStudySequence
    assert item["ReferencedSOPClassUID"].value is None and item.ReferencedSOPInstanceUID == "1.2.3"
    assert len(ds.ScheduledProcedureStepSequence) == 2
    assert ds.ScheduledProcedureStepSequence[1].Modality == "MR"
    assert len(ds.ReferencedPatientSequence) == 0  # PS3.4 C.2.2.2.6: an empty sequence matches any


def test_keys_go_over_a_query_file_without_changing_it() -> None:
    base = Dataset()
    base.PatientID = "A"
    base.StudyInstanceUID = None
    ds = build_identifier(["PatientID=B"], base)
    assert ds.PatientID == "B" and "StudyInstanceUID" in ds
    assert base.PatientID == "A"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("PatientNam=X", "unknown keyword 'PatientNam'"),
        ("0009,0010=X", "not in the DICOM dictionary"),
        ("PatientName[0].PatientID=", "not a sequence"),
        ("Rows=many", "not a valid US value"),
        ("ReferencedStudySequence=1", "a sequence takes no value"),
        ("=X", "no attribute before '='"),
        ("Patient Name=X", "neither a keyword nor a gggg,eeee tag"),
        ("ReferencedStudySequence[99999].ReferencedSOPClassUID=", "too large"),
    ],
)
def test_bad_keys(key: str, message: str) -> None:
    with pytest.raises(IdentifierError, match=message.replace("[", r"\[")):
        set_key(Dataset(), key)


def test_attribute_tag_values() -> None:
    ds = build_identifier(["FrameIncrementPointer=0018,1063\\FrameTime"])
    assert list(ds.FrameIncrementPointer) == [Tag(0x00181063), Tag(0x00181063)]


def test_non_ascii_values_get_utf8_unless_a_character_set_is_given() -> None:
    ds = build_identifier(["QueryRetrieveLevel=STUDY", "PatientName=山田*"])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "山田*"
    chosen = build_identifier(["SpecificCharacterSet=ISO_IR 100", "PatientName=Müller*"])
    assert chosen.SpecificCharacterSet == "ISO_IR 100"
    assert "SpecificCharacterSet" not in build_identifier(["PatientName=DOE*"])
