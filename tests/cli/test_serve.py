"""`pacsnode serve` as a real process: it logs where it listens, answers DCMTK and our own echo,
reads file < environment < flags, and stops cleanly (exit 0) on SIGINT / SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator

import pytest

from pacsnode.net.blocking import connect
from peerkit import (
    HOST,
    PACSNODE,
    WAIT,
    ServeOutput,
    data_files,
    free_port,
    need_testdata,
    need_tool,
    run_tool,
)

LISTENING = r"pacsnode (\S+) listening for DICOM on ([0-9.]+):(\d+)"


@pytest.fixture
def serve(tmp_path) -> Iterator:
    started: list[ServeOutput] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeOutput:
        s = ServeOutput(list(args), env=env, cwd=str(tmp_path))
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.mark.interop
def test_serve_echoscu_then_sigint(serve, tmp_path):
    need_tool("echoscu")
    port = free_port()
    data = tmp_path / "data"
    node = serve("--dicom-port", str(port), "--data", str(data))
    m = node.wait_for(LISTENING)
    assert (m[1], m[2], int(m[3])) == ("PACSNODE", HOST, port)
    assert data.is_dir()
    r = run_tool(["echoscu", "-v", "-aec", "PACSNODE", HOST, str(port)])
    assert r.returncode == 0, r.stdout
    assert "Received Echo Response (Success)" in r.stdout
    node.wait_for(r"association ECHOSCU -> PACSNODE accepted")
    assert node.stop(signal.SIGINT) == 0, node.output
    assert "shutting down" in node.output
    assert "Traceback" not in node.output


def test_serve_answers_dicomweb_and_can_turn_it_off(serve, tmp_path):
    import urllib.request

    node = serve("--dicom-port", "0", "--data", str(tmp_path / "d"))
    url = node.wait_for(r"serving DICOMweb on (http://\S+)")[1]
    with urllib.request.urlopen(f"{url}/studies", timeout=WAIT) as answer:
        assert answer.status == 204  # an empty archive: no match
    assert node.stop(signal.SIGTERM) == 0, node.output
    (tmp_path / "o.toml").write_text("[web]\nenabled = false\n")
    off = serve(
        "--dicom-port", "0", "--data", str(tmp_path / "e"), env={"PACSNODE_CONFIG": str(tmp_path / "o.toml")}
    )
    off.wait_for(LISTENING)
    assert off.stop(signal.SIGTERM) == 0, off.output
    assert "DICOMweb" not in off.output


def test_serve_port_zero_and_sigterm(serve, tmp_path):
    node = serve("--dicom-port", "0", "--data", str(tmp_path / "d"))
    port = int(node.wait_for(LISTENING)[3])
    assert port != 0  # the log names the port actually bound
    r = run_tool([PACSNODE, "echo", HOST, str(port), "--aec", "PACSNODE", "-r", "3"])
    assert r.returncode == 0, r.stdout
    assert node.stop(signal.SIGTERM) == 0, node.output


def test_serve_drains_an_open_association_on_sigint(serve, tmp_path):
    node = serve("--dicom-port", "0", "--data", str(tmp_path / "d"))
    port = int(node.wait_for(LISTENING)[3])
    with connect(HOST, port, called_ae_title="PACSNODE") as assoc:
        assert assoc.echo().ok
        node.proc.send_signal(signal.SIGINT)
        node.wait_for(r"shutting down")
        # Still served while draining; new associations are not.
        assert assoc.echo().ok
        r = run_tool([PACSNODE, "echo", HOST, str(port)])
        assert r.returncode == 1
    # A real A-RELEASE (not an abort at the drain deadline); then the node exits by itself.
    released = assoc.association.protocol.released
    assert released.done() and released.exception() is None
    assert node.wait() == 0, node.output
    assert "Traceback" not in node.output


def test_serve_port_in_use_exits_1(tmp_path):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_tool(
            [PACSNODE, "serve", "--dicom-port", str(port), "--data", str(tmp_path / "d")],
            env={**os.environ, "COLUMNS": "250", "PACSNODE_HTTP_PORT": "0"},
            timeout=30,
        )
    assert r.returncode == 1, r.stdout
    assert f"cannot listen on {HOST}:{port}" in r.stdout


@pytest.mark.interop
def test_serve_file_env_flag_precedence(serve, tmp_path):
    need_tool("echoscu")
    file_port, flag_port = free_port(), free_port()
    cfg = tmp_path / "pacsnode.toml"
    cfg.write_text(
        f'[node]\naet = "FILEAET"\ndicom_port = {file_port}\ndata = "{tmp_path / "filedata"}"\n'
        "[network]\nrequire_called_aet = true\n"
    )
    node = serve("-c", str(cfg), "--dicom-port", str(flag_port), env={"PACSNODE_AET": "ENVAET"})
    m = node.wait_for(LISTENING)
    # aet: env beats file; port: flag beats file; data: file only; [network] from the file.
    assert (m[1], int(m[3])) == ("ENVAET", flag_port)
    assert (tmp_path / "filedata").is_dir()
    assert run_tool(["echoscu", "-aec", "ENVAET", HOST, str(flag_port)]).returncode == 0
    wrong = run_tool(["echoscu", "-v", "-aec", "FILEAET", HOST, str(flag_port)])
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout
    assert node.stop() == 0, node.output


def test_serve_config_from_pacsnode_config(serve, tmp_path):
    cfg = tmp_path / "pacsnode.toml"
    cfg.write_text(f'[node]\naet = "VIAENV"\ndicom_port = 0\ndata = "{tmp_path / "d"}"\n')
    node = serve(env={"PACSNODE_CONFIG": str(cfg)})
    m = node.wait_for(LISTENING)
    assert m[1] == "VIAENV"
    r = run_tool([PACSNODE, "echo", HOST, m[3]])
    assert r.returncode == 0, r.stdout
    assert node.stop() == 0


def test_one_process_per_data_folder(serve, tmp_path):
    """A second `serve` or an `import` on the data folder of a running node is refused (exit 1,
    the holder named) and leaves the node's folder as it was; once the node stops, import works."""
    data = tmp_path / "d"
    node = serve("--dicom-port", "0", "--data", str(data))
    port = int(node.wait_for(LISTENING)[3])
    image = need_testdata("modalities", "CT_small.dcm")
    env = {**os.environ, "COLUMNS": "250", "PACSNODE_HTTP_PORT": "0"}
    second = run_tool([PACSNODE, "serve", "--dicom-port", "0", "--data", str(data)], env=env, timeout=30)
    assert second.returncode == 1, second.stdout
    in_use = f"the data folder {data} is in use by another pacsnode process (pid {node.proc.pid})"
    assert in_use in second.stdout
    assert "listening" not in second.stdout
    before = data_files(data)
    imported = run_tool([PACSNODE, "import", str(image), "--data", str(data)], env=env, timeout=30)
    assert imported.returncode == 1, imported.stdout
    assert in_use in imported.stdout
    assert "pacsnode store" in imported.stdout
    assert data_files(data) == before
    # The running node is unharmed: it still stores.
    stored = run_tool([PACSNODE, "store", HOST, str(port), str(image), "--aec", "PACSNODE"], timeout=30)
    assert stored.returncode == 0, stored.stdout
    assert node.stop(signal.SIGTERM) == 0, node.output
    again = run_tool([PACSNODE, "import", str(image), "--data", str(data)], env=env, timeout=30)
    assert again.returncode == 0, again.stdout
    assert "already in the archive" in again.stdout


def test_one_data_folder_per_index(tmp_path):
    """Two data folders given one index URL: the second `serve` and `import` exit 1 naming the
    folder the index belongs to, and store nothing; the first folder's node starts as before."""
    index_url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    env = {**os.environ, "COLUMNS": "250", "PACSNODE_HTTP_PORT": "0", "PACSNODE_INDEX_URL": index_url}
    image = need_testdata("modalities", "CT_small.dcm")
    first, second = tmp_path / "first", tmp_path / "second"
    imported = run_tool([PACSNODE, "import", str(image), "--data", str(first)], env=env, timeout=30)
    assert imported.returncode == 0, imported.stdout
    belongs = f"the index {index_url} belongs to the data folder {first.resolve()}"
    for argv in (["import", str(image)], ["serve", "--dicom-port", "0"]):
        refused = run_tool([PACSNODE, *argv, "--data", str(second)], env=env, timeout=30)
        assert refused.returncode == 1, refused.stdout
        assert belongs in refused.stdout and f"not to {second.resolve()}" in refused.stdout
        assert "listening" not in refused.stdout
    assert data_files(second) == []
    again = run_tool([PACSNODE, "import", str(image), "--data", str(first)], env=env, timeout=30)
    assert again.returncode == 0, again.stdout
    assert "already in the archive" in again.stdout
