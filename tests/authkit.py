"""Test helpers for access control: a toy OpenID Connect issuer (RSA key, JWKS file, JWTs), quick hashes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from pacsnode.security.credentials import hash_password

ISSUER = "https://idp.example.test/realms/pacs"
AUDIENCE = "pacsnode"


def quick_hash(password: str) -> str:
    """A valid scrypt password hash, cheap to check (N = 2^10: tests only, never in production)."""
    return hash_password(password, n=1 << 10)


class TestIssuer:
    """Signs JWTs with its own RSA key; its JWKS can be written to a file for ``[auth] oidc_jwks``."""

    __test__ = False  # not a pytest class

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE, kid: str = "test-key-1") -> None:
        self.issuer = issuer
        self.audience = audience
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517) of the issuer."""
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(
        self,
        *,
        sub: str = "alice",
        roles: list[str] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        expires_in: float = 300.0,
        kid: str | None = None,
        key: Any = None,
        **claims: Any,
    ) -> str:
        """A signed JWT with these claims (``expires_in`` < 0: already expired)."""
        now = int(time.time())
        payload = {
            "iss": issuer if issuer is not None else self.issuer,
            "aud": audience if audience is not None else self.audience,
            "sub": sub,
            "preferred_username": sub,
            "iat": now,
            "exp": now + int(expires_in),
            "roles": roles if roles is not None else ["read"],
            **claims,
        }
        return jwt.encode(
            payload, key if key is not None else self.key, algorithm="RS256", headers={"kid": kid or self.kid}
        )
