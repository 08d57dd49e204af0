"""Who counts as "loopback" for `[auth] loopback_roles`: the socket's address, and a Host header that
names this machine (no X-Forwarded-For trust, no DNS rebinding)."""

from __future__ import annotations

import httpx


def test_forwarded_for_is_not_believed(make_storage_node):
    node = make_storage_node(http=True)
    # Were the header trusted (uvicorn trusts it from 127.0.0.1 by default), this would be a
    # remote client without credentials: 401. It is the local client it really is.
    forwarded = {"X-Forwarded-For": "192.0.2.1"}
    answer = httpx.get(f"{node.http_url}/api/studies", headers=forwarded, timeout=10)
    assert answer.status_code == 200


def test_a_rebound_name_gets_no_loopback_roles(make_storage_node):
    node = make_storage_node(http=True)
    port = node.http_url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "pacs.localhost"):
        answer = httpx.get(f"{node.http_url}/api/studies", headers={"Host": host}, timeout=10)
        assert answer.status_code == 200, host
    for host in (f"evil.example.com:{port}", "192.0.2.1", "127.0.0.1.evil.example"):
        answer = httpx.get(f"{node.http_url}/api/studies", headers={"Host": host}, timeout=10)
        assert answer.status_code == 401, host
