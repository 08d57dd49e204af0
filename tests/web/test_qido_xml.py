"""QIDO-RS answers as multipart/related; type="application/dicom+xml" (PS3.18 8.7.3.4, PS3.19 A.1)
carry the same attributes and values as the DICOM JSON answers."""

from __future__ import annotations

import email
import xml.etree.ElementTree as ET

import pytest
import requests

from peerkit import TESTDATA

NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
XML_ACCEPT = 'multipart/related; type="application/dicom+xml"'


@pytest.fixture(scope="module")
def node(make_module_storage_node):
    n = make_module_storage_node(http=True)
    results = n.node.archive.import_files(sorted((TESTDATA / "charsets").glob("*.dcm")))
    assert any(r.ok for r in results)
    return n


def _xml_parts(response: requests.Response) -> list[ET.Element]:
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content)
    assert message.is_multipart()
    parts = []
    for part in message.get_payload():
        assert part.get_content_type() == "application/dicom+xml"
        parts.append(ET.fromstring(part.get_payload(decode=True)))
    return parts


def _pn_text(attr: ET.Element) -> str:
    groups = []
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        node = attr.find(f"{NS}PersonName/{NS}{group}")
        comps = []
        if node is not None:
            for name in ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"):
                c = node.find(f"{NS}{name}")
                comps.append(c.text if c is not None and c.text else "")
        groups.append("^".join(comps).rstrip("^"))
    return "=".join(groups).rstrip("=")


def _pn_json(value: dict) -> str:
    # PS3.19 A.1.5 names components, so trailing empty ones (JSON keeps "A^B^^^") have no form
    groups = ("Alphabetic", "Ideographic", "Phonetic")
    return "=".join(value.get(g, "").rstrip("^") for g in groups).rstrip("=")


def test_xml_answers_match_the_json_answers(node):
    url = f"{node.dicomweb_url}/studies"
    as_json = requests.get(url, timeout=10).json()
    r = requests.get(url, headers={"Accept": XML_ACCEPT}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom+xml"')
    docs = _xml_parts(r)
    assert len(docs) == len(as_json) > 1
    for doc, obj in zip(docs, as_json, strict=True):
        attrs = {a.get("tag"): a for a in doc.findall(f"{NS}DicomAttribute")}
        assert set(attrs) == set(obj)
        for tag, value in obj.items():
            assert attrs[tag].get("vr") == value["vr"]
            if "Value" not in value:
                continue
            if value["vr"] == "PN":
                assert _pn_text(attrs[tag]) == _pn_json(value["Value"][0])
            else:
                texts = [v.text for v in attrs[tag].findall(f"{NS}Value")]
                assert texts == [str(v) for v in value["Value"]]


def test_json_is_the_default_and_unknown_types_are_406(node):
    url = f"{node.dicomweb_url}/studies"
    assert requests.get(url, timeout=10).headers["content-type"] == "application/dicom+json"
    assert requests.get(url, headers={"Accept": "text/csv"}, timeout=10).status_code == 406
