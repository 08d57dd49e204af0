"""PS3.15 E.1.1 over the shared corpus: nothing identifying left after the Basic Profile; valid output."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from deid_helpers import KEY, TESTDATA, corpus_files, elements, read
from pydicom.uid import UID_dictionary

from pacsnode.deid import DeidConfig, Deidentifier, Refused
from pacsnode.deid.profile_table import ATTRIBUTES

FILES = corpus_files()
_UID_TAGS = {
    tag for tag, row in ATTRIBUTES.items() if "U" in row.basic or (row.basic == "D" and tag == 0x006A0003)
}


def _originals(path: Path) -> tuple[set[str], set[str]]:
    """(identifying text values, identifying UIDs) of an input file."""
    ds = read(path)
    texts: set[str] = set()
    vendor = str(ds.get("Manufacturer", "") or "").strip().casefold()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName"):
        value = str(ds.get(keyword, "") or "").strip()
        generic = value.upper() in ("ANONYMOUS", "ANONYMIZED", "UNKNOWN", "DEIDENTIFIED")
        vendors = keyword == "InstitutionName" and value.casefold() in vendor  # a vendor's test "institution"
        if len(value) >= 4 and not generic and not vendors:
            texts.add(value)
    classes = {str(e.value) for _d, e in elements(ds) if e.tag in (0x00080016, 0x00081150)}
    uids: set[str] = set()
    for _depth, element in elements(ds):
        if element.tag in _UID_TAGS and element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            uids.update(str(v).strip("\0 ") for v in values)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
        uids.add(str(meta.MediaStorageSOPInstanceUID))
    uids = {u for u in uids if len(u) > 8 and u not in UID_dictionary and u not in classes}
    return texts, uids


def _leaks(data: bytes, texts: set[str], uids: set[str]) -> list[str]:
    ds = read(data)
    found = []
    for depth, element in [(0, e) for e in ds.file_meta] + list(elements(ds)):
        if element.tag == 0x7FE00010 or element.VR in (
            "SQ",
            "IS",
            "DS",
            "US",
            "UL",
            "SS",
            "SL",
            "FL",
            "FD",
            "AT",
        ):
            continue
        if element.VR in ("OB", "OW", "UN", "OF", "OD", "OL"):
            raw = element.value if isinstance(element.value, bytes) else b""
            hit = [n for n in texts | uids if n.encode("utf-8", "ignore") in raw]
        else:
            value = str(element.value)
            needles = texts if element.VR not in ("DA", "DT", "TM") else {t for t in texts if len(t) == 8}
            hit = [n for n in needles if n.casefold() in value.casefold()] + [u for u in uids if u in value]
        found += [f"{element.tag} (depth {depth}) holds {h!r}" for h in hit]
    return found


@pytest.fixture(scope="module")
def deidentifier() -> Deidentifier:
    return Deidentifier(DeidConfig(key=KEY))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(TESTDATA)) for p in FILES])
def test_basic_profile_leaves_nothing_identifying(
    path: Path, deidentifier: Deidentifier, tmp_path: Path
) -> None:
    data = path.read_bytes()
    try:
        out, result = deidentifier.deidentify_bytes(data, str(path))
    except Refused as exc:
        # Refused with a reason, and nothing written: never passed on unmodified.
        assert str(exc) and len(str(exc)) < 300
        return
    assert out != data
    texts, uids = _originals(path)
    assert _leaks(out, texts, uids) == []
    ds = read(out)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == result.sop_instance_uid
    assert ds.file_meta.TransferSyntaxUID == result.transfer_syntax
    assert ds.PatientIdentityRemoved == "YES"
    assert not [e.tag for _d, e in elements(ds) if e.tag.is_private]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.walk(lambda _ds, _el: None)  # every element decodes
    target = tmp_path / "out.dcm"
    target.write_bytes(out)
    if shutil.which("dcmdump"):
        run = subprocess.run(["dcmdump", "-q", str(target)], capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr.decode(errors="replace")


MALFORMED_REFUSED = {
    "malformed/MR_3GB_bulkdata_truncated.dcm": "truncated",
    "malformed/MR_truncated_pixeldata.dcm": "truncated",
    "malformed/RTPLAN_truncated.dcm": "truncated",
    "malformed/CT_no_preamble_no_meta.dcm": "not a DICOM file",
    "malformed/nested_private_SQ.dcm": "not a composite instance",
    "worklist/queries/wlistqry0.dcm": "not a composite instance",
    "dicomdir/pydicom_fileset/DICOMDIR": "DICOMDIR",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_REFUSED))
def test_malformed_refused_with_a_clear_message(name: str, deidentifier: Deidentifier) -> None:
    with pytest.raises(Refused, match=MALFORMED_REFUSED[name]):
        deidentifier.deidentify_bytes((TESTDATA / name).read_bytes(), name)


def test_garbage_is_refused(deidentifier: Deidentifier) -> None:
    for data in (b"", b"hello world, not DICOM at all" * 10, bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI"):
        with pytest.raises(Refused):
            deidentifier.deidentify_bytes(data)
