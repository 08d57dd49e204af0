"""WADO-RS metadata from raw elements: for every file of the corpus it is the JSON pydicom's own
encoder gives (PS3.18 Annex F), with the same bulk data references, and it never reads a
large value."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsnode.web import metadata
from pacsnode.web.dicomjson import dataset_json
from peerkit import TESTDATA

FILES = [
    p
    for p in sorted(TESTDATA.rglob("*"))
    if p.is_file() and p.suffix in (".dcm", "") and p.name != "DICOMDIR"
]


def _uri(path: str) -> str:
    return f"bulk/{path}"


def _reference(path: Path) -> dict:
    """pydicom's encoder: every element converted, bulk data by the same rule and the same paths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, force=True)
        obj = dataset_json(ds, _uri)
    for key in [k for k in obj if int(k, 16) in metadata.PIXEL_TAGS]:
        obj[key] = {"vr": obj[key]["vr"], "BulkDataURI": _uri(key)}  # always bulk, however small
    return obj


def _readable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, force=True)
            ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "x")
    except Exception:
        return False
    return "SOPInstanceUID" in ds


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(TESTDATA)))
def test_raw_encoder_equals_pydicom(path):
    if not _readable(path):
        pytest.skip("pydicom itself cannot encode this file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = metadata.instance_json(path, _uri)
    except Exception as exc:
        if metadata.is_unusual(exc):
            pytest.skip("left to pydicom (big endian or code extensions)")
        raise
    assert ours == _reference(path)


def test_large_values_are_referenced_never_read(tmp_path, monkeypatch):
    import pydicom.filereader

    from peerkit import make_instance

    ds = make_instance(size=1024)  # 2 MB of Pixel Data
    ds.add_new(0x00091010, "LO", "PACSNODE TEST")  # private creator
    ds.add_new(0x00091001, "OB", b"\x01" * 5_000_000)  # a large private value before the pixels
    ds.add_new(0x7FE10010, "LO", "AFTER")  # private creator after the pixels
    ds.add_new(0x7FE11001, "LO", "after the pixels")
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)

    def no_read(*args, **kwargs):
        raise AssertionError("a deferred value was read")

    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", no_read)
    obj = metadata.instance_json(path, _uri)
    assert obj["7FE00010"]["BulkDataURI"] == "bulk/7FE00010"
    assert obj["00091001"] == {"vr": "OB", "BulkDataURI": "bulk/00091001"}
    assert obj["7FE11001"]["Value"] == ["after the pixels"]
