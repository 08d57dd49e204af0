"""Settings (config/settings.py): file < environment < flags, and errors that name the bad key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsnode.config.settings import ConfigError, NetworkSettings, Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacsnode.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    s = load_settings(None, None, environ={})
    assert s == Settings()
    assert s.node.aet == "PACSNODE"
    assert s.node.host == "127.0.0.1"
    assert s.node.dicom_port == 11112
    assert s.network.max_associations == 64


def test_flag_beats_env_beats_file(tmp_path):
    cfg = write(
        tmp_path,
        '[node]\naet = "FILEAET"\ndicom_port = 1111\nhttp_port = 2222\nhost = "127.0.0.2"\n'
        "[network]\nmax_associations = 5\nidle_timeout = 7.5\n",
    )
    env = {"PACSNODE_AET": "ENVAET", "PACSNODE_DICOM_PORT": "3333", "PACSNODE_MAX_ASSOCIATIONS": "6"}
    s = load_settings(cfg, {"node": {"aet": "FLAGAET", "http_port": None}}, environ=env)
    assert s.node.aet == "FLAGAET"  # flag > env > file
    assert s.node.dicom_port == 3333  # env > file
    assert s.node.http_port == 2222  # a flag left unset (None) does not override
    assert s.node.host == "127.0.0.2"  # file only
    assert s.network.max_associations == 6
    assert s.network.idle_timeout == 7.5


def test_file_only(tmp_path):
    cfg = write(tmp_path, '[node]\naet = "FILEAET"\n[network]\nrequire_called_aet = true\n')
    s = load_settings(cfg, None, environ={})
    assert s.node.aet == "FILEAET"
    assert s.network.require_called_aet is True


def test_config_file_from_environment(tmp_path):
    cfg = write(tmp_path, '[node]\naet = "VIAENV"\n')
    assert load_settings(None, None, environ={"PACSNODE_CONFIG": str(cfg)}).node.aet == "VIAENV"


def test_explicit_config_file_beats_pacsnode_config(tmp_path):
    a = write(tmp_path, '[node]\naet = "EXPLICIT"\n')
    b = tmp_path / "other.toml"
    b.write_text('[node]\naet = "FROMENV"\n')
    assert load_settings(a, None, environ={"PACSNODE_CONFIG": str(b)}).node.aet == "EXPLICIT"


def test_ae_title_is_trimmed():
    assert load_settings(None, {"node": {"aet": "  PADDED "}}, environ={}).node.aet == "PADDED"


def _error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    return str(info.value)


def test_unknown_key_in_file_is_named(tmp_path):
    cfg = write(tmp_path, '[node]\naet = "X"\ncolour = "red"\n')
    msg = _error(cfg, None, environ={})
    assert f"{cfg} [node] colour: unknown setting" in msg


def test_unknown_table_is_named(tmp_path):
    cfg = write(tmp_path, "[nodes]\naet = 'X'\n")
    assert "[nodes]" in _error(cfg, None, environ={})


def test_not_a_table(tmp_path):
    cfg = write(tmp_path, "aet = 'X'\n")
    assert "'aet' must be a table" in _error(cfg, None, environ={})


def test_bad_int_in_file(tmp_path):
    cfg = write(tmp_path, '[network]\nmax_associations = "many"\n')
    msg = _error(cfg, None, environ={})
    assert f"{cfg} [network] max_associations" in msg
    assert "integer" in msg


def test_bad_int_in_environment():
    msg = _error(None, None, environ={"PACSNODE_DICOM_PORT": "eleven"})
    assert "environment variable PACSNODE_DICOM_PORT" in msg
    assert "integer" in msg


def test_port_out_of_range_from_flag():
    msg = _error(None, {"node": {"dicom_port": 70000}}, environ={})
    assert "option --dicom-port" in msg
    assert "65535" in msg


@pytest.mark.parametrize("title", ["THIS_TITLE_IS_TOO_LONG", "BACK\\SLASH", "TAB\tX", ""])
def test_bad_ae_title_names_its_origin(tmp_path, title):
    assert "option --aet" in _error(None, {"node": {"aet": title}}, environ={})
    assert "environment variable PACSNODE_AET" in _error(None, None, environ={"PACSNODE_AET": title})
    cfg = write(tmp_path, f"[node]\naet = {json.dumps(title)}\n")  # a JSON string is a TOML basic string
    assert f"{cfg} [node] aet" in _error(cfg, None, environ={})


def test_bad_allowed_calling_aets(tmp_path):
    cfg = write(tmp_path, '[network]\nallowed_calling_aets = ["OK", "WAY_TOO_LONG_FOR_AN_AE"]\n')
    assert f"{cfg} [network] allowed_calling_aets" in _error(cfg, None, environ={})


def test_several_problems_reported_at_once(tmp_path):
    cfg = write(tmp_path, '[node]\ncolour = "red"\ndicom_port = -1\n')
    msg = _error(cfg, None, environ={"PACSNODE_MAX_ASSOCIATIONS": "0"})
    assert "colour: unknown setting" in msg
    assert "dicom_port" in msg
    assert "PACSNODE_MAX_ASSOCIATIONS" in msg


def test_missing_and_invalid_files(tmp_path):
    assert "config file not found" in _error(tmp_path / "nope.toml", None, environ={})
    bad = write(tmp_path, "[node\n")
    assert "not valid TOML" in _error(bad, None, environ={})


@pytest.mark.parametrize(
    "field",
    [
        {"artim_timeout": 0},
        {"idle_timeout": -1},
        {"read_timeout": 0},
        {"max_associations": 0},
        {"max_pdu_length": 100},
    ],
)
def test_network_settings_bounds(field):
    with pytest.raises(ValueError):
        NetworkSettings(**field)


def test_settings_are_immutable():
    s = load_settings(None, None, environ={})
    with pytest.raises(ValueError):
        s.node.aet = "OTHER"  # type: ignore[misc]


def test_peers_and_query_tables(tmp_path):
    cfg = write(
        tmp_path,
        '[peers.STORESCP]\nhost = "127.0.0.1"\nport = 11113\n\n'
        '[peers."WS 2"]\nhost = "10.0.0.2"\nport = 104\n\n'
        "[query]\ncase_insensitive_names = false\nmax_results = 500\n",
    )
    s = load_settings(cfg, environ={})
    assert s.peers["STORESCP"].host == "127.0.0.1" and s.peers["STORESCP"].port == 11113
    assert s.peers["WS 2"].port == 104
    assert s.query.case_insensitive_names is False and s.query.max_results == 500


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[peers.STORESCP]\nhost = "127.0.0.1"\nallow = ["store", "fly"]\n', "allow"),  # no such service
        ('[peers.STORESCP]\nport = 104\n', "host"),  # no host
        ('[peers.STORESCP]\nhost = "127.0.0.1"\nport = 70000\n', "port"),
        ('[peers.STORESCP]\nhost = "h"\nport = 1\ncolour = "red"\n', "colour"),
        ('[peers."A\\\\B"]\nhost = "h"\nport = 1\n', "peers"),  # backslash in an AE title
        ('[peers."THIS_TITLE_IS_TOO_LONG"]\nhost = "h"\nport = 1\n', "peers"),
    ],
)
def test_bad_peer_is_named(tmp_path, text, named):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert named in str(info.value)


def test_peer_without_port_is_accepted_but_not_called(tmp_path):
    """A peer that only calls us (a modality) needs no port; a network has no single address."""
    text = '[peers.CT1]\nhost = "10.0.0.5"\n[peers.WARD]\nhost = "10.1.0.0/16"\nport = 104\n'
    s = load_settings(write(tmp_path, text), environ={})
    assert s.peers["CT1"].endpoint() is None and s.peers["WARD"].endpoint() is None
    assert s.peers["CT1"].allow == ["echo", "store", "find", "move", "get", "worklist", "mpps", "commit"]


def test_unknown_peers_default_follows_the_listen_address(tmp_path):
    assert load_settings(None, environ={}).node.accepts_unknown_peers() is True  # loopback
    wide = load_settings(None, {"node": {"host": "0.0.0.0"}}, environ={})
    assert wide.node.accepts_unknown_peers() is False
    told = load_settings(None, {"node": {"host": "0.0.0.0", "accept_unknown_peers": True}}, environ={})
    assert told.node.accepts_unknown_peers() is True


def test_tls_port_needs_its_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[node]\ntls_port = 2762\n"), environ={})
    assert "tls_cert" in str(info.value)
    text = '[node]\ntls_port = 2762\ntls_cert = "a.crt"\ntls_key = "a.key"\n'
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert "tls_ca" in str(info.value)
