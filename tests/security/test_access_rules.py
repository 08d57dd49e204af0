"""Access control as pure decisions (PS3.15 B.1, PS3.8 Table 9-21, PS3.7 D.3.3.7): no sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authkit import AUDIENCE, ISSUER, TestIssuer, quick_hash
from pacsnode.config.settings import AuthSettings, load_settings
from pacsnode.dimse.commands import CommandField
from pacsnode.security.access import (
    LOGIN,
    MODALITY_WORKLIST_FIND,
    MPPS_SOP_CLASS,
    NODE_AUTHENTICATION,
    STORAGE_COMMITMENT_PUSH,
    USE_OF_RESTRICTED_FUNCTION,
    AccessPolicy,
    association_refused,
    check_user_identity,
    parse_address,
    resolve_host,
    restricted_function,
    service_of,
    user_authentication,
)
from pacsnode.security.credentials import (
    Authenticator,
    CredentialError,
    JwksKeys,
    hash_password,
    parse_password_hash,
    token_hash,
    verify_password,
)
from pacsnode.security.events import EventKind, Outcome
from pacsnode.ul.pdu import RejectReason

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
VERIFICATION = "1.2.840.10008.1.1"


def settings(**tables):
    return load_settings(None, tables, environ={})


def fake_resolve(host: str):
    """Literal addresses and networks as resolve_host gives them; 'ct.example' is 10.1.2.3."""
    if host == "ct.example":
        return (ipaddress.ip_network("10.1.2.3/32"),)
    if host == "gone.example":
        return ()
    return resolve_host(host)


def policy(**tables) -> AccessPolicy:
    return AccessPolicy.from_settings(settings(**tables), resolve=fake_resolve)


# ---------------------------------------------------------------- services


@pytest.mark.parametrize(
    ("sop_class", "command", "service"),
    [
        (VERIFICATION, CommandField.C_ECHO_RQ, "echo"),
        (CT, CommandField.C_STORE_RQ, "store"),
        ("1.2.3.4.5", CommandField.C_STORE_RQ, "store"),  # a private storage class too
        (STUDY_FIND, CommandField.C_FIND_RQ, "find"),
        ("1.2.840.10008.5.1.4.1.2.1.1", CommandField.C_FIND_RQ, "find"),  # patient root
        (MODALITY_WORKLIST_FIND, CommandField.C_FIND_RQ, "worklist"),
        (STUDY_MOVE, CommandField.C_MOVE_RQ, "move"),
        (PATIENT_GET, CommandField.C_GET_RQ, "get"),
        (MPPS_SOP_CLASS, CommandField.N_CREATE_RQ, "mpps"),
        (MPPS_SOP_CLASS, CommandField.N_SET_RQ, "mpps"),
        (STORAGE_COMMITMENT_PUSH, CommandField.N_ACTION_RQ, "commit"),
        (STORAGE_COMMITMENT_PUSH, CommandField.N_EVENT_REPORT_RQ, "commit"),
        (MPPS_SOP_CLASS, CommandField.N_DELETE_RQ, None),
        (CT, CommandField.C_ECHO_RQ, None),
    ],
)
def test_each_request_maps_to_a_service(sop_class, command, service):
    assert service_of(sop_class, command) == service


# ---------------------------------------------------------------- addresses


def test_addresses_as_sockets_give_them():
    assert parse_address("::ffff:127.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert parse_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_address("not an address") is None


def test_hosts_resolve_to_networks():
    assert resolve_host("10.0.0.0/8") == (ipaddress.ip_network("10.0.0.0/8"),)
    assert resolve_host("10.0.0.7/8") == (ipaddress.ip_network("10.0.0.0/8"),)  # host bits allowed
    assert resolve_host("192.168.1.5") == (ipaddress.ip_network("192.168.1.5/32"),)
    local = resolve_host("localhost")
    assert local and all(net.network_address.is_loopback for net in local)


# ---------------------------------------------------------------- association rules


def test_on_loopback_unknown_peers_are_accepted_and_the_called_title_is_free():
    rules = policy()
    assert rules.accept_unknown and not rules.check_called
    assert rules.admit("ANYONE", "ANY-SCP", "127.0.0.1", False) is None


def test_listening_widely_refuses_unknown_calling_titles():
    rules = policy(node={"host": "0.0.0.0"})
    refusal = rules.admit("STRANGER", "PACSNODE", "10.9.9.9", False)
    assert refusal is not None and refusal.reason == RejectReason.CALLING_AE_NOT_RECOGNIZED
    assert "STRANGER" in refusal.description


def test_access_control_checks_the_called_title():
    rules = policy(node={"accept_unknown_peers": False}, peers={"CT1": {"host": "127.0.0.1"}})
    refusal = rules.admit("CT1", "ANY-SCP", "127.0.0.1", False)
    assert refusal is not None and refusal.reason == RejectReason.CALLED_AE_NOT_RECOGNIZED
    assert rules.admit("CT1", "PACSNODE", "127.0.0.1", False) is None


def test_require_called_aet_alone_checks_the_called_title():
    rules = policy(network={"require_called_aet": True})
    assert rules.check_called and rules.accept_unknown
    assert rules.admit("X", "OTHER", "127.0.0.1", False).reason == RejectReason.CALLED_AE_NOT_RECOGNIZED


def test_a_known_title_from_another_address_is_refused():
    rules = policy(
        peers={"CT1": {"host": "127.0.0.2"}, "WARD": {"host": "10.0.0.0/8"}, "CT2": {"host": "ct.example"}}
    )
    # Even while unknown peers are accepted: the [peers] table says where CT1 is.
    refusal = rules.admit("CT1", "PACSNODE", "127.0.0.1", False)
    assert refusal is not None and refusal.reason == RejectReason.CALLING_AE_NOT_RECOGNIZED
    assert "127.0.0.2" in refusal.description
    assert rules.admit("CT1", "PACSNODE", "127.0.0.2", False) is None
    assert rules.admit("CT1", "PACSNODE", "::ffff:127.0.0.2", False) is None
    assert rules.admit("WARD", "PACSNODE", "10.200.1.1", False) is None
    assert rules.admit("WARD", "PACSNODE", "11.0.0.1", False) is not None
    assert rules.admit("CT2", "PACSNODE", "10.1.2.3", False) is None
    assert rules.admit("CT2", "PACSNODE", "10.1.2.4", False) is not None


def test_a_host_that_did_not_resolve_refuses_its_title():
    rules = policy(peers={"GONE": {"host": "gone.example"}})
    refusal = rules.admit("GONE", "PACSNODE", "127.0.0.1", False)
    assert refusal is not None and "did not resolve" in refusal.description


def test_a_tls_peer_is_refused_over_plain_tcp():
    rules = policy(peers={"SECURE": {"host": "127.0.0.1", "tls": True}})
    refusal = rules.admit("SECURE", "PACSNODE", "127.0.0.1", False)
    assert refusal is not None and refusal.reason == RejectReason.CALLING_AE_NOT_RECOGNIZED
    assert "TLS" in refusal.description or "tls" in refusal.description
    assert rules.admit("SECURE", "PACSNODE", "127.0.0.1", True) is None


def test_allowed_calling_aets_still_admit_their_titles_from_anywhere():
    rules = policy(node={"host": "0.0.0.0"}, network={"allowed_calling_aets": ["OLDCT"]})
    assert rules.admit("OLDCT", "PACSNODE", "10.1.1.1", False) is None
    assert rules.allows("OLDCT", CT, CommandField.C_STORE_RQ)
    assert rules.admit("NEWCT", "PACSNODE", "10.1.1.1", False) is not None


def test_services_are_checked_for_known_peers_only():
    rules = policy(peers={"ECHOONLY": {"host": "127.0.0.1", "allow": ["echo"]}})
    assert rules.allows("ECHOONLY", VERIFICATION, CommandField.C_ECHO_RQ)
    assert not rules.allows("ECHOONLY", CT, CommandField.C_STORE_RQ)
    assert not rules.allows("ECHOONLY", STUDY_FIND, CommandField.C_FIND_RQ)
    assert not rules.allows("ECHOONLY", MPPS_SOP_CLASS, CommandField.N_DELETE_RQ)  # no service at all
    assert rules.allows("UNKNOWN", CT, CommandField.C_STORE_RQ)  # accepted unknown AEs use any


def test_worklist_and_find_are_told_apart():
    rules = policy(peers={"MOD": {"host": "127.0.0.1", "allow": ["worklist", "mpps"]}})
    assert rules.allows("MOD", MODALITY_WORKLIST_FIND, CommandField.C_FIND_RQ)
    assert not rules.allows("MOD", STUDY_FIND, CommandField.C_FIND_RQ)
    assert rules.allows("MOD", MPPS_SOP_CLASS, CommandField.N_CREATE_RQ)
    assert not rules.allows("MOD", STORAGE_COMMITMENT_PUSH, CommandField.N_ACTION_RQ)


# ---------------------------------------------------------------- passwords and tokens


def test_password_hashes_describe_themselves():
    encoded = hash_password("s3cret", n=1 << 10)
    n, r, p, salt, key = parse_password_hash(encoded)
    assert (n, r, p) == (1024, 8, 1) and len(salt) == 16 and len(key) == 32
    assert encoded.startswith("scrypt$1024$8$1$")
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret ", encoded)
    assert hash_password("s3cret", n=1 << 10) != encoded  # salted
    # And the configuration accepts it.
    load_settings(None, {"auth": {"users": {"a": {"password_hash": encoded}}}}, environ={})


@pytest.mark.parametrize(
    "bad",
    [
        "s3cret",
        "scrypt$1000$8$1$c2FsdA$a2V5",
        "scrypt$1024$8$1$!!$a2V5",
        "bcrypt$1$2$3$4$5",
        "scrypt$2097152$8$1$c2FsdA$a2V5",
    ],
)
def test_malformed_password_hashes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_password_hash(bad)


def test_default_hash_cost():
    n, r, p, _, _ = parse_password_hash(hash_password("x"))
    assert (n, r, p) == (1 << 15, 8, 1)


def authenticator(**auth) -> Authenticator:
    return Authenticator(AuthSettings.model_validate(auth))


def test_users_passwords_and_roles():
    auth = authenticator(users={"alice": {"password_hash": quick_hash("wonder"), "roles": ["read", "write"]}})
    principal = auth.password("alice", "wonder")
    assert principal.name == "alice" and principal.roles == {"read", "write"} and principal.method == "basic"
    assert auth.password("alice", "wonder") == principal  # from the cache of successful checks
    with pytest.raises(CredentialError):
        auth.password("alice", "Wonder")
    with pytest.raises(CredentialError):
        auth.password("bob", "wonder")


def test_api_tokens_by_their_sha256():
    token = "the-token"
    auth = authenticator(tokens={"ci": {"token_hash": token_hash(token).upper(), "roles": ["write"]}})
    assert token_hash(token) == hashlib.sha256(b"the-token").hexdigest()
    principal = auth.bearer(token)
    assert principal.name == "ci" and principal.roles == {"write"} and principal.method == "token"
    assert auth.api_token("other") is None
    with pytest.raises(CredentialError):
        auth.bearer("other")


# ---------------------------------------------------------------- OpenID Connect JWTs


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def oidc(issuer, tmp_path) -> Authenticator:
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    return authenticator(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks=str(jwks))


def test_a_good_jwt(oidc, issuer):
    principal = oidc.bearer(issuer.token(sub="carol", roles=["read", "admin", "other"]))
    assert principal.name == "carol" and principal.roles == {"read", "admin"} and principal.method == "oidc"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"issuer": "https://evil.example"}, "issuer"),
        ({"audience": "someone-else"}, "audience"),
        ({"expires_in": -3600}, "expired"),
        ({"kid": "no-such-key"}, "unknown key"),
    ],
)
def test_bad_jwts(oidc, issuer, change, why):
    with pytest.raises(CredentialError) as info:
        oidc.jwt(issuer.token(**change))
    assert why in str(info.value).lower()


def test_a_jwt_signed_by_another_key(oidc, issuer):
    other = TestIssuer()
    with pytest.raises(CredentialError, match=r"[Ss]ignature"):
        oidc.jwt(issuer.token(key=other.key))


def test_unsigned_and_hmac_jwts_are_refused(oidc, issuer):
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": 2**40}, None, algorithm="none")
    with pytest.raises(CredentialError, match="algorithm"):
        oidc.jwt(unsigned)
    # Algorithm confusion: the public key (PEM) used as an HMAC secret, signed by hand (PyJWT refuses).
    pem = issuer.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def part(obj: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=")

    signed = (
        part({"alg": "HS256", "kid": issuer.kid})
        + b"."
        + part({"iss": ISSUER, "aud": AUDIENCE, "exp": 2**40})
    )
    mac = base64.urlsafe_b64encode(hmac.digest(pem, signed, "sha256")).rstrip(b"=")
    with pytest.raises(CredentialError, match="algorithm"):
        oidc.jwt((signed + b"." + mac).decode())


def test_roles_claim_may_be_nested_or_a_string(issuer, tmp_path):
    jwks = str(issuer.write_jwks(tmp_path / "jwks.json"))
    keycloak = authenticator(oidc_issuer=ISSUER, oidc_jwks=jwks, oidc_roles_claim="realm_access.roles")
    token = issuer.token(realm_access={"roles": ["write"]}, roles=[])
    assert keycloak.jwt(token).roles == {"write"}  # no audience configured: not checked
    spaced = authenticator(oidc_issuer=ISSUER, oidc_jwks=jwks, oidc_roles_claim="scope")
    assert spaced.jwt(issuer.token(scope="openid read admin")).roles == {"read", "admin"}


def test_jwts_need_an_issuer_configured(issuer):
    with pytest.raises(CredentialError, match="oidc_issuer"):
        authenticator().jwt(issuer.token())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_jwks_is_read_again_for_an_unknown_key_at_most_so_often(tmp_path):
    first, second = TestIssuer(kid="k1"), TestIssuer(kid="k2")
    path = first.write_jwks(tmp_path / "jwks.json")
    clock = Clock()
    keys = JwksKeys(str(path), min_refresh=60.0, clock=clock)
    auth = Authenticator(AuthSettings(oidc_issuer=ISSUER, oidc_jwks=str(path)), jwks=keys)
    assert auth.jwt(first.token()).name == "alice"
    second.write_jwks(path)  # the issuer rotated its key
    clock.now += 10
    with pytest.raises(CredentialError, match="unknown key"):
        auth.jwt(second.token())  # too soon to read the set again
    clock.now += 60
    assert auth.jwt(second.token()).name == "alice"
    with pytest.raises(CredentialError, match="unknown key"):
        auth.jwt(first.token())  # the old key is gone from the set now


def test_a_jwks_url_is_fetched_once(issuer):
    fetched: list[str] = []

    def fetch(url: str, timeout: float) -> bytes:
        fetched.append(url)
        return json.dumps(issuer.jwks()).encode()

    keys = JwksKeys("https://idp.example.test/certs", fetch=fetch)
    auth = Authenticator(AuthSettings(oidc_issuer=ISSUER, oidc_jwks=keys.source), jwks=keys)
    keys.preload()
    for _ in range(3):
        auth.jwt(issuer.token())
    assert fetched == ["https://idp.example.test/certs"]


def test_an_unreadable_jwks_refuses_tokens(tmp_path, issuer):
    auth = authenticator(oidc_issuer=ISSUER, oidc_jwks=str(tmp_path / "missing.json"))
    with pytest.raises(CredentialError, match="unknown key"):
        auth.jwt(issuer.token())


# ---------------------------------------------------------------- User Identity (PS3.7 D.3.3.7)


@pytest.fixture
def users(issuer, tmp_path) -> Authenticator:
    return authenticator(
        users={"alice": {"password_hash": quick_hash("wonder")}},
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks=str(issuer.write_jwks(tmp_path / "jwks.json")),
    )


def test_identity_required(users, issuer):
    check = lambda *a: check_user_identity("required", users, *a)  # noqa: E731
    assert not check(None).accepted
    assert not check(None).checked  # nothing to check: no login event
    ok = check(2, b"alice", b"wonder")
    assert ok.accepted and ok.respond and ok.checked and ok.user == "alice"
    bad = check(2, b"alice", b"nope")
    assert not bad.accepted and bad.checked and bad.user == "alice"
    assert not check(1, b"alice").accepted  # a name proves nothing
    assert check(5, issuer.token().encode()).accepted
    assert not check(5, issuer.token(expires_in=-3600).encode()).accepted
    assert not check(3, b"kerberos ticket").accepted


def test_identity_optional(users, issuer):
    check = lambda *a: check_user_identity("optional", users, *a)  # noqa: E731
    assert check(None).accepted
    assert check(1, b"alice").accepted and check(1, b"alice").checked
    assert not check(1, b"mallory").accepted
    assert not check(2, b"alice", b"nope").accepted  # sent, so it must be right
    kerberos = check(3, b"ticket")
    assert kerberos.accepted and not kerberos.respond and not kerberos.checked  # ignored
    assert check(5, issuer.token().encode()).accepted
    assert not check(5, b"not.a.jwt").accepted


# ---------------------------------------------------------------- audit events (PS3.15 A.5.3.11, A.5.3.12)


def test_audit_events():
    refused = association_refused("STRANGER", "PACSNODE", "10.0.0.1", "PACSNODE", "not a known peer")
    assert refused.kind is EventKind.SECURITY_ALERT and refused.type_codes == (NODE_AUTHENTICATION,)
    assert refused.outcome is Outcome.MINOR_FAILURE and refused.action == "E"
    requestor = next(p for p in refused.participants if p.requestor)
    assert requestor.user_id == "STRANGER" and requestor.network_access_point == "10.0.0.1"
    restricted = restricted_function("CT1", "127.0.0.1", "PACSNODE", "may not store", sop_class=CT)
    assert restricted.type_codes == (USE_OF_RESTRICTED_FUNCTION,)
    assert restricted.objects[0].object_id == CT
    login = user_authentication("alice", "127.0.0.1", "PACSNODE", success=True, calling="MOD")
    assert login.kind is EventKind.USER_AUTHENTICATION and login.type_codes == (LOGIN,)
    assert login.outcome is Outcome.SUCCESS
    failed = user_authentication("", "127.0.0.1", "PACSNODE", success=False, description="bad")
    assert failed.outcome is Outcome.MINOR_FAILURE


def test_configuration_refuses_plain_passwords_and_bad_token_hashes(tmp_path):
    from pacsnode.config.settings import ConfigError

    with pytest.raises(ConfigError, match="hash-password"):
        settings(auth={"users": {"a": {"password_hash": "hunter2"}}})
    with pytest.raises(ConfigError, match="new-token"):
        settings(auth={"tokens": {"t": {"token_hash": "abc"}}})
    with pytest.raises(ConfigError, match="oidc_jwks"):
        settings(auth={"oidc_issuer": ISSUER})


def test_file_url_jwks(tmp_path: Path, issuer):
    path = issuer.write_jwks(tmp_path / "jwks.json")
    keys = JwksKeys(f"file://{path}")
    assert keys.get(issuer.kid) is not None and not keys.is_url


# ---------------------------------------------------------------- the conformance statement says it


def test_conformance_statement_describes_access_control():
    from pacsnode.services.catalog import default_registry
    from pacsnode.services.conformance import render_conformance

    configured = settings(
        node={"host": "0.0.0.0"},
        peers={
            "CT1": {"host": "10.1.2.3", "allow": ["echo", "store"]},
            "ARCHIVE2": {"host": "10.9.0.0/16", "port": 104, "tls": True},
        },
        auth={"dimse_user_identity": "required"},
    )
    text = render_conformance(default_registry(configured), configured)
    assert "Calling AE titles without a table are rejected" in text
    assert (
        "called-AE-title-not-recognized" in text and "Called AE Title not PACSNODE (access control)" in text
    )
    assert "A Calling AE Title without a `[peers.X]` table, a known AE calling from outside its host" in text
    assert "No user identity, or one that does not check out" in text
    assert "0124H (Refused: Not authorized)" in text
    assert "| CT1 | 10.1.2.3 | none | No | echo, store |" in text
    assert "| ARCHIVE2 | 10.9.0.0/16 | 104 | Yes |" in text
    default = settings()
    plain = render_conformance(default_registry(default), default)
    assert "No remote AE is configured." in plain
    assert (
        "Calling AE titles without a table are accepted (the default while the node listens on loopback only)"
        in plain
    )


def test_negotiation_consults_access_control_after_the_title_checks():
    """The sans-IO acceptor asks ``admit`` (which knows the address and transport) and answers with its RJ."""
    from pacsnode.ul.negotiation import AcceptorPolicy, ProposedContext, build_request, negotiate
    from pacsnode.ul.pdu import AssociateAC, AssociateRJ

    rq = build_request(
        "PACSNODE",
        "STRANGER",
        [ProposedContext(VERIFICATION, ("1.2.840.10008.1.2",))],
        implementation_class_uid="1.2.3",
    )
    policy = AcceptorPolicy("PACSNODE", {}, "1.2.3", require_called_ae_title=True)
    refusal = AssociateRJ(1, 1, int(RejectReason.CALLING_AE_NOT_RECOGNIZED))
    answer, negotiated = negotiate(rq, policy, admit=lambda _rq: refusal)
    assert answer is refusal and negotiated is None
    # A failed title check of the policy comes first: admit is not asked.
    asked = []
    other = build_request(
        "OTHER",
        "X",
        [ProposedContext(VERIFICATION, ("1.2.840.10008.1.2",))],
        implementation_class_uid="1.2.3",
    )
    answer, _ = negotiate(other, policy, admit=lambda r: asked.append(r))
    assert (
        isinstance(answer, AssociateRJ)
        and answer.reason == RejectReason.CALLED_AE_NOT_RECOGNIZED
        and not asked
    )
    answer, _ = negotiate(rq, policy, admit=lambda _rq: None)
    assert isinstance(answer, AssociateAC)
