"""PS3.15 Table E.1-1, row by row: each attribute's action under the Basic Profile and every option, checked
against the generated table itself, at top level and nested in a sequence."""

from __future__ import annotations

import functools

import pytest
from deid_helpers import KEY
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsnode.deid import DeidConfig, Deidentifier, Option
from pacsnode.deid.actions import DUMMY, Act, attribute_type, iod_of, resolve
from pacsnode.deid.dates import shift_date, shift_datetime, shift_days
from pacsnode.deid.options import action_for
from pacsnode.deid.profile_table import ATTRIBUTES, MASKED, PRIVATE
from pacsnode.deid.pseudonyms import Pseudonyms
from pacsnode.deid.uids import UidMap

CT = "1.2.840.10008.5.1.4.1.1.2"
PATIENT = "PAT-1"
HOLDER = 0x00081115  # Referenced Series Sequence: not in Table E.1-1, so its items are walked as they are
COLUMNS: list[frozenset[Option]] = [frozenset()] + [
    frozenset({o}) for o in Option if o is not Option.CLEAN_PIXEL_DATA
]
SAMPLES: dict[str, object] = {
    "AE": "SAMPLEAE",
    "AS": "045Y",
    "AT": 0x00100010,
    "CS": "SAMPLE",
    "DA": "20200102",
    "DS": "1.5",
    "DT": "20200102030405",
    "FD": 1.5,
    "FL": 1.5,
    "IS": "7",
    "LO": "SAMPLE Doe VALUE",
    "LT": "SAMPLE Doe VALUE",
    "OB": b"\x01\x02",
    "OD": b"\x01\x02\x03\x04\x05\x06\x07\x08",
    "OF": b"\x01\x02\x03\x04",
    "OL": b"\x01\x02\x03\x04",
    "OV": b"\x01\x02\x03\x04\x05\x06\x07\x08",
    "OW": b"\x01\x02",
    "PN": "Doe^John",
    "SH": "SAMPLE Doe",
    "SL": 7,
    "SS": 7,
    "ST": "SAMPLE Doe VALUE",
    "SV": 7,
    "TM": "030405",
    "UC": "SAMPLE Doe VALUE",
    "UI": "1.2.3.4.5.6",
    "UL": 7,
    "UN": b"\x01\x02",
    "UR": "http://example.com/x",
    "US": 7,
    "UT": "SAMPLE Doe VALUE",
    "UV": 7,
}
ROWS = sorted(t for t in ATTRIBUTES if t >> 16 != 0x0002)  # group 0002: the file meta, rewritten whole


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


@functools.cache
def _deidentifier(options: frozenset[Option]) -> Deidentifier:
    return Deidentifier(DeidConfig(key=KEY, options=options))


def _sample(tag: int, vr: str) -> DataElement:
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "C1"
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = "Sample"
        return DataElement(tag, vr, Sequence([item]))
    return DataElement(tag, vr, SAMPLES[vr])


def _base() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.999"
    ds.PatientID = PATIENT
    ds.PatientName = "Doe^John"
    return ds


def _where(ds: Dataset, nested: bool) -> Dataset:
    return ds[HOLDER].value[0] if nested else ds


def _run(tag: int, options: frozenset[Option], nested: bool) -> tuple[Dataset, DataElement]:
    vr = _vr(tag)
    ds = _base()
    element = _sample(tag, vr)
    if nested:
        item = Dataset()
        item.add(element)
        ds.add(DataElement(HOLDER, "SQ", Sequence([item])))
    else:
        ds.add(element)
    _deidentifier(options)(ds)
    return ds, element


def _expected(tag: int, options: frozenset[Option], nested: bool) -> Act:
    code = action_for(ATTRIBUTES[tag], options)
    return resolve(code, attribute_type(iod_of(CT), HOLDER if nested else 0, tag) if "/" in code else "3")


def _check(tag: int, options: frozenset[Option], nested: bool) -> None:
    ds, original = _run(tag, options, nested)
    act = _expected(tag, options, nested)
    where = _where(ds, nested)
    vr = original.VR
    label = f"{ATTRIBUTES[tag].name} {tag:08X} {sorted(options)} nested={nested}: expected {act.name}"
    if act is Act.REMOVE:
        assert tag not in where, label
        return
    assert tag in where, label
    value = where[tag].value
    pseudonyms = Pseudonyms(KEY)
    if tag == 0x00100020 and act in (Act.EMPTY, Act.DUMMY):
        assert value == pseudonyms(str(original.value)), label
    elif tag == 0x00100010 and act in (Act.EMPTY, Act.DUMMY):
        assert str(value) == (pseudonyms(PATIENT) if not nested else ""), label
    elif act is Act.EMPTY:
        assert value in (None, "", b"") or (vr == "SQ" and len(value) == 0), label
    elif act is Act.KEEP:
        assert value == original.value if vr != "SQ" else len(value) == 1, label
    elif act is Act.UID:
        if vr == "UI":
            assert value == UidMap(KEY)(str(original.value)) != original.value, label
        else:
            assert vr == "SQ" and len(value) == 1, label
    elif act is Act.DUMMY:
        if vr == "SQ":
            assert len(value) == 1, label  # items kept, their values dummied
        elif vr == "UI":
            assert value == UidMap(KEY)(str(original.value)), label
        elif vr in ("OB", "OW", "UN", "OD", "OF", "OL", "OV"):
            assert value and not any(value), label
        else:
            assert (value not in (None, "", b"") and value == DUMMY[vr]) or str(value) == DUMMY[vr], label
    elif act is Act.CLEAN:
        _check_clean(tag, vr, original, value, options, label)


def _check_clean(
    tag: int, vr: str, original: DataElement, value: object, options: frozenset[Option], label: str
) -> None:
    days = shift_days(KEY, PATIENT)
    if vr == "DA":
        assert value == shift_date(str(original.value), days), label  # PS3.15 E.3.6.2
    elif vr == "DT":
        assert value == shift_datetime(str(original.value), days), label
    elif vr == "TM":
        assert value == original.value, label  # whole-day shifts keep times of day
    elif vr == "SQ":
        assert len(value) == 1 and value[0].CodeValue == "C1", label  # items kept, codes kept
    elif vr in ("LO", "LT", "SH", "ST", "UT", "UC"):
        assert value and "Doe" not in str(value) and "SAMPLE" in str(value), label  # scrubbed, meaning kept
    elif vr == "PN":
        assert str(value) and "Doe" not in str(value), label
    elif vr in ("OB", "OW") and tag >> 24 in (0x50, 0x60):
        assert value == original.value, label  # E.3.3: overlay and curve data kept
    else:
        assert value != original.value or value == DUMMY.get(vr), label


@pytest.mark.parametrize("tag", ROWS, ids=[f"{t:08X}" for t in ROWS])
@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_every_row_every_column(tag: int, nested: bool) -> None:
    for options in COLUMNS:
        _check(tag, options, nested)


@pytest.mark.parametrize("value,mask,row", MASKED, ids=[r.name for _v, _m, r in MASKED])
@pytest.mark.parametrize("group", [0, 0x1E])
def test_repeating_groups(value: int, mask: int, row: object, group: int) -> None:
    tag = value | (group << 16) | (0x3000 if mask & 0xFFFF == 0 else 0)
    for options in COLUMNS:
        ds = _base()
        ds.add(
            DataElement(
                tag,
                "OB" if tag & 0xFFFF == 0x3000 else "LT",
                b"\x01\x02" if tag & 0xFFFF == 0x3000 else "Doe",
            )
        )
        ds.add(DataElement((tag & 0xFFFF0000) | 0x0010, "US", 16))  # another element of the same group
        _deidentifier(options)(ds)
        code = action_for(row, options)  # type: ignore[arg-type]
        if code == "X":
            assert tag not in ds
            if tag >> 24 == 0x60 and tag & 0xFFFF == 0x3000:
                assert (tag & 0xFFFF0000) | 0x0010 not in ds  # the overlay plane goes with its data
        else:
            assert code == "C" and tag in ds


def _private(ds: Dataset, creator: str, group: int, element: int, value: str) -> None:
    ds.add(DataElement((group << 16) | 0x0010, "LO", creator))
    ds.add(DataElement((group << 16) | 0x1000 | element, "LO", value))


@pytest.mark.parametrize("nested", [False, True])
def test_private_attributes(nested: bool) -> None:
    assert PRIVATE.basic == "X" and PRIVATE.retain_safe_private == "C"
    for options in COLUMNS:
        ds = _base()
        target = Dataset() if nested else ds
        _private(target, "SIEMENS MR HEADER", 0x0019, 0x0C, "1000")  # safe: PS3.15 Table E.3.10-1
        _private(target, "ACME SECRET", 0x0029, 0x01, "Doe^John")
        if nested:
            ds.add(DataElement(HOLDER, "SQ", Sequence([target])))
        _deidentifier(options)(ds)
        where = _where(ds, nested)
        assert 0x0029_1001 not in where and 0x0029_0010 not in where
        kept = Option.RETAIN_SAFE_PRIVATE in options
        assert (0x0019_100C in where) is kept and (0x0019_0010 in where) is kept


def test_declared_safe_private_block() -> None:
    ds = _base()
    _private(ds, "ACME 1.0", 0x0031, 0x05, "2.5")
    item = Dataset()
    item.PrivateGroupReference = 0x0031
    item.PrivateCreatorReference = "ACME 1.0"
    item.BlockIdentifyingInformationStatus = "SAFE"
    ds.PrivateDataElementCharacteristicsSequence = Sequence([item])
    _deidentifier(frozenset({Option.RETAIN_SAFE_PRIVATE}))(ds)
    assert ds[0x0031_1005].value == "2.5"


def test_unknown_standard_attribute_removed() -> None:
    ds = _base()
    ds.add(DataElement(0x00089999, "LO", "x"))  # (0008,9999): not in the dictionary
    _deidentifier(frozenset())(ds)
    assert 0x00089999 not in ds


def test_combined_codes_follow_the_iod_type() -> None:
    # PS3.15 E.1-1 X/Z/D: Institution Name is Type 3 in the CT Image IOD -> removed.
    assert attribute_type(iod_of(CT), 0, 0x00080080) == "3"
    ds, _ = _run(0x00080080, frozenset(), False)
    assert 0x00080080 not in ds
    # Z/D: Patient ID is Type 2 -> Z, which here is the pseudonym (a dummy Z allows).
    assert attribute_type(iod_of(CT), 0, 0x00100020) == "2"
    # Unknown SOP class: the strictest Type the attribute has anywhere (Device Serial Number: 1 -> D).
    assert attribute_type(None, 0, 0x00181000) == "1"
    assert resolve("X/Z/D", "1") is Act.DUMMY and resolve("X/Z/D", "2C") is Act.EMPTY
    assert resolve("X/Z/U*", "1C") is Act.UID and resolve("X/D", "2") is Act.DUMMY
