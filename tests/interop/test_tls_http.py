"""HTTPS on the node's HTTP port (``[web] tls``, PS3.18 8.1 with the BCP 195 profile of PS3.15 B.9).

`requests` trusting the test CA gets answers; plain HTTP to the HTTPS port fails cleanly and the
server goes on; TLS 1.1 is refused; with ``[web] tls_require_client_cert`` only a client with a
certificate from ``[node] tls_ca`` gets in. SQLite only: the index plays no part.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from peerkit import HOST, WAIT, ThreadedNode, start_threaded_node
from tlskit import Pki, make_pki, tls_node_settings

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _https_node(folder: Path, pki: Pki, **web: object) -> ThreadedNode:
    settings = tls_node_settings(folder, pki, web={"tls": True, **web})
    return start_threaded_node(settings, http=True)


def _url(node: ThreadedNode, host: str = "127.0.0.1", scheme: str = "https") -> str:
    port = next(c.port for c in node.node.companions if hasattr(c, "port"))
    return f"{scheme}://{host}:{port}"


@pytest.fixture(scope="module")
def https_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ThreadedNode]:
    node = _https_node(tmp_path_factory.mktemp("node"), pki)
    yield node
    node.close()


def test_https_with_the_ca(https_node: ThreadedNode, pki: Pki) -> None:
    url = _url(https_node)
    r = requests.get(f"{url}/dicom-web/studies", verify=str(pki.ca), timeout=WAIT)
    assert r.status_code in (200, 204), r.text
    r = requests.get(f"{_url(https_node, 'localhost')}/api/system", verify=str(pki.ca), timeout=WAIT)
    assert r.status_code == 200 and r.json()["version"]
    # An HTTPS client that does not trust the test CA refuses the node.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/api/system", timeout=WAIT)


def test_plain_http_to_the_https_port_fails_cleanly(https_node: ThreadedNode, pki: Pki) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{_url(https_node, scheme='http')}/api/system", timeout=WAIT)
    # The server goes on.
    r = requests.get(f"{_url(https_node)}/api/system", verify=str(pki.ca), timeout=WAIT)
    assert r.status_code == 200


def test_https_refuses_tls_1_1(https_node: ThreadedNode, pki: Pki) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    port = int(_url(https_node).rsplit(":", 1)[1])
    with (
        socket.create_connection((HOST, port), timeout=WAIT) as sock,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
    ):
        ctx.wrap_socket(sock, server_hostname="localhost")


def test_https_client_certificate_when_required(tmp_path: Path, pki: Pki) -> None:
    node = _https_node(tmp_path / "node", pki, tls_require_client_cert=True)
    try:
        url = f"{_url(node)}/api/system"
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=str(pki.ca), timeout=WAIT)
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(
                url, verify=str(pki.ca), cert=(str(pki.untrusted_cert), str(pki.untrusted_key)), timeout=WAIT
            )
        r = requests.get(
            url, verify=str(pki.ca), cert=(str(pki.client_cert), str(pki.client_key)), timeout=WAIT
        )
        assert r.status_code == 200
    finally:
        node.close()
