"""HTTP server options of [web]: CORS for browsers on other origins, gzip for JSON only,
the base path, and HTTP off; `pacsnode serve` logs the DICOMweb URL it serves."""

from __future__ import annotations

import pytest
import requests

from peerkit import TESTDATA

FILES = sorted((TESTDATA / "hierarchy").rglob("*.dcm"))


@pytest.fixture(scope="module")
def node(make_module_storage_node):
    n = make_module_storage_node(
        http=True, web={"cors_origins": ["http://viewer.example"], "base_path": "/dw", "gzip_min_size": 100}
    )
    n.node.archive.import_files(FILES)
    return n


def test_base_path_is_configurable(node):
    assert node.dicomweb_url.endswith("/dw")
    assert requests.get(f"{node.dicomweb_url}/studies", timeout=10).status_code == 200
    assert requests.get(f"{node.http_url}/dicom-web/studies", timeout=10).status_code == 404


def test_cors_preflight_and_simple_request(node):
    origin = {"Origin": "http://viewer.example"}
    preflight = requests.options(
        f"{node.dicomweb_url}/studies",
        headers={
            **origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://viewer.example"
    r = requests.get(f"{node.dicomweb_url}/studies", headers=origin, timeout=10)
    assert r.headers["access-control-allow-origin"] == "http://viewer.example"
    other = requests.get(
        f"{node.dicomweb_url}/studies", headers={"Origin": "http://evil.example"}, timeout=10
    )
    assert "access-control-allow-origin" not in other.headers


def test_gzip_for_json_not_for_pixel_data(node):
    headers = {"Accept-Encoding": "gzip"}
    r = requests.get(f"{node.dicomweb_url}/studies", headers=headers, timeout=10)
    assert r.headers.get("content-encoding") == "gzip"
    assert r.json()  # requests decodes it
    study = r.json()[0]["0020000D"]["Value"][0]
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*', **headers}
    r = requests.get(f"{node.dicomweb_url}/studies/{study}", headers=accept, timeout=10)
    assert r.status_code == 200
    assert "content-encoding" not in r.headers


def test_bad_base_path_is_a_config_error():
    from pacsnode.config.settings import ConfigError, load_settings

    for bad in ("/", "/a b", "/x?y"):
        with pytest.raises(ConfigError, match="a path such as /dicom-web"):
            load_settings(None, {"web": {"base_path": bad}}, environ={})
    assert load_settings(None, {"web": {"base_path": "wado-rs/"}}, environ={}).web.base_path == "/wado-rs"
