"""PS3.15 B.1 (and PS3.7 D.3.3.7): users' credentials: scrypt password hashes, API tokens, JWTs and JWKS."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import jwt

from pacsnode.config.settings import AuthSettings, Role

log = logging.getLogger("pacsnode.security")

ROLES: tuple[Role, ...] = ("admin", "read", "write")

# scrypt (RFC 7914) cost: N = 2^15, r = 8, p = 1 takes 32 MiB and some tens of milliseconds,
# the parameters OWASP's password storage guidance gives for scrypt.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_N = 1 << 20  # a hash asking for more is refused: it would take a gigabyte per check

# RFC 7518 3.1: asymmetric signature algorithms only. "none" and the HMAC ones (HS*) never:
# with a public key as the HMAC secret anyone could sign (algorithm confusion).
JWT_ALGORITHMS = frozenset(
    ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
)
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
JWT_LEEWAY = 30.0  # seconds of clock difference tolerated on exp / nbf / iat


class CredentialError(Exception):
    """The credentials are wrong, unknown, expired or of a kind not accepted; the message says which."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established from credentials (or from a loopback address without any)."""

    name: str
    roles: frozenset[Role]
    # How the principal was established.
    method: Literal["loopback", "basic", "token", "oidc", "username"]


# ---------------------------------------------------------------- passwords and tokens


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # maxmem: scrypt needs 128 * r * n bytes (and a little more); hashlib's default is 32 MiB.
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * r * n + (1 << 20)
    )


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A self-describing scrypt hash for ``[auth.users.NAME] password_hash``: ``scrypt$n$r$p$salt$key``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, n, r, p, _KEY_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def parse_password_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, key) of a ``scrypt$n$r$p$salt$key`` string; ValueError when it is not one."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a password hash of `pacsnode auth hash-password` (scrypt$n$r$p$salt$key)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("a password hash has numbers n, r, p and base64 salt and key") from None
    if n < 2 or n & (n - 1) or n > _MAX_N or not 0 < r <= 64 or not 0 < p <= 16 or not salt or not key:
        raise ValueError("password hash parameters out of range (n a power of 2 up to 2^20)")
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``scrypt$...`` hash (compared in constant time)."""
    n, r, p, salt, key = parse_password_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(key)), key)


def new_token() -> str:
    """A random API token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The ``token_hash`` of an API token: SHA-256 of its UTF-8 text, in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- JWKS


def _read_url(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # http(s) only: JwksKeys.is_url
        return cast(bytes, response.read(1 << 20))


class JwksKeys:
    """The keys of an OpenID Connect issuer (RFC 7517 JWK Set), from a URL or a file.

    Loaded on first use and kept; a token signed with a key ID not in the set makes it read the
    set again (key rotation), at most once every ``min_refresh`` seconds. Thread-safe; blocking
    (call it from a worker thread when the set is a URL).
    """

    def __init__(
        self,
        source: str,
        *,
        min_refresh: float = 60.0,
        timeout: float = 10.0,
        fetch: Callable[[str, float], bytes] = _read_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.min_refresh = min_refresh
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    @property
    def is_url(self) -> bool:
        """Whether the set is fetched over HTTP(S) (else read from a file)."""
        return self.source.startswith(("https://", "http://"))

    def _read(self) -> bytes:
        if self.is_url:
            return self._fetch(self.source, self.timeout)
        path = self.source.removeprefix("file://")
        return Path(path).read_bytes()

    def _load(self) -> None:
        self._loaded_at = self._clock()
        try:
            document = json.loads(self._read())
            entries = document["keys"] if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise ValueError("no 'keys' array")
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read the JWKS %s: %s", self.source, exc)
            if self._keys is None:
                self._keys = {}
            return
        keys: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if isinstance(entry, dict) and entry.get("use", "sig") == "sig" and "kty" in entry:
                keys[str(entry.get("kid", ""))] = entry
        self._keys = keys

    def preload(self) -> None:
        """Read the set now (start-up), so that the first token is not kept waiting."""
        with self._lock:
            if self._keys is None:
                self._load()

    def get(self, kid: str | None, *, refresh: bool = True) -> dict[str, Any] | None:
        """The JWK with this key ID (None: the only key of the set), reading the set again if unknown."""
        with self._lock:
            if self._keys is None:
                self._load()
            found = self._find(kid)
            if found is None and refresh and self._clock() - self._loaded_at >= self.min_refresh:
                self._load()
                found = self._find(kid)
            return found

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        keys = self._keys or {}
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)


# ---------------------------------------------------------------- the authenticator


def roles_of(names: Iterable[object]) -> frozenset[Role]:
    """The pacsnode roles among ``names`` (others are ignored)."""
    wanted = {name for name in names if isinstance(name, str)}
    return frozenset(role for role in ROLES if role in wanted)


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):  # "realm_access.roles" (Keycloak)
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class Authenticator:
    """Checks credentials against the ``[auth]`` users, API tokens and OpenID Connect issuer.

    Shared by HTTP (Basic and Bearer) and DICOM User Identity Negotiation (PS3.7 D.3.3.7).
    Methods block (scrypt, and a JWKS URL): call them from a worker thread.
    """

    def __init__(self, auth: AuthSettings, jwks: JwksKeys | None = None) -> None:
        self.auth = auth
        self.tokens: dict[str, tuple[str, frozenset[Role]]] = {
            entry.token_hash.lower(): (name, roles_of(entry.roles)) for name, entry in auth.tokens.items()
        }
        if jwks is None and auth.oidc_issuer and auth.oidc_jwks:
            jwks = JwksKeys(auth.oidc_jwks)
        self.jwks = jwks
        # Successful password checks, so that Basic on every request costs one scrypt, not one
        # each: keyed by an HMAC (with a key of this process) of the user, password and hash.
        self._secret = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        # Checked for an unknown user, so that it costs one scrypt like a known one (no timing oracle).
        dummy_salt, dummy_key = secrets.token_bytes(_SALT_BYTES), secrets.token_bytes(_KEY_BYTES)
        self._dummy_hash = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(dummy_salt)}${_b64(dummy_key)}"

    @property
    def oidc_enabled(self) -> bool:
        """Whether OpenID Connect bearer tokens are accepted."""
        return self.jwks is not None and bool(self.auth.oidc_issuer)

    # ------------------------------------------------------------ passwords

    def password(self, user: str, password: str) -> Principal:
        """A configured user with this password; CredentialError otherwise."""
        entry = self.auth.users.get(user)
        encoded = entry.password_hash if entry is not None else self._dummy_hash
        key = hmac.digest(self._secret, "\0".join((user, password, encoded)).encode("utf-8"), "sha256")
        with self._lock:
            cached = key in self._verified
            if cached:
                self._verified.move_to_end(key)
        if not cached:
            try:
                ok = verify_password(password, encoded)
            except ValueError as exc:
                log.error("[auth.users.%s] password_hash: %s", user, exc)
                ok = False
            if not ok or entry is None:
                raise CredentialError(f"wrong user name or password for {user!r}")
            with self._lock:
                self._verified[key] = None
                while len(self._verified) > 1024:
                    self._verified.popitem(last=False)
        assert entry is not None
        return Principal(user, roles_of(entry.roles), "basic")

    def username(self, user: str) -> Principal:
        """A configured user named without proof (PS3.7 D.3.3.7 type 1); CredentialError if unknown."""
        entry = self.auth.users.get(user)
        if entry is None:
            raise CredentialError(f"unknown user {user!r}")
        return Principal(user, roles_of(entry.roles), "username")

    # ------------------------------------------------------------ bearer tokens

    def api_token(self, token: str) -> Principal | None:
        """The ``[auth.tokens]`` entry of a token (by its SHA-256), or None. Does not block."""
        found = self.tokens.get(token_hash(token))
        return Principal(found[0], found[1], "token") if found is not None else None

    def bearer(self, token: str) -> Principal:
        """An API token of ``[auth.tokens]`` or, failing that, an OpenID Connect JWT."""
        found = self.api_token(token)
        if found is not None:
            return found
        if token.count(".") == 2 and self.oidc_enabled:
            return self.jwt(token)
        raise CredentialError("unknown API token")

    def jwt(self, token: str, *, refresh: bool = True) -> Principal:
        """An OpenID Connect JWT (RFC 7519): signed by a key of the issuer's JWKS, for our audience."""
        if self.jwks is None or not self.auth.oidc_issuer:
            raise CredentialError("OpenID Connect tokens are not accepted ([auth] oidc_issuer is not set)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise CredentialError(f"not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in JWT_ALGORITHMS:
            raise CredentialError(f"JWT algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        jwk = self.jwks.get(kid if isinstance(kid, str) else None, refresh=refresh)
        if jwk is None:
            raise CredentialError(f"JWT signed with unknown key {kid!r}")
        if jwk.get("alg", alg) != alg or _KEY_TYPES.get(str(alg)[:2]) != jwk.get("kty"):
            raise CredentialError(f"JWT algorithm {alg} does not fit its key {kid!r}")
        audience = self.auth.oidc_audience or None
        try:
            key = jwt.PyJWK(jwk, algorithm=str(alg)).key
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=audience,
                issuer=self.auth.oidc_issuer,
                leeway=JWT_LEEWAY,
                options={
                    "require": ["exp", "iss", *(["aud"] if audience else [])],
                    "verify_aud": audience is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise CredentialError(f"JWT refused: {exc}") from None
        name = claims.get("preferred_username") or claims.get("sub") or "?"
        raw = _claim(claims, self.auth.oidc_roles_claim)
        names: list[object] = list(
            raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
        )
        return Principal(str(name), roles_of(names), "oidc")
