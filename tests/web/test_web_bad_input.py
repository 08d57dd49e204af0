"""DICOMweb bad input: every malformed request gets its 4xx and a reason, nothing is stored half,
and the node goes on serving."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from peerkit import TESTDATA, assert_consistent

CT = TESTDATA / "modalities" / "CT_small.dcm"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XBOUNDARYX'


def _body(*parts: bytes, boundary: str = "XBOUNDARYX") -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.fixture(scope="module")
def node(make_module_storage_node):
    n = make_module_storage_node(http=True, web={"max_body": 2_000_000, "max_results": 3})
    n.node.archive.import_files([CT])
    return n


@pytest.fixture(scope="module")
def ct_uids():
    from pydicom import dcmread

    ds = dcmread(CT, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _alive(node) -> None:
    r = requests.get(f"{node.dicomweb_url}/studies", timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("multipart/related; type=\"application/dicom\"", 400),  # no boundary
        ("multipart/related; type=\"image/png\"; boundary=XBOUNDARYX", 415),
        ("", 415),
        ("multipart/related; type=\"application/dicom\"; boundary=\"\"", 400),
    ],
)
def test_stow_bad_content_type(node, content_type, status):
    r = requests.post(
        f"{node.dicomweb_url}/studies", data=_body(CT.read_bytes()), headers={"Content-Type": content_type}
    )
    assert r.status_code == status, r.text
    assert r.text.strip()  # a reason, in words
    _alive(node)


@pytest.mark.parametrize(
    "body",
    [
        b"not multipart at all",
        b"--XBOUNDARYX\r\nContent-Type: application/dicom\r\n\r\nno close delimiter",
        b"--OTHER\r\n\r\nx\r\n--OTHER--\r\n",
        b"",
    ],
)
def test_stow_malformed_body_is_400_and_stores_nothing(node, body):
    before = len(node.index.all_paths())
    r = requests.post(f"{node.dicomweb_url}/studies", data=body, headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 400, r.text
    assert len(node.index.all_paths()) == before
    _alive(node)


def test_stow_body_over_the_cap_is_413_before_it_is_read(node):
    big = b"\0" * 3_000_000
    r = requests.post(f"{node.dicomweb_url}/studies", data=_body(big), headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 413, r.text

    def chunks():  # no Content-Length: the cap applies while the body streams
        yield _body(big)

    r = requests.post(f"{node.dicomweb_url}/studies", data=chunks(), headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 413, r.text
    node.wait_idle()
    assert_consistent(node.data, node.index)
    _alive(node)


def test_stow_part_that_is_not_dicom_fails_with_a_reason(node):
    r = requests.post(
        f"{node.dicomweb_url}/studies",
        data=_body(b"hello, not a DICOM file" * 10),
        headers={"Content-Type": STOW_TYPE},
    )
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xC000]


def test_stow_truncated_instance_is_refused_and_nothing_is_left(node, tmp_path: Path):
    data = CT.read_bytes()[:-5000]
    before = len(node.index.all_paths())
    r = requests.post(f"{node.dicomweb_url}/studies", data=_body(data), headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 409, r.text
    assert len(node.index.all_paths()) == before
    node.wait_idle()
    assert_consistent(node.data, node.index)


def test_stow_to_another_study_is_a900(node):
    r = requests.post(
        f"{node.dicomweb_url}/studies/1.2.3.4",
        data=_body(CT.read_bytes()),
        headers={"Content-Type": STOW_TYPE},
    )
    assert r.status_code == 409, r.text
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


@pytest.mark.parametrize(
    "query",
    [
        "NoSuchKeyword=1",
        "limit=-1",
        "limit=abc",
        "offset=x",
        "orderby=PatientName",
        "fuzzymatching=maybe",
        "PatientName=" + "A" * 10_000,
        "00100010.00100020=x",  # not a sequence
        "QueryRetrieveLevel=PATIENT",
    ],
)
def test_qido_bad_parameters_are_400(node, query):
    r = requests.get(f"{node.dicomweb_url}/studies?{query}", timeout=10)
    assert r.status_code == 400, (query, r.status_code, r.text)
    assert r.text.strip()


@pytest.mark.parametrize(
    "value",
    ["' OR 1=1 --", "%' ; DROP TABLE studies; --", '"\\', "*_%", "Robert'); DROP TABLE patients;--"],
)
def test_qido_sql_metacharacters_match_nothing_and_break_nothing(node, value):
    r = requests.get(f"{node.dicomweb_url}/studies", params={"PatientName": value}, timeout=10)
    assert r.status_code in (200, 204), r.text
    if r.status_code == 200:
        for study in r.json():  # whatever matched really matches (nothing is injected)
            assert value.strip("*") in str(study.get("00100010", ""))
    _alive(node)


def test_qido_cut_answer_has_a_warning_and_pages(node, ct_uids):
    r = requests.get(f"{node.dicomweb_url}/instances", timeout=10)
    assert r.status_code == 200
    assert "Warning" not in r.headers  # one instance: under the cap of 3
    # more than max_results matches: store 3 more copies under new UIDs
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    bodies = []
    for _ in range(4):
        ds = dcmread(CT)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        from io import BytesIO

        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        bodies.append(buf.getvalue())
    headers = {"Content-Type": STOW_TYPE}
    r = requests.post(f"{node.dicomweb_url}/studies", data=_body(*bodies), headers=headers)
    assert r.status_code == 200, r.text
    r = requests.get(f"{node.dicomweb_url}/studies/{ct_uids[0]}/instances", timeout=10)
    assert len(r.json()) == 3
    assert "exceeded" in r.headers["Warning"]
    page2 = requests.get(f"{node.dicomweb_url}/studies/{ct_uids[0]}/instances?offset=3", timeout=10).json()
    assert len(page2) == 2
    uids = {i["00080018"]["Value"][0] for i in r.json()} | {i["00080018"]["Value"][0] for i in page2}
    assert len(uids) == 5


@pytest.mark.parametrize(
    "path",
    [
        "/studies/not-a-uid",
        "/studies/1.2.3/series/1.2.3%00",
        "/studies/1.2.3/series/..%5C..%5Cetc",
        "/studies/1.2.3/series/1.2/instances/1.2.3.04",  # leading zero: not a UID
    ],
)
def test_invalid_uids_are_400(node, path):
    r = requests.get(f"{node.dicomweb_url}{path}", timeout=10)
    assert r.status_code == 400, (path, r.status_code, r.text)


@pytest.mark.parametrize(
    "path",
    ["/studies/1.2.3", "/studies/1.2.3/metadata", "/nothing-here", "/studies/1.2.3/series/4.5/rendered"],
)
def test_unknown_resources_are_404(node, path):
    r = requests.get(f"{node.dicomweb_url}{path}", timeout=10)
    assert r.status_code == 404, (path, r.status_code, r.text)


def test_frames_and_rendered_bad_requests(node, ct_uids):
    st, se, i = ct_uids
    url = f"{node.dicomweb_url}/studies/{st}/series/{se}/instances/{i}"
    assert requests.get(f"{url}/frames/2", timeout=10).status_code == 404  # one frame only
    assert requests.get(f"{url}/frames/0", timeout=10).status_code == 400
    assert requests.get(f"{url}/frames/a,b", timeout=10).status_code == 400
    assert requests.get(f"{url}/rendered?window=abc", timeout=10).status_code == 400
    assert requests.get(f"{url}/rendered?viewport=0,0", timeout=10).status_code == 400
    assert requests.get(f"{url}/rendered?quality=101", timeout=10).status_code == 400
    assert requests.get(f"{url}/rendered", headers={"Accept": "text/html"}, timeout=10).status_code == 406
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert requests.get(url, headers={"Accept": jpeg}, timeout=10).status_code == 406
    far = {"Range": "bytes=999999999-"}
    assert requests.get(f"{url}/bulkdata/7FE00010", headers=far, timeout=10).status_code == 416
    ok = requests.get(f"{url}/bulkdata/7FE00010", headers={"Range": "bytes=0-9"}, timeout=10)
    assert ok.status_code == 206 and len(ok.content) == 10


@pytest.mark.parametrize(
    "query",
    [
        "requestType=WADO",
        "studyUID=1.2&seriesUID=1.2&objectUID=1.2",
        "requestType=XYZ&studyUID=1.2&seriesUID=1.2&objectUID=1.2",
        "requestType=WADO&studyUID=1.2&seriesUID=1.2&objectUID=1.2&bogus=1",
        "requestType=WADO&studyUID=x&seriesUID=1.2&objectUID=1.2",
    ],
)
def test_wado_uri_bad_requests_are_400(node, query):
    r = requests.get(f"{node.http_url}/wado?{query}", timeout=10)
    assert r.status_code == 400, (query, r.text)


def test_capabilities_list_the_resources(node):
    r = requests.options(f"{node.dicomweb_url}/", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
    assert b'path="studies/{study}/series/{series}/instances/{instance}/frames/{frames}"' in r.content
