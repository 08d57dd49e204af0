"""STOW-RS of DICOM JSON metadata with bulk data parts (PS3.18 10.5.1.2): the instance is stored
through the ingest pipeline and comes back by WADO-RS with the same elements and pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from peerkit import TESTDATA

NATIVE = TESTDATA / "transfer_syntaxes" / "CT_1.2.840.10008.1.2.1_explicit_le.dcm"
JPEG_LS = TESTDATA / "transfer_syntaxes" / "CT_1.2.840.10008.1.2.4.80_jpegls_lossless.dcm"
BOUNDARY = "JSONSTOW"
CONTENT_TYPE = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'


def _body(parts: list[tuple[dict[str, str], bytes]]) -> bytes:
    out = b""
    for headers, data in parts:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out += f"--{BOUNDARY}\r\n{head}\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _metadata(path, uri):
    ds = dcmread(path)
    # The corpus's CT files share one SOP Instance UID: each test stores its own instance.
    ds.SOPInstanceUID = generate_uid()
    pixels = ds.PixelData
    del ds.PixelData
    obj = ds.to_json_dict()
    obj["7FE00010"] = {
        "vr": "OW" if not ds.file_meta.TransferSyntaxUID.is_compressed else "OB",
        "BulkDataURI": uri,
    }
    return ds, obj, pixels


@pytest.fixture(scope="module")
def node(make_module_storage_node):
    return make_module_storage_node(http=True)


def _wado(node, ds):
    url = (
        f"{node.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=node.dicomweb_url)
    got = client.retrieve_instance(
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        media_types=(("application/dicom", "*"),),
    )
    return url, got


def test_native_pixel_data_as_octet_stream(node):
    uri = "http://client.example/bulk/1"
    ds, obj, pixels = _metadata(NATIVE, uri)
    body = _body(
        [
            ({"Content-Type": "application/dicom+json"}, json.dumps([obj]).encode()),
            ({"Content-Type": "application/octet-stream", "Content-Location": uri}, pixels),
        ]
    )
    r = requests.post(f"{node.dicomweb_url}/studies", data=body, headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 200, r.text
    refs = r.json()["00081199"]["Value"]
    assert refs[0]["00081155"]["Value"] == [str(ds.SOPInstanceUID)]
    _, got = _wado(node, ds)
    original = dcmread(NATIVE)
    original.SOPInstanceUID = ds.SOPInstanceUID
    for elem in original:
        if elem.tag.element == 0:
            continue  # PS3.18 F.2: group lengths are not part of the DICOM JSON model
        assert got[elem.tag].value == elem.value, elem.keyword
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_compressed_pixel_data_as_its_own_media_type(node):
    uri = "bulk-jls"
    ds, obj, pixels = _metadata(JPEG_LS, uri)
    frames = list(generate_frames(pixels, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    assert len(frames) == 1
    syntax = "1.2.840.10008.1.2.4.80"
    body = _body(
        [
            ({"Content-Type": "application/dicom+json"}, json.dumps([obj]).encode()),
            ({"Content-Type": f"image/jls; transfer-syntax={syntax}", "Content-Location": uri}, frames[0]),
        ]
    )
    r = requests.post(f"{node.dicomweb_url}/studies", data=body, headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 200, r.text
    _, got = _wado(node, ds)
    assert got.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(got.pixel_array, dcmread(JPEG_LS).pixel_array)


def test_missing_bulk_data_and_bad_json_fail_clearly(node):
    _, obj, _ = _metadata(NATIVE, "nowhere")
    obj["00080018"]["Value"] = ["1.2.3.4.5.6.7.8"]
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([obj]).encode())])
    r = requests.post(f"{node.dicomweb_url}/studies", data=body, headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 409, r.text
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    body = _body([({"Content-Type": "application/dicom+json"}, b"{not json")])
    r = requests.post(f"{node.dicomweb_url}/studies", data=body, headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 400, r.text
    headers = {"Content-Type": CONTENT_TYPE}
    no_uid = dict(obj)
    del no_uid["00080018"]
    no_uid.pop("7FE00010")
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([no_uid]).encode())])
    r = requests.post(f"{node.dicomweb_url}/studies", data=body, headers=headers)
    assert r.status_code == 409, r.text
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
