"""The byte-level path (deid/fast.py) against the pydicom path: the same data set from every corpus file.

Each file goes through both paths under the Basic Profile and under option sets that exercise
every branch (Modified Dates, cleaning, retained UIDs and identities); the outputs are read back
and compared element by element at every depth, File Meta Information included.  Where the
byte-level path declines (Fallback), the public API falls back to the pydicom path; the number
of files it handles is checked so that it cannot silently decline everything.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from deid_helpers import KEY, TESTDATA, corpus_files, read
from pydicom.dataset import Dataset

from pacsnode.deid import DeidConfig, Deidentifier, Option, Refused
from pacsnode.deid.fast import Fallback
from pacsnode.deid.pixels import PixelRule

FILES = corpus_files()
OPTION_SETS: dict[str, frozenset[Option]] = {
    "basic": frozenset(),
    "modified-dates+clean": frozenset(
        {
            Option.RETAIN_MODIFIED_DATES,
            Option.CLEAN_DESCRIPTORS,
            Option.CLEAN_STRUCTURED_CONTENT,
            Option.CLEAN_GRAPHICS,
        }
    ),
    "retain-all": frozenset(
        {
            Option.RETAIN_UIDS,
            Option.RETAIN_FULL_DATES,
            Option.RETAIN_DEVICE_IDENTITY,
            Option.RETAIN_INSTITUTION_IDENTITY,
            Option.RETAIN_PATIENT_CHARACTERISTICS,
        }
    ),
    "safe-private": frozenset({Option.RETAIN_SAFE_PRIVATE}),
    "clean-pixel-data": frozenset({Option.CLEAN_PIXEL_DATA}),  # refuses whatever is not flagged NO
}


def differences(a: Dataset, b: Dataset, where: str = "") -> list[str]:
    """Where two data sets differ: an element in one only, another VR or value, another item count."""
    found: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in sorted(set(a.keys()) | set(b.keys())):
            name = f"{where}{tag}"
            if tag not in a or tag not in b:
                found.append(f"{name} only in the {'byte-level' if tag in a else 'pydicom'} output")
                continue
            left, right = a[tag], b[tag]  # converted: UN gets its dictionary VR, as pydicom reads it
            if left.VR != right.VR:
                found.append(f"{name} VR {left.VR} != {right.VR}")
            elif left.VR == "SQ":
                if len(left.value) != len(right.value):
                    found.append(f"{name} {len(left.value)} items != {len(right.value)}")
                    continue
                for number, (x, y) in enumerate(zip(left.value, right.value, strict=True)):
                    found += differences(x, y, f"{name}[{number}].")
            elif left.value != right.value:
                found.append(f"{name} {left.value!r} != {right.value!r}")
    return found


@pytest.fixture(scope="module", params=sorted(OPTION_SETS))
def pair(request: pytest.FixtureRequest) -> tuple[str, Deidentifier]:
    return request.param, Deidentifier(DeidConfig(key=KEY, options=OPTION_SETS[request.param]))


def test_both_paths_give_the_same_data_set(pair: tuple[str, Deidentifier]) -> None:
    label, deidentifier = pair
    handled, mismatches = 0, []
    for path in FILES:
        name = str(path.relative_to(TESTDATA))
        data = path.read_bytes()
        try:
            parts, fast = deidentifier.byte_level(data)
        except Fallback:
            continue
        except Refused as exc:  # only what the pydicom path refuses alike (not DICOM at all)
            with pytest.raises(Refused, match=str(exc)[:30]):
                deidentifier.deidentify_bytes_pydicom(data, name)
            continue
        handled += 1
        try:
            slow, result = deidentifier.deidentify_bytes_pydicom(data, name)
        except Refused as exc:
            mismatches.append(f"{name}: the pydicom path refuses it ({exc})")
            continue
        if fast != result:
            mismatches.append(f"{name}: {fast} != {result}")
        ours, theirs = read(b"".join(parts)), read(slow)
        found = differences(ours.file_meta, theirs.file_meta) + differences(ours, theirs)
        mismatches += [f"{name}: {d}" for d in found[:5]]
    assert mismatches == [], f"{label}: " + "\n".join(mismatches)
    # The corpus's ordinary files (not its big endian, deflated, malformed, refused ones) all pass.
    least = 20 if label == "clean-pixel-data" else 150
    assert handled >= least, f"{label}: the byte-level path handled only {handled} files"


def test_what_the_byte_level_path_declines() -> None:
    deidentifier = Deidentifier(DeidConfig(key=KEY))
    for name in (
        "transfer_syntaxes/CT_1.2.840.10008.1.2.2_explicit_be.dcm",  # big endian
        "transfer_syntaxes/CT_1.2.840.10008.1.2.1.99_deflated.dcm",  # deflated
        "malformed/CT_bad_sequence_UN_implicit.dcm",  # a sequence encoded as UN
        "malformed/RTPLAN_truncated.dcm",  # the pydicom path gives the reason of the refusal
        "modalities/SC_16bit_utf8.dcm",  # Burned In Annotation YES: refused by the pydicom path
    ):
        with pytest.raises(Fallback):
            deidentifier.byte_level((TESTDATA / name).read_bytes())
    ct = (TESTDATA / "modalities" / "CT_small.dcm").read_bytes()
    original = read(ct)
    rule = PixelRule(((0, 0, 4, 4),), rows=int(original.Rows), columns=int(original.Columns))
    with pytest.raises(Fallback, match="pixel rule"):
        Deidentifier(DeidConfig(key=KEY, pixel_rules=(rule,))).byte_level(ct)
    data, result = Deidentifier(DeidConfig(key=KEY, pixel_rules=(rule,))).deidentify_bytes(ct)
    assert result.pixels_cleaned and read(data).BurnedInAnnotation == "NO"  # through the pydicom path


def test_file_written_by_the_byte_level_path(tmp_path: Path) -> None:
    source = TESTDATA / "modalities" / "CT_small.dcm"
    deidentifier = Deidentifier(DeidConfig(key=KEY))
    target = tmp_path / "a" / "b" / "out.dcm"
    result = deidentifier.deidentify_file(source, target)
    data = target.read_bytes()
    assert data == b"".join(deidentifier.byte_level(source.read_bytes())[0])
    assert data == deidentifier.deidentify_bytes_pydicom(source.read_bytes())[0]  # byte for byte, here
    assert read(data).SOPInstanceUID == result.sop_instance_uid
    assert [p.name for p in target.parent.iterdir()] == ["out.dcm"]  # no partial file left


def test_encapsulated_pixel_data_and_sequences_are_kept_as_they_were() -> None:
    deidentifier = Deidentifier(DeidConfig(key=KEY))
    for name in (
        "transfer_syntaxes/CT_1.2.840.10008.1.2.4.90_j2k_lossless.dcm",
        "transfer_syntaxes/CT_1.2.840.10008.1.2.1_explicit_le.dcm",
        "transfer_syntaxes/CT_1.2.840.10008.1.2_implicit_le.dcm",
    ):
        path = TESTDATA / name
        if not path.exists():
            continue
        data = path.read_bytes()
        parts, _result = deidentifier.byte_level(data)
        pixels = read(data).PixelData
        assert read(b"".join(parts)).PixelData == pixels
        assert any(len(p) >= len(pixels) for p in parts)  # Pixel Data is one slice of the input


# ---------------------------------------------------------------------- every row of Table E.1-1


def _every_row(undefined: bool) -> Dataset:
    """One object with every attribute of Table E.1-1 at top level and again in a sequence's item,
    with private blocks (listed safe, declared SAFE and MIXED, unsafe), overlays, curves, group
    lengths, an unknown attribute and a URL; sequences of undefined length when ``undefined``."""
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence
    from test_deid_table import HOLDER, ROWS, _base, _private, _sample, _vr

    ds = _base()
    item = Dataset()
    for tag in ROWS:
        if tag in (0x00080016, 0x00080018, 0x00100010, 0x00100020) or tag >> 16 < 0x0008:
            continue  # set by _base; the command group is not part of a stored object
        for where in (ds, item):
            where.add(_sample(tag, _vr(tag)))
    item.PatientID = "OTHER-ID"  # a Patient ID in an item: its own pseudonym
    item.PatientName = "Roe^Richard"
    ds.add(DataElement(HOLDER, "SQ", Sequence([item])))
    _private(ds, "SIEMENS MR HEADER", 0x0019, 0x0C, "1000")  # listed safe (PS3.15 Table E.3.10-1)
    _private(ds, "ACME SECRET", 0x0029, 0x01, "Doe^John")
    _private(ds, "ACME 1.0", 0x0031, 0x05, "2.5")
    _private(ds, "ACME 2.0", 0x0033, 0x07, "3.5")
    ds.add(DataElement(0x0033_1008, "LO", "Doe"))
    safe, mixed = Dataset(), Dataset()
    safe.PrivateGroupReference, safe.PrivateCreatorReference = 0x0031, "ACME 1.0"
    safe.BlockIdentifyingInformationStatus = "SAFE"
    mixed.PrivateGroupReference, mixed.PrivateCreatorReference = 0x0033, "ACME 2.0"
    mixed.BlockIdentifyingInformationStatus = "MIXED"
    mixed.NonidentifyingPrivateElements = [0x07, 0x09]  # several values (VM 1-n)
    ds.PrivateDataElementCharacteristicsSequence = Sequence([safe, mixed])
    ds.add(DataElement(0x6000_0010, "US", 16))  # an overlay plane
    ds.add(DataElement(0x6000_3000, "OW", b"\x01\x02"))
    ds.add(DataElement(0x5000_0005, "US", 1))  # a curve
    ds.add(DataElement(0x0018_0000, "UL", 4))  # a group length
    ds.add(DataElement(0x0009_0000, "UL", 4))
    ds.add(DataElement(0x00089999, "LO", "unknown"))  # not in the dictionary
    ds.add(DataElement(0x00081190, "UR", "http://pacs.example/studies/1.2.3"))
    ds.StudyComments = "Doe John 19700101"
    ds.SpecificCharacterSet = "ISO_IR 100"
    if undefined:
        for element in _sequences(ds):
            element.is_undefined_length = True
            for each in element.value:
                each.is_undefined_length_sequence_item = True
    return ds


def _sequences(ds: Dataset) -> list:  # type: ignore[type-arg]
    found = []
    for element in ds:
        if element.VR == "SQ":
            found.append(element)
            for item in element.value:
                found += _sequences(item)
    return found


def _part10(ds: Dataset, syntax: str) -> bytes:
    import io

    from pydicom.dataset import FileMetaDataset

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"], ids=["explicit", "implicit"])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_every_row_every_option_both_paths(syntax: str, undefined: bool) -> None:
    from test_deid_table import COLUMNS

    data = _part10(_every_row(undefined), syntax)
    combined = frozenset(set().union(*COLUMNS) - {Option.RETAIN_FULL_DATES, Option.CLEAN_PIXEL_DATA})
    for options in [*COLUMNS, combined]:
        deidentifier = Deidentifier(DeidConfig(key=KEY, options=options))
        parts, fast = deidentifier.byte_level(data)  # no Fallback: everything here is handled
        slow, result = deidentifier.deidentify_bytes_pydicom(data)
        assert fast == result
        ours, theirs = read(b"".join(parts)), read(slow)
        found = differences(ours.file_meta, theirs.file_meta) + differences(ours, theirs)
        assert found == [], f"{sorted(options)}: " + "\n".join(found)
        kept = Option.RETAIN_SAFE_PRIVATE in options
        assert (0x0019_100C in ours, 0x0031_1005 in ours, 0x0033_1007 in ours) == (kept, kept, kept)
        assert 0x0029_1001 not in ours and 0x0033_1008 not in ours and 0x00081190 not in ours


# ---------------------------------------------------------------------- damaged input

INTERESTING = b" \0\\=^\x1c\t\x1b\xe9-.0A\xff\xfe"


def test_damaged_files_give_the_same_answer_or_fall_back() -> None:
    """Bytes changed or cut off: the byte-level path declines, or agrees with the pydicom path."""
    import random

    rng = random.Random(20250101)
    small = [p for p in FILES if p.stat().st_size < 60_000]
    deidentifiers = [
        Deidentifier(DeidConfig(key=KEY)),
        Deidentifier(
            DeidConfig(key=KEY, options=OPTION_SETS["modified-dates+clean"] | {Option.RETAIN_SAFE_PRIVATE})
        ),
    ]
    agreed = 0
    for _ in range(300):
        path = rng.choice(small)
        data = bytearray(path.read_bytes())
        if rng.random() < 0.25:
            del data[rng.randrange(132, len(data)) :]
        else:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(132, len(data))] = rng.choice(INTERESTING)
        deidentifier = rng.choice(deidentifiers)
        try:
            parts, fast = deidentifier.byte_level(bytes(data))
        except (Fallback, Refused):
            continue
        slow, result = deidentifier.deidentify_bytes_pydicom(bytes(data), str(path))  # must not refuse
        ours, theirs = read(b"".join(parts)), read(slow)
        assert fast == result
        assert differences(ours.file_meta, theirs.file_meta) + differences(ours, theirs) == [], path
        agreed += 1
    assert agreed >= 50


def test_short_writes_are_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pacsnode.deid import engine

    real = os.writev

    def short(fd: int, buffers: list[bytes | memoryview]) -> int:  # at most 1000 bytes a call
        taken, left = [], 1000
        for buffer in buffers:
            piece = memoryview(buffer)[:left]
            taken.append(piece)
            left -= len(piece)
            if not left:
                break
        return real(fd, taken)

    monkeypatch.setattr(engine.os, "writev", short)
    source = TESTDATA / "modalities" / "CT_small.dcm"
    deidentifier = Deidentifier(DeidConfig(key=KEY))
    deidentifier.deidentify_file(source, tmp_path / "out.dcm")
    assert (tmp_path / "out.dcm").read_bytes() == deidentifier.deidentify_bytes(source.read_bytes())[0]
