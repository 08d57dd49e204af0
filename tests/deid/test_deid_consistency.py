"""PS3.15 E.1-1 U and E.3.6.2: one study in two batches keeps its structure, references and date shifts."""

from __future__ import annotations

from pathlib import Path

import pytest
from deid_helpers import KEY, TESTDATA, elements, read

from pacsnode.deid import DeidConfig, Deidentifier, Option
from pacsnode.deid.dates import shift_days
from pacsnode.deid.uids import UidMap

SERIES = TESTDATA / "hierarchy" / "ct_series_with_seg"
CT = [SERIES / f"IMG000{i}.dcm" for i in (1, 2, 3)]
SEG = SERIES / "label_seg.dcm"
LEGACY = SERIES / "legacy_enhanced_mf.dcm"
REFERENCES = (0x00081155, 0x0020000E, 0x0020000D, 0x00200052, 0x30060024)


def _run(paths: list[Path], options: frozenset[Option] = frozenset()) -> dict[Path, object]:
    deidentifier = Deidentifier(DeidConfig(key=KEY, options=options))  # a fresh one: no shared cache
    return {p: read(deidentifier.deidentify_bytes(p.read_bytes(), str(p))[0]) for p in paths}


def test_two_batches_give_the_same_uids() -> None:
    first = _run([*CT[:2], SEG])
    second = _run([CT[2], LEGACY, SEG])
    assert first[SEG].SOPInstanceUID == second[SEG].SOPInstanceUID  # same instance, same new UID
    studies = {ds.StudyInstanceUID for ds in [*first.values(), *second.values()]}
    assert len(studies) == 1 and studies != {read(CT[0]).StudyInstanceUID}
    series = {p: ds.SeriesInstanceUID for batch in (first, second) for p, ds in batch.items()}
    assert series[CT[0]] == series[CT[2]]  # the CT series stays one series across batches
    frames = {
        ds.FrameOfReferenceUID for ds in [*first.values(), *second.values()] if "FrameOfReferenceUID" in ds
    }
    assert len(frames) == 1


def test_seg_still_refers_to_its_source_images() -> None:
    out = _run([*CT, SEG])
    images = {out[p].SOPInstanceUID for p in CT}
    seg = out[SEG]
    referenced = {str(e.value) for _d, e in elements(seg) if e.tag == 0x00081155}
    assert referenced and referenced <= images  # every reference points at a de-identified CT slice
    series = {str(e.value) for _d, e in elements(seg) if e.tag == 0x0020000E and _d > 0}
    assert series <= {out[CT[0]].SeriesInstanceUID}
    assert seg.FrameOfReferenceUID == out[CT[0]].FrameOfReferenceUID


@pytest.mark.parametrize(
    "name",
    [
        "modalities/SR_comprehensive3d_tid1500.dcm",
        "modalities/SR_comprehensive_nested.dcm",
        "modalities/KO_key_object_selection.dcm",
    ],
)
def test_sr_references_follow_the_mapping(name: str) -> None:
    path = TESTDATA / name
    original = read(path)
    out = _run([path])[path]
    mapping = UidMap(KEY)
    before = sorted(mapping(str(e.value)) for _d, e in elements(original) if e.tag in REFERENCES and e.value)
    after = sorted(str(e.value) for _d, e in elements(out) if e.tag in REFERENCES and e.value)
    assert before and before == after  # same references, each replaced by its consistent UID


def test_modified_dates_shift_per_patient_consistently() -> None:
    options = frozenset({Option.RETAIN_MODIFIED_DATES})
    first = _run([CT[0]], options)[CT[0]]
    second = _run([CT[1]], options)[CT[1]]
    original = read(CT[0])
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    if original.get("StudyDate"):
        assert first.StudyDate == second.StudyDate != original.StudyDate
    assert shift_days(KEY, "A") != shift_days(KEY, "B") or shift_days(KEY, "A") != shift_days(KEY, "C")
    assert -3652 <= shift_days(KEY, str(original.PatientID)) <= -1


def test_pseudonym_table_and_keyed_hash() -> None:
    original = read(CT[0])
    config = DeidConfig(key=KEY, pseudonyms={str(original.PatientID): "TRIAL-007"})
    ds = read(Deidentifier(config).deidentify_bytes(CT[0].read_bytes())[0])
    assert ds.PatientID == "TRIAL-007" and str(ds.PatientName) == "TRIAL-007"
    other = read(Deidentifier(DeidConfig(key=bytes(32))).deidentify_bytes(CT[0].read_bytes())[0])
    assert other.PatientID.startswith("ANON-") and other.PatientID != _run([CT[0]])[CT[0]].PatientID


def test_retain_uids_keeps_them() -> None:
    ds = _run([CT[0]], frozenset({Option.RETAIN_UIDS}))[CT[0]]
    assert ds.SOPInstanceUID == read(CT[0]).SOPInstanceUID


def test_record_attributes() -> None:
    ds = _run([CT[0]], frozenset({Option.CLEAN_DESCRIPTORS, Option.RETAIN_FULL_DATES}))[CT[0]]
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113106"]
    assert all(item.CodingSchemeDesignator == "DCM" for item in ds.DeidentificationMethodCodeSequence)
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert "113100" in ds.DeidentificationMethod
    basic = _run([CT[0]])[CT[0]]
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in basic.DeidentificationMethodCodeSequence] == ["113100"]
