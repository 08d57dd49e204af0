"""HTTP authentication and authorization of DICOMweb and the admin API against a running node:
Basic, API tokens, OpenID Connect JWTs (a JWKS file), roles per route, 401/403, audit events."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from authkit import TestIssuer, quick_hash
from pacsnode.security.access import LOGIN, USE_OF_RESTRICTED_FUNCTION
from pacsnode.security.credentials import new_token, token_hash
from pacsnode.security.events import EventKind, MemoryAuditSink, Outcome
from pacsnode.web.auth import CHALLENGE, ROUTE_ROLES, RouteRole, is_loopback, required_role
from peerkit import make_instance, start_threaded_node, storage_settings

BOUNDARY = "AUTHSTOW"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass
class Secured:
    node: Any
    audit: MemoryAuditSink
    issuer: TestIssuer
    tokens: dict[str, str]  # role name -> API token

    def url(self, path: str) -> str:
        return self.node.http_url + path

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url(path), timeout=30, **kw)

    def events(self, since: int) -> list[Any]:
        return self.audit.events[since:]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stow_body(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@pytest.fixture(scope="module")
def secured(module_index_url: str, tmp_path_factory: pytest.TempPathFactory):
    issuer = TestIssuer()
    keys = issuer.write_jwks(tmp_path_factory.mktemp("oidc") / "jwks.json")
    tokens = {"read": new_token(), "write": new_token(), "admin": new_token()}
    auth = {
        "loopback_roles": [],  # credentials needed even from this test, on loopback
        "users": {
            "alice": {"password_hash": quick_hash("wonderland"), "roles": ["read"]},
            "root": {"password_hash": quick_hash("toor"), "roles": ["admin", "read", "write"]},
        },
        "tokens": {
            "viewer": {"token_hash": token_hash(tokens["read"]), "roles": ["read"]},
            "modality": {"token_hash": token_hash(tokens["write"]), "roles": ["write"]},
            "ops": {"token_hash": token_hash(tokens["admin"]), "roles": ["admin", "read", "write"]},
        },
        "oidc_issuer": issuer.issuer,
        "oidc_audience": issuer.audience,
        "oidc_jwks": str(keys),
    }
    sink = MemoryAuditSink()
    settings = storage_settings(tmp_path_factory.mktemp("node"), module_index_url, auth=auth)
    node = start_threaded_node(settings, http=True, audit=sink)
    try:
        yield Secured(node, sink, issuer, tokens)
    finally:
        node.close()


def stow(secured: Secured, headers: dict[str, str]) -> tuple[httpx.Response, Any]:
    ds = make_instance()
    response = httpx.post(
        secured.url("/dicom-web/studies"),
        content=stow_body(ds),
        headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json", **headers},
        timeout=30,
    )
    return response, ds


# ---------------------------------------------------------------- credentials


def test_no_credentials_get_a_challenge(secured):
    for path in ("/dicom-web/studies", "/api/studies", "/wado?requestType=WADO", "/api/system"):
        response = secured.get(path)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == CHALLENGE == 'Basic realm="pacsnode", Bearer'


def test_basic_good_and_bad(secured):
    mark = len(secured.audit.events)
    assert secured.get("/dicom-web/studies", headers=basic("alice", "wonderland")).status_code in (200, 204)
    bad = secured.get("/dicom-web/studies", headers=basic("alice", "wrong"))
    assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == CHALLENGE
    assert secured.get("/dicom-web/studies", headers=basic("mallory", "wonderland")).status_code == 401
    garbage = secured.get("/dicom-web/studies", headers={"Authorization": "Basic !!!"})
    assert garbage.status_code == 401
    logins = [e for e in secured.events(mark) if e.kind is EventKind.USER_AUTHENTICATION]
    assert all(e.type_codes == (LOGIN,) for e in logins)
    good = [e for e in logins if e.outcome is Outcome.SUCCESS]
    assert len(good) == 1 and good[0].participants[0].user_id == "alice"
    assert good[0].participants[0].network_access_point == "127.0.0.1"
    assert len([e for e in logins if e.outcome is Outcome.MINOR_FAILURE]) == 3


def test_a_successful_login_is_audited_once_not_per_request(secured):
    mark = len(secured.audit.events)
    for _ in range(3):
        assert secured.get("/api/studies", headers=basic("root", "toor")).status_code == 200
    logins = [e for e in secured.events(mark) if e.kind is EventKind.USER_AUTHENTICATION]
    assert len(logins) <= 1  # one, or none when an earlier test already logged root in


def test_unknown_scheme_and_unknown_token(secured):
    assert secured.get("/api/studies", headers={"Authorization": "Digest x"}).status_code == 401
    assert secured.get("/api/studies", headers=bearer("not-a-token")).status_code == 401


# ---------------------------------------------------------------- roles per route


def test_read_token_reads_but_may_not_store(secured):
    headers = bearer(secured.tokens["read"])
    assert secured.get("/dicom-web/studies", headers=headers).status_code in (200, 204)
    mark = len(secured.audit.events)
    response, _ = stow(secured, headers)
    assert response.status_code == 403
    assert "write" in response.text
    alerts = [e for e in secured.events(mark) if e.kind is EventKind.SECURITY_ALERT]
    assert len(alerts) == 1 and alerts[0].type_codes == (USE_OF_RESTRICTED_FUNCTION,)
    assert alerts[0].participants[0].user_id == "viewer"
    assert alerts[0].objects[0].object_id == "/dicom-web/studies"


def test_write_token_stores(secured):
    response, ds = stow(secured, bearer(secured.tokens["write"]))
    assert response.status_code == 200, response.text
    # A write-only token cannot read back what it stored.
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata"
    assert secured.get(url, headers=bearer(secured.tokens["write"])).status_code == 403
    assert secured.get(url, headers=bearer(secured.tokens["read"])).status_code == 200


def test_deleting_needs_admin(secured):
    response, ds = stow(secured, bearer(secured.tokens["write"]))
    assert response.status_code == 200
    path = f"/api/studies/{ds.StudyInstanceUID}"
    for role in ("read", "write"):
        assert httpx.delete(secured.url(path), headers=bearer(secured.tokens[role])).status_code == 403
    assert secured.get(path, headers=bearer(secured.tokens["read"])).status_code == 200  # still there
    assert httpx.delete(secured.url(path), headers=bearer(secured.tokens["admin"])).status_code == 200
    assert secured.get(path, headers=bearer(secured.tokens["read"])).status_code == 404


def test_system_needs_admin_and_worklist_needs_write(secured):
    assert secured.get("/api/system", headers=bearer(secured.tokens["read"])).status_code == 403
    assert secured.get("/api/system", headers=bearer(secured.tokens["admin"])).status_code == 200
    item = b'{"00100020": {"vr": "LO", "Value": ["WL1"]}}'
    post = {"Content-Type": "application/dicom+json"}
    read = httpx.post(
        secured.url("/api/worklist"), content=item, headers={**post, **bearer(secured.tokens["read"])}
    )
    assert read.status_code == 403
    write = httpx.post(
        secured.url("/api/worklist"), content=item, headers={**post, **bearer(secured.tokens["write"])}
    )
    assert write.status_code != 403  # 201, or 400 when the item lacks what the worklist needs
    # Cancelling a scheduled step is a worklist write (not admin): 404 for a step that is not there.
    gone = httpx.delete(secured.url("/api/worklist/999999"), headers=bearer(secured.tokens["write"]))
    assert gone.status_code == 404


# ---------------------------------------------------------------- OpenID Connect


def test_oidc_good_token(secured):
    token = secured.issuer.token(sub="dr.who", roles=["read"])
    assert secured.get("/api/studies", headers=bearer(token)).status_code == 200
    response, _ = stow(secured, bearer(token))
    assert response.status_code == 403  # no write role in its claim


@pytest.mark.parametrize(
    "change",
    [
        {"issuer": "https://evil.example"},
        {"audience": "other-app"},
        {"expires_in": -3600},
        {"kid": "rotated-away"},
    ],
    ids=["wrong-issuer", "wrong-audience", "expired", "unknown-kid"],
)
def test_oidc_bad_tokens(secured, change):
    token = secured.issuer.token(roles=["read", "admin"], **change)
    response = secured.get("/api/studies", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_oidc_token_of_another_key(secured):
    other = TestIssuer()
    token = secured.issuer.token(roles=["read"], key=other.key)
    assert secured.get("/api/studies", headers=bearer(token)).status_code == 401


# ---------------------------------------------------------------- loopback without credentials


def test_loopback_roles_without_credentials(tmp_path, index_url):
    settings = storage_settings(tmp_path / "data", index_url, auth={"loopback_roles": ["read"]})
    node = start_threaded_node(settings, http=True)
    try:
        assert httpx.get(node.http_url + "/dicom-web/studies", timeout=30).status_code in (200, 204)
        # Credentials that are not needed there and do not check out are ignored (dicomweb-client's
        # CLI sends "Bearer None"); where they are needed, they are refused.
        junk = {"Authorization": "Bearer None"}
        assert httpx.get(node.http_url + "/dicom-web/studies", headers=junk, timeout=30).status_code in (
            200,
            204,
        )
        assert httpx.get(node.http_url + "/api/system", headers=junk, timeout=30).status_code == 401
        response = httpx.post(
            node.http_url + "/dicom-web/studies",
            content=stow_body(make_instance()),
            headers={"Content-Type": STOW_TYPE},
            timeout=30,
        )
        assert response.status_code == 401  # no credentials: the client may still authenticate
        assert httpx.delete(node.http_url + "/api/studies/1.2.3", timeout=30).status_code == 401
    finally:
        node.close()


# ---------------------------------------------------------------- the route table


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/dicom-web/studies", "read"),
        ("GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1", "read"),
        ("GET", "/dicom-web/studies/1.2/metadata", "read"),
        ("OPTIONS", "/dicom-web/", "read"),
        ("GET", "/wado", "read"),
        ("GET", "/", "read"),
        ("GET", "/app-config.js", "read"),
        ("GET", "/api/studies", "read"),
        ("GET", "/api/docs", "read"),
        ("POST", "/dicom-web/studies", "write"),
        ("POST", "/dicom-web/studies/1.2.3", "write"),
        ("POST", "/api/worklist", "write"),
        ("DELETE", "/api/worklist/7", "write"),
        ("POST", "/api/mpps", "write"),
        ("DELETE", "/api/studies/1.2.3", "admin"),
        ("DELETE", "/api/patients/P1", "admin"),
        ("GET", "/api/system", "admin"),
        ("POST", "/api/studies/1.2.3/deidentify", "admin"),
        ("GET", "/api/audit", "admin"),
        ("GET", "/api/audit/events", "admin"),
        ("POST", "/api/anything-new", "admin"),  # no rule: admin
        ("PUT", "/dicom-web/studies", "admin"),
        ("GET", "/api/systemx", "read"),  # a prefix is a path segment, not a string prefix
    ],
)
def test_route_roles(method, path, role):
    assert required_role(method, path, "/dicom-web") == role


def test_a_rule_for_a_new_route():
    rules = (RouteRole(frozenset(("GET",)), "/api/reports", "admin"), *ROUTE_ROLES)
    assert required_role("GET", "/api/reports/1", "/dicom-web", rules) == "admin"
    assert required_role("GET", "/api/reports/1", "/dicom-web") == "read"


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("testclient") and not is_loopback(None)


def test_no_route_runs_code_or_writes_configuration(secured):
    """The routes that change anything: STOW-RS, the worklist, deletions, de-identification; no others."""
    app = secured.node.node.companions[0].app
    writes = set()
    for route in app.routes:
        inner = [route]
        if isinstance(route, Mount):
            sub = route.routes if route.routes else getattr(route.app, "routes", [])
            inner = [(route.path, r) for r in sub]
        for item in inner:
            prefix, r = item if isinstance(item, tuple) else ("", item)
            methods = getattr(r, "methods", None) or set()
            if isinstance(r, Route) or hasattr(r, "methods"):
                for method in methods - {"GET", "HEAD", "OPTIONS"}:
                    writes.add((method, prefix + r.path))
    assert writes == {
        ("POST", "/dicom-web/studies"),
        ("POST", "/dicom-web/studies/{study}"),
        ("POST", "/api/worklist"),
        ("DELETE", "/api/worklist/{item_id}"),
        ("DELETE", "/api/patients/{key}"),
        ("DELETE", "/api/studies/{key}"),
        ("DELETE", "/api/series/{key}"),
        ("DELETE", "/api/instances/{key}"),
        ("POST", "/api/studies/{study}/deidentify"),  # a de-identified copy (PS3.15 Annex E): admin
    }


def test_worklist_cli_sends_credentials_from_the_environment(secured, tmp_path):
    """`pacsnode worklist` with PACSNODE_TOKEN (Bearer) or PACSNODE_USER/PASSWORD (Basic)."""
    import os

    from peerkit import PACSNODE, run_tool

    base = secured.url("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    refused = run_tool([PACSNODE, "worklist", "list", "--url", base], env=env)
    assert refused.returncode == 1 and "401" in refused.stdout and "PACSNODE_TOKEN" in refused.stdout
    with_token = run_tool(
        [PACSNODE, "worklist", "list", "--url", base], env={**env, "PACSNODE_TOKEN": secured.tokens["read"]}
    )
    assert with_token.returncode == 0, with_token.stdout
    basic_env = {**env, "PACSNODE_USER": "root", "PACSNODE_PASSWORD": "toor"}
    assert run_tool([PACSNODE, "worklist", "list", "--url", base], env=basic_env).returncode == 0
    read_only = run_tool(
        [PACSNODE, "worklist", "cancel", "1", "--url", base],
        env={**env, "PACSNODE_TOKEN": secured.tokens["read"]},
    )
    assert read_only.returncode == 1 and "403" in read_only.stdout
