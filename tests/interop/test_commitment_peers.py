"""Storage Commitment (PS3.4 Annex J) against Orthanc in both directions, and `pacsnode commit` as
the SCU against pacsnode's SCP (the report on the same association and on a new one)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmwrite
from pydicom.uid import generate_uid

from peerkit import (
    HOST,
    PACSNODE,
    WAIT,
    free_port,
    gate_commitment_reports,
    make_instance,
    orthanc_peer,
    pynetdicom_store,
    run_tool,
)

pytestmark = pytest.mark.interop

COMMITMENT = "1.2.840.10008.1.20.1"


def _files(folder: Path, count: int) -> list[Any]:
    """``count`` new CT instances of one study, written as Part 10 files under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    datasets = [make_instance(study=study) for _ in range(count)]
    for number, ds in enumerate(datasets):
        dcmwrite(folder / f"{number}.dcm", ds, enforce_file_format=True)
    return datasets


def _reports_sent(node: Any) -> None:
    """Block until the node's Storage Commitment SCP has sent every report it owes."""
    scp = node.node.server.handlers[COMMITMENT]

    async def idle() -> None:
        await asyncio.wait_for(scp.idle(), 30)

    node.call(idle, 35)


def test_orthanc_requests_commitment_from_pacsnode(make_storage_node, tmp_path):
    """Orthanc (SCU) releases after N-ACTION-RSP: the report comes on a new association to it."""
    folder = tmp_path / "orthanc"
    folder.mkdir()
    with orthanc_peer(folder) as orthanc:
        node = make_storage_node(peers={"ORTHANC": (HOST, orthanc.port)})
        # Orthanc reaches the node through its modality entry: point it at the node's port.
        api = f"http://{HOST}:{orthanc.http_port}"
        r = requests.put(
            f"{api}/modalities/PACSNODE",
            json={"AET": "PACSNODE", "Host": HOST, "Port": node.port},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        stored = _files(tmp_path / "in", 2)
        assert all(s.status == 0 for s in pynetdicom_store(HOST, node.port, stored))
        missing = make_instance()
        asked = [*stored, missing]
        body = {
            "DicomInstances": [
                {"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)} for ds in asked
            ],
            "Timeout": 30,
        }
        r = requests.post(f"{api}/modalities/PACSNODE/storage-commitment", json=body, timeout=60)
        assert r.status_code == 200, r.text
        _reports_sent(node)
        report = requests.get(f"{api}{r.json()['Path']}", timeout=10).json()
    assert report["Status"] == "Failure", report  # one instance is not in the archive
    assert {i["SOPInstanceUID"] for i in report["Success"]} == {str(ds.SOPInstanceUID) for ds in stored}
    (failure,) = report["Failures"]
    assert failure["SOPInstanceUID"] == str(missing.SOPInstanceUID)
    assert failure["FailureReason"] == 0x0112


def test_cli_against_pacsnode_same_association(make_storage_node, tmp_path):
    node = make_storage_node()
    stored = _files(tmp_path / "in", 3)
    assert all(s.status == 0 for s in pynetdicom_store(HOST, node.port, stored))
    result = run_tool([PACSNODE, "commit", HOST, str(node.port), str(tmp_path / "in"), "--aec", "PACSNODE"])
    assert result.returncode == 0, result.stdout
    assert "3 committed, 0 failed (report on the same association)" in result.stdout


def test_cli_against_pacsnode_new_association(make_storage_node, tmp_path):
    listen = free_port()
    node = make_storage_node(peers={"COMMITSCU": (HOST, listen)})
    stored = _files(tmp_path / "in", 2)
    assert all(s.status == 0 for s in pynetdicom_store(HOST, node.port, stored))
    extra = _files(tmp_path / "in" / "never-sent", 1)  # in the folder, not in the archive
    started, gate = gate_commitment_reports(node)
    command = [
        PACSNODE,
        "commit",
        HOST,
        str(node.port),
        str(tmp_path / "in"),
        "--aec",
        "PACSNODE",
        "--aet",
        "COMMITSCU",
        "--listen-port",
        str(listen),
        "--listen-host",
        HOST,
        "--release",
        "-v",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            assert started.wait(WAIT * 3), "the N-ACTION never arrived"
            node.wait_idle()  # the CLI released its association
        finally:
            gate.set()
        stdout, _ = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(command, proc.returncode, stdout)
    assert result.returncode == 1, result.stdout  # one failed
    assert "2 committed, 1 failed (report on the new association)" in result.stdout
    assert f"failed     {extra[0].SOPInstanceUID}: Failure 0x0112" in result.stdout
    for ds in stored:
        assert f"committed  {ds.SOPInstanceUID}" in result.stdout


def test_cli_against_orthanc(tmp_path):
    """Orthanc as the SCP reports on a new association to the AE its configuration names."""
    listen = free_port()
    folder = tmp_path / "orthanc"
    folder.mkdir()
    with orthanc_peer(folder, modalities={"COMMITSCU": ("COMMITSCU", HOST, listen)}) as orthanc:
        stored = _files(tmp_path / "in", 2)
        statuses = pynetdicom_store(HOST, orthanc.port, stored, called="ORTHANC")
        assert all(s.status == 0 for s in statuses)
        _files(tmp_path / "in" / "never-sent", 1)
        result = run_tool(
            [
                PACSNODE,
                "commit",
                HOST,
                str(orthanc.port),
                str(tmp_path / "in"),
                "--aec",
                "ORTHANC",
                "--aet",
                "COMMITSCU",
                "--listen-port",
                str(listen),
                "--listen-host",
                HOST,
                "--wait",
                "30",
            ]
        )
    assert result.returncode == 1, result.stdout
    assert "2 committed, 1 failed" in result.stdout


def test_cli_refused_and_unreachable(make_storage_node, tmp_path):
    node = make_storage_node()
    _files(tmp_path / "in", 1)
    lonely = run_tool([PACSNODE, "commit", HOST, str(node.port), str(tmp_path / "in"), "--release"])
    assert lonely.returncode == 1 and "--release needs --listen-port" in lonely.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_tool([PACSNODE, "commit", HOST, str(node.port), str(empty)])
    assert nothing.returncode == 1 and "no DICOM instance" in nothing.stdout
    closed = run_tool([PACSNODE, "commit", HOST, str(free_port()), str(tmp_path / "in"), "--timeout", "5"])
    assert closed.returncode == 1 and "cannot connect" in closed.stdout
