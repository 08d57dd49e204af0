"""The real `pacsnode` command in a subprocess: help, usage errors (exit 2), failures (exit 1), echo."""

from __future__ import annotations

import os
import socket

import pytest

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.config.settings import NetworkSettings
from peerkit import HOST, PACSNODE, free_port, run_tool


def pacsnode(*args: str, env: dict[str, str] | None = None, **kwargs):
    base = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    base["COLUMNS"] = "200"  # Rich wraps at 80 columns when not on a terminal
    return run_tool([PACSNODE, *args], env={**base, **(env or {})}, **kwargs)


# ---------------------------------------------------------------- help and version


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], "serve"),
        (["-h"], "conformance"),
        (["serve", "--help"], "--dicom-port"),
        (["echo", "--help"], "--aec"),
        (["conformance", "--help"], "--format"),
    ],
)
def test_help(args, expected):
    r = pacsnode(*args)
    assert r.returncode == 0, r.stdout
    assert expected in r.stdout


def test_version():
    r = pacsnode("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == "pacsnode 0.1.0"


def test_no_arguments_shows_help():
    r = pacsnode()
    assert "Usage" in r.stdout
    assert r.returncode in (0, 2)  # click >= 8.2 treats "no arguments" as a usage error


# ---------------------------------------------------------------- bad usage: exit 2


@pytest.mark.parametrize(
    "args",
    [
        ["echo"],
        ["echo", "127.0.0.1"],
        ["echo", "127.0.0.1", "70000"],
        ["echo", "127.0.0.1", "0"],
        ["echo", "127.0.0.1", "notaport"],
        ["echo", "127.0.0.1", "104", "--repeat", "0"],
        ["echo", "127.0.0.1", "104", "--max-pdu", "10"],
        ["echo", "127.0.0.1", "104", "--bogus"],
        ["serve", "--dicom-port", "70000"],
        ["serve", "--http-port", "-1"],
        ["serve", "--bogus"],
        ["conformance", "--format", "pdf"],
        ["frobnicate"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_usage_exits_2(args, tmp_path):
    r = pacsnode(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout
    assert "Usage" in r.stdout or "Error" in r.stdout


# ---------------------------------------------------------------- echo failures: exit 1


def test_echo_to_closed_port():
    port = free_port()
    r = pacsnode("echo", HOST, str(port))
    assert r.returncode == 1
    assert f"error: cannot connect to {HOST}:{port}: Connection refused" in r.stdout


def test_echo_peer_that_never_answers():
    # A listening socket nobody accepts on: the TCP connection opens, no A-ASSOCIATE-AC comes.
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        r = pacsnode("echo", HOST, str(port), "--acse-timeout", "0.3")
    assert r.returncode == 1
    assert "no answer to A-ASSOCIATE-RQ within 0.3 s" in r.stdout


def test_echo_rejected(make_threaded_server):
    srv = make_threaded_server(network=NetworkSettings(require_called_aet=True))
    r = pacsnode("echo", HOST, str(srv.port), "--aec", "SOMEONE")
    assert r.returncode == 1
    assert "error: association rejected-permanent: called AE title not recognized" in r.stdout
    # Regression: the client's futures used to log this at exit after a rejection.
    assert "never retrieved" not in r.stdout
    srv.wait_idle()


def test_echo_limit_exceeded_is_transient(make_threaded_server):
    from pacsnode.net.blocking import connect

    srv = make_threaded_server(network=NetworkSettings(max_associations=1))
    with connect(HOST, srv.port) as held:
        r = pacsnode("echo", HOST, str(srv.port))
        assert held.echo().ok
    assert r.returncode == 1
    assert "rejected-transient: local limit exceeded" in r.stdout
    srv.wait_idle()


# ---------------------------------------------------------------- echo success: exit 0


def test_echo_our_own_server(threaded_server):
    r = pacsnode("echo", HOST, str(threaded_server.port), "--aec", "PACSNODE", "-v", "-r", "3", "-n", "2")
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("C-ECHO response: 0x0000 Success") == 6
    assert "6 C-ECHO in" in r.stdout and "all succeeded" in r.stdout
    assert IMPLEMENTATION_CLASS_UID in r.stdout
    threaded_server.wait_idle()
    assert threaded_server.stats() == (0, 0)


def test_echo_quiet_prints_nothing(threaded_server):
    r = pacsnode("echo", HOST, str(threaded_server.port))
    assert r.returncode == 0
    assert r.stdout == ""


def test_echo_abort(threaded_server):
    r = pacsnode("echo", HOST, str(threaded_server.port), "--abort", "-v")
    assert r.returncode == 0, r.stdout
    threaded_server.wait_idle()


def test_echo_prints_peer_text_literally(make_threaded_server):
    # The peer's Implementation Version Name is shown as sent, not read as Rich markup.
    srv = make_threaded_server(implementation_version_name="[red]PN[/red]")
    r = pacsnode("echo", HOST, str(srv.port), "-v")
    assert r.returncode == 0, r.stdout
    assert "[red]PN[/red]" in r.stdout


# ---------------------------------------------------------------- conformance and configuration


def test_conformance_precedence(tmp_path):
    cfg = tmp_path / "pacsnode.toml"
    cfg.write_text('[node]\naet = "FILEAET"\n')
    assert "Application Entity Title: FILEAET" in pacsnode("conformance", "-c", str(cfg)).stdout
    env = {"PACSNODE_AET": "ENVAET"}
    assert "Application Entity Title: ENVAET" in pacsnode("conformance", "-c", str(cfg), env=env).stdout
    r = pacsnode("conformance", "-c", str(cfg), "--aet", "FLAGAET", env=env)
    assert r.returncode == 0
    assert "Application Entity Title: FLAGAET" in r.stdout
    # The config file may also come from PACSNODE_CONFIG.
    r = pacsnode("conformance", env={"PACSNODE_CONFIG": str(cfg)})
    assert "Application Entity Title: FILEAET" in r.stdout


def test_conformance_to_file(tmp_path):
    out = tmp_path / "cs.html"
    r = pacsnode("conformance", "--format", "html", "-o", str(out))
    assert r.returncode == 0, r.stdout
    assert "<html" in out.read_text().lower()


@pytest.mark.parametrize("command", ["serve", "conformance"])
def test_config_with_unknown_key_exits_1_naming_it(tmp_path, command):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[node]\naet = "X"\ncolour = "red"\n[network]\nmax_associations = "many"\n')
    r = pacsnode(command, "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert f"{cfg} [node] colour: unknown setting" in r.stdout
    assert f"{cfg} [network] max_associations: Input should be a valid integer" in r.stdout
    # The same through PACSNODE_CONFIG.
    r = pacsnode(command, env={"PACSNODE_CONFIG": str(cfg)}, cwd=tmp_path)
    assert r.returncode == 1
    assert "[node] colour: unknown setting" in r.stdout


def test_bad_value_from_environment_exits_1(tmp_path):
    r = pacsnode("serve", env={"PACSNODE_DICOM_PORT": "eleven"}, cwd=tmp_path)
    assert r.returncode == 1
    assert "environment variable PACSNODE_DICOM_PORT" in r.stdout


def test_bad_ae_title_flag_exits_1_naming_it(tmp_path):
    r = pacsnode("serve", "--aet", "THIS_TITLE_IS_TOO_LONG", cwd=tmp_path)
    assert r.returncode == 1
    assert "option --aet: Value error, an AE title has 1 to 16 characters" in r.stdout


def test_missing_config_file_exits_1(tmp_path):
    r = pacsnode("serve", "-c", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert r.returncode == 1
    assert "config file not found" in r.stdout
