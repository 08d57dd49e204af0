"""`pacsnode auth hash-password` and `pacsnode auth new-token`: their output pastes into a working [auth]."""

from __future__ import annotations

import os
import tomllib

from pacsnode.config.settings import load_settings
from pacsnode.security.credentials import Authenticator, token_hash, verify_password
from peerkit import PACSNODE, run_tool


def pacsnode(*args: str, stdin: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env["COLUMNS"] = "200"
    return run_tool([PACSNODE, *args], env=env, input=stdin)


def test_hash_password_from_stdin():
    r = pacsnode("auth", "hash-password", stdin="correct horse\n")
    assert r.returncode == 0, r.stdout
    encoded = r.stdout.strip()
    assert encoded.startswith("scrypt$32768$8$1$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horse\n", encoded)


def test_hash_password_prints_a_table_that_loads(tmp_path):
    r = pacsnode(
        "auth", "hash-password", "--name", "alice", "--role", "read", "--role", "write", stdin="pw\n"
    )
    assert r.returncode == 0, r.stdout
    config = tmp_path / "pacsnode.toml"
    config.write_text("[auth]\n" + r.stdout)
    settings = load_settings(config, environ={})
    assert settings.auth.users["alice"].roles == ["read", "write"]
    principal = Authenticator(settings.auth).password("alice", "pw")
    assert principal.roles == {"read", "write"}


def test_empty_password_and_bad_role_are_refused():
    assert pacsnode("auth", "hash-password", stdin="\n").returncode == 1
    r = pacsnode("auth", "hash-password", "--role", "root", stdin="pw\n")
    assert r.returncode == 2 and "admin, read or write" in r.stdout


def test_new_token(tmp_path):
    r = pacsnode("auth", "new-token", "--name", "ci", "--role", "write")
    assert r.returncode == 0, r.stdout
    token, _, table = r.stdout.partition("\n")
    assert len(token) >= 40 and " " not in token
    parsed = tomllib.loads(table)  # the rest is TOML (a comment, then the table)
    assert parsed["auth"]["tokens"]["ci"] == {"token_hash": token_hash(token), "roles": ["write"]}
    config = tmp_path / "pacsnode.toml"
    config.write_text(table)
    settings = load_settings(config, environ={})
    assert Authenticator(settings.auth).bearer(token).name == "ci"
    assert pacsnode("auth", "new-token").stdout.split("\n")[0] != token  # random each time
