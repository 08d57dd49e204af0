"""The admin REST API (/api): paged, filtered listings through the query engine; deletion of any
level removes index rows and files together; counts and the OpenAPI description."""

from __future__ import annotations

import pytest
import requests
from pydicom import dcmread

from peerkit import TESTDATA, assert_consistent

HIERARCHY = sorted((TESTDATA / "hierarchy").rglob("*.dcm"))


@pytest.fixture
def node(make_storage_node):
    n = make_storage_node(http=True)
    results = n.node.archive.import_files(HIERARCHY)
    assert all(r.ok for r in results), [r.comment for r in results if not r.ok]
    return n


def _headers():
    by_study: dict[str, list] = {}
    for path in HIERARCHY:
        ds = dcmread(path, stop_before_pixels=True)
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return by_study


def test_system_counts_what_is_stored(node):
    system = requests.get(f"{node.http_url}/api/system", timeout=10).json()
    by_study = _headers()
    assert system["counts"]["studies"] == len(by_study)
    assert system["counts"]["instances"] == len(HIERARCHY)
    assert system["stored_bytes"] > 0 and system["disk"]["free"] > 0
    assert system["version"]


def test_listings_page_and_filter(node):
    url = f"{node.http_url}/api/studies"
    everything = requests.get(url, params={"limit": 1000}, timeout=10).json()
    assert everything["more"] is False
    assert {s["StudyInstanceUID"] for s in everything["items"]} == set(_headers())
    pages, offset = [], 0
    while True:
        page = requests.get(url, params={"limit": 2, "offset": offset}, timeout=10).json()
        pages.extend(page["items"])
        offset += 2
        if not page["more"]:
            break
    assert sorted(s["StudyInstanceUID"] for s in pages) == sorted(
        s["StudyInstanceUID"] for s in everything["items"]
    )
    some = everything["items"][0]
    filtered = requests.get(url, params={"PatientID": some["PatientID"]}, timeout=10).json()["items"]
    assert filtered and all(s["PatientID"] == some["PatientID"] for s in filtered)
    assert isinstance(some["NumberOfStudyRelatedInstances"], int)
    patients = requests.get(f"{node.http_url}/api/patients", timeout=10).json()["items"]
    assert {p["PatientID"] for p in patients} == {s["PatientID"] for s in everything["items"]}


@pytest.mark.parametrize("level", ["patients", "studies", "series", "instances"])
def test_delete_removes_rows_and_files_together(node, level):
    by_study = _headers()
    study_uid, datasets = max(by_study.items(), key=lambda kv: len(kv[1]))
    ds = datasets[0]
    key = {
        "patients": str(ds.PatientID),
        "studies": study_uid,
        "series": str(ds.SeriesInstanceUID),
        "instances": str(ds.SOPInstanceUID),
    }[level]
    expected = {
        "patients": sum(1 for ds_ in by_study.values() for d in ds_ if str(d.PatientID) == str(ds.PatientID)),
        "studies": len(datasets),
        "series": sum(1 for d in datasets if d.SeriesInstanceUID == ds.SeriesInstanceUID),
        "instances": 1,
    }[level]
    before = len(node.index.all_paths())
    r = requests.delete(f"{node.http_url}/api/{level}/{key}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["instances"] == expected
    assert len(node.index.all_paths()) == before - expected
    assert_consistent(node.data, node.index)  # no row without its file, no file without its row
    assert requests.get(f"{node.http_url}/api/{level}/{key}", timeout=10).status_code == 404
    assert requests.delete(f"{node.http_url}/api/{level}/{key}", timeout=10).status_code == 404
    # QIDO-RS agrees, and the computed counts of what remains follow
    studies = requests.get(f"{node.dicomweb_url}/studies", timeout=10)
    remaining = studies.json() if studies.status_code == 200 else []
    total = sum(s["00201208"]["Value"][0] for s in remaining)
    assert total == before - expected
    assert not node.index.trash_paths()


def test_bad_keys_and_unknown_entities(node):
    assert requests.get(f"{node.http_url}/api/studies/not-a-uid", timeout=10).status_code == 400
    assert requests.delete(f"{node.http_url}/api/series/1.2.3%00", timeout=10).status_code == 400
    assert requests.get(f"{node.http_url}/api/instances/1.2.3.4", timeout=10).status_code == 404
    assert requests.get(f"{node.http_url}/api/studies", params={"Nope": "1"}, timeout=10).status_code == 400
    assert requests.get(f"{node.http_url}/api/studies", params={"limit": "0"}, timeout=10).status_code == 422


def test_openapi_description_is_served(node):
    spec = requests.get(f"{node.http_url}/api/openapi.json", timeout=10).json()
    assert {"/studies", "/studies/{key}", "/system"} <= set(spec["paths"])
    assert "delete" in spec["paths"]["/studies/{key}"]
    docs = requests.get(f"{node.http_url}/api/docs", timeout=10)
    assert docs.status_code == 200 and "openapi.json" in docs.text
