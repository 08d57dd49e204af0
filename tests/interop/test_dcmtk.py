"""pacsnode against DCMTK 3.6.7, both directions: echoscu/storescu -> pacsnode, pacsnode echo -> storescp."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pynetdicom import sop_class

from pacsnode import IMPLEMENTATION_CLASS_UID
from pacsnode.config.settings import NetworkSettings, Settings
from pacsnode.data.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from pacsnode.services.catalog import default_registry
from peerkit import (
    PACSNODE,
    WAIT,
    MemoryStorageSCP,
    free_port,
    need_testdata,
    need_tool,
    run_tool,
    running,
    storage_registration,
    storage_sop_classes,
    wait_for_port,
)

pytestmark = pytest.mark.interop

# DCMTK's names for the uncompressed transfer syntaxes, as its -d dump prints them.
DCMTK_TS = {
    "=LittleEndianExplicit": EXPLICIT_VR_LITTLE_ENDIAN,
    "=LittleEndianImplicit": IMPLICIT_VR_LITTLE_ENDIAN,
    "=BigEndianExplicit": EXPLICIT_VR_BIG_ENDIAN,
}


def stop(proc) -> str:
    """Terminate a peer we started and return everything it printed."""
    proc.terminate()
    out, _ = proc.communicate(timeout=WAIT)
    return out


# ---------------------------------------------------------------- echoscu -> pacsnode


def test_echoscu_to_pacsnode(threaded_server):
    need_tool("echoscu")
    r = run_tool(["echoscu", "-v", "-aec", "PACSNODE", "127.0.0.1", str(threaded_server.port)])
    assert r.returncode == 0, r.stdout
    assert "Association Accepted" in r.stdout
    assert "Received Echo Response (Success)" in r.stdout
    threaded_server.wait_idle()
    assert threaded_server.stats() == (0, 0)


def test_echoscu_repeat_and_abort(threaded_server):
    need_tool("echoscu")
    r = run_tool(["echoscu", "-v", "--repeat", "5", "--abort", "127.0.0.1", str(threaded_server.port)])
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("Received Echo Response (Success)") == 5
    assert "Aborting Association" in r.stdout
    threaded_server.wait_idle()
    # The server still serves after the abort.
    r = run_tool(["echoscu", "127.0.0.1", str(threaded_server.port)])
    assert r.returncode == 0, r.stdout


def test_echoscu_128_contexts_38_transfer_syntaxes(threaded_server):
    # echoscu can propose Verification 128 times, each with 38 transfer syntaxes: the biggest
    # A-ASSOCIATE-RQ DCMTK makes; every context must be answered and an uncompressed TS chosen.
    need_tool("echoscu")
    r = run_tool(["echoscu", "-d", "-ppc", "128", "-pts", "38", "127.0.0.1", str(threaded_server.port)])
    assert r.returncode == 0, r.stdout
    ac = parse_dump(r.stdout, "A-ASSOCIATE-AC")
    assert sorted(ac) == list(range(1, 256, 2))
    assert {c["result"] for c in ac.values()} == {"Accepted"}
    assert {c["accepted_ts"] for c in ac.values()} <= set(DCMTK_TS)
    assert "Received Echo Response (Success)" in r.stdout


def test_echoscu_wrong_called_ae_title_rejected(make_threaded_server):
    need_tool("echoscu")
    srv = make_threaded_server(network=NetworkSettings(require_called_aet=True))
    r = run_tool(["echoscu", "-v", "-aec", "NOTME", "127.0.0.1", str(srv.port)])
    assert r.returncode != 0
    assert "Called AE Title Not Recognized" in r.stdout, r.stdout
    r = run_tool(["echoscu", "-aec", "PACSNODE", "127.0.0.1", str(srv.port)])
    assert r.returncode == 0, r.stdout


# ---------------------------------------------------------------- pacsnode echo -> storescp


@pytest.fixture
def storescp(tmp_path):
    need_tool("storescp")
    port = free_port()
    with running(["storescp", "-v", "-aet", "STORESCP", "-od", str(tmp_path), str(port)]) as proc:
        wait_for_port(port, proc)
        yield port, proc


def test_pacsnode_echo_to_storescp(storescp):
    port, proc = storescp
    r = run_tool([PACSNODE, "echo", "127.0.0.1", str(port), "--aec", "STORESCP", "-v"], env=_wide())
    assert r.returncode == 0, r.stdout
    assert "C-ECHO response: 0x0000 Success" in r.stdout
    assert "OFFIS_DCMTK" in r.stdout  # the peer's implementation version name, as negotiated
    assert proc.poll() is None, "storescp died"
    log = stop(proc)
    assert "Received Echo Request" in log
    assert "Association Release" in log


def test_pacsnode_echo_repeat_to_storescp(storescp):
    port, proc = storescp
    r = run_tool([PACSNODE, "echo", "127.0.0.1", str(port), "--aec", "STORESCP", "-v", "--repeat", "5"])
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("C-ECHO response: 0x0000 Success") == 5
    assert "5 C-ECHO" in r.stdout and "all succeeded" in r.stdout
    log = stop(proc)
    assert log.count("Received Echo Request") == 5
    assert log.count("Association Release") == 1


def test_pacsnode_echo_several_associations_to_storescp(storescp):
    port, proc = storescp
    r = run_tool([PACSNODE, "echo", "127.0.0.1", str(port), "-n", "3", "-r", "2", "--abort"])
    assert r.returncode == 0, r.stdout
    log = stop(proc)
    assert log.count("Received Echo Request") == 6
    assert log.count("Association Aborted") == 3


def _wide() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}  # Rich wraps at 80 columns off a terminal


# ---------------------------------------------------------------- storescu -> pacsnode


def parse_dump(text: str, which: str) -> dict[int, dict]:
    """The presentation contexts of DCMTK's ``-d`` dump of an A-ASSOCIATE-RQ or -AC."""
    block = text.split(f"BEGIN {which}", 1)[1].split(f"END {which}", 1)[0]
    contexts: dict[int, dict] = {}
    current: dict | None = None
    for raw in block.splitlines():
        line = raw[2:].strip() if raw.startswith("D:") else raw.strip()
        m = re.match(r"Context ID:\s+(\d+) \((.+)\)$", line)
        if m:
            current = {"result": m[2], "proposed_ts": []}
            contexts[int(m[1])] = current
        elif current is None:
            continue
        elif line.startswith("Abstract Syntax:"):
            current["abstract"] = line.split(":", 1)[1].strip()
        elif line.startswith("Accepted Transfer Syntax:"):
            current["accepted_ts"] = line.split(":", 1)[1].strip()
        elif line.startswith("="):
            current["proposed_ts"].append(line)
    return contexts


# Left out of the test storage service: their contexts must be refused with reason 3.
NOT_OFFERED = {sop_class.AmbulatoryECGWaveformStorage, sop_class.HemodynamicWaveformStorage}
# Offered with Deflated Explicit VR LE only: DCMTK's contexts for it must be refused with reason 4.
DEFLATE_ONLY = {sop_class.BasicVoiceAudioWaveformStorage}

REASON_TEXT = {3: "Abstract Syntax Not Supported", 4: "Transfer Syntaxes Not Supported"}


def start_storage_server(make_threaded_server, network: NetworkSettings | None = None):
    """A node with a test Storage SCP for (nearly) every storage SOP class, uncompressed only."""
    scp = MemoryStorageSCP()
    registry = default_registry(Settings())
    classes = storage_sop_classes()
    assert len(classes) > 100
    registry.register(
        storage_registration(
            scp, [c for c in classes if c.uid not in NOT_OFFERED | DEFLATE_ONLY], name="Test storage"
        )
    )
    registry.register(
        storage_registration(
            scp,
            [c for c in classes if c.uid in DEFLATE_ONLY],
            (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,),
            name="Deflate-only storage",
        )
    )
    return make_threaded_server(registry=registry, network=network), scp


@pytest.fixture
def storage_server(make_threaded_server):
    return start_storage_server(make_threaded_server)


def _original(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    # DCMTK drops Data Set Trailing Padding (PS3.10 7.2) when it sends a file.
    ds.pop(0xFFFCFFFC, None)
    return ds


def _read_received(data: bytes, transfer_syntax: str) -> pydicom.Dataset:
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    little = transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
    return read_dataset(io.BytesIO(data), implicit, little)


def _keyword(uid: str) -> str:
    return pydicom.uid.UID(uid).keyword.lower()


STORE_FILES = ["CT_small.dcm", "MR_small.dcm", "PR_gsps_small.dcm", "KO_key_object_selection.dcm"]


def test_storescu_over_100_contexts(storage_server):
    need_tool("storescu")
    srv, scp = storage_server
    files = [need_testdata("modalities", name) for name in STORE_FILES]
    # No -R: storescu proposes its whole default list (64 SOP classes x 2 contexts).
    r = run_tool(["storescu", "-d", "-aec", "PACSNODE", "127.0.0.1", str(srv.port), *map(str, files)])
    assert r.returncode == 0, r.stdout[-3000:]
    srv.wait_idle()

    proposed = parse_dump(r.stdout, "A-ASSOCIATE-RQ")
    answered = parse_dump(r.stdout, "A-ASSOCIATE-AC")
    assert len(proposed) > 100
    # Every proposed context got an answer, and DCMTK read it as we meant it.
    assert sorted(answered) == sorted(proposed)

    # What the server negotiated, as its handler saw it on this association.
    assert len(scp.received) == len(files)
    negotiated = scp.received[0].association
    assert all(r.association is negotiated for r in scp.received)
    assert negotiated.peer_implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    assert set(negotiated.contexts) | set(negotiated.rejected_contexts) == set(proposed)
    assert not set(negotiated.contexts) & set(negotiated.rejected_contexts)
    assert set(negotiated.rejected_contexts.values()) == {3, 4}

    for cid, theirs in proposed.items():
        ours = answered[cid]
        if cid in negotiated.contexts:
            ctx = negotiated.contexts[cid]
            assert ours["result"] == "Accepted"
            # The accepted TS is one that was proposed for this context, and DCMTK saw that one.
            assert ours["accepted_ts"] in theirs["proposed_ts"]
            assert DCMTK_TS[ours["accepted_ts"]] == ctx.transfer_syntax
            # DCMTK's names are pydicom's keywords, but for case ("Multiframe" / "MultiFrame").
            assert _keyword(ctx.abstract_syntax) == theirs["abstract"].lstrip("=").lower()
        else:
            reason = negotiated.rejected_contexts[cid]
            assert ours["result"] == REASON_TEXT[reason], (cid, theirs)
            keyword = theirs["abstract"].lstrip("=").lower()
            assert keyword in {_keyword(u) for u in (NOT_OFFERED if reason == 3 else DEFLATE_ONLY)}

    # The data sets arrived intact.
    by_uid = {r.command.affected_sop_instance_uid: r for r in scp.received}
    for path in files:
        original = _original(path)
        got = by_uid[original.SOPInstanceUID]
        assert got.command.affected_sop_class_uid == original.SOPClassUID
        assert got.context.abstract_syntax == original.SOPClassUID
        received = _read_received(got.dataset, got.context.transfer_syntax)
        assert received == original, path.name


def test_storescu_required_contexts_refused_transfer_syntax(storage_server):
    # -R -x?: storescu proposes the file's compressed TS in a context of its own, which we
    # refuse (reason 4), and accepts an uncompressed context it then cannot convert to.
    need_tool("storescu")
    srv, scp = storage_server
    cases = [
        ("CT_1.2.840.10008.1.2.4.50_jpeg_baseline.dcm", "-xy", "=JPEGBaseline"),
        ("CT_1.2.840.10008.1.2.5_rle.dcm", "-xr", "=RLELossless"),
        ("CT_1.2.840.10008.1.2.4.80_jpegls_lossless.dcm", "-xt", "=JPEGLSLossless"),
        ("CT_1.2.840.10008.1.2.4.90_j2k_lossless.dcm", "-xv", "=JPEG2000LosslessOnly"),
    ]
    for name, option, dcmtk_ts in cases:
        path = need_testdata("transfer_syntaxes", name)
        r = run_tool(
            ["storescu", "-d", "-R", option, "-aec", "PACSNODE", "127.0.0.1", str(srv.port), str(path)]
        )
        assert r.returncode != 0, r.stdout[-2000:]
        assert r.returncode < 128  # an orderly failure, not a crash of the peer
        proposed = parse_dump(r.stdout, "A-ASSOCIATE-RQ")
        answered = parse_dump(r.stdout, "A-ASSOCIATE-AC")
        compressed = [cid for cid, c in proposed.items() if c["proposed_ts"] == [dcmtk_ts]]
        assert compressed, proposed
        for cid in compressed:
            assert answered[cid]["result"] == "Transfer Syntaxes Not Supported"
        assert "unable to convert" in r.stdout
        srv.wait_idle()
    assert scp.received == []
    assert srv.stats() == (0, 0)
    # Still serving.
    ok = need_testdata("transfer_syntaxes", "CT_1.2.840.10008.1.2.1_explicit_le.dcm")
    r = run_tool(["storescu", "-R", "-aec", "PACSNODE", "127.0.0.1", str(srv.port), str(ok)])
    assert r.returncode == 0, r.stdout
    assert len(scp.received) == 1


def test_storescu_only_compressed_contexts_refused(storage_server, tmp_path):
    # A storescu profile proposing only compressed syntaxes: every context refused, so
    # storescu gives up at negotiation ("No Acceptable Presentation Contexts").
    need_tool("storescu")
    srv, scp = storage_server
    cfg = tmp_path / "refuse.cfg"
    cfg.write_text(
        "[[TransferSyntaxes]]\n[Compressed]\n"
        "TransferSyntax1 = 1.2.840.10008.1.2.4.50\nTransferSyntax2 = 1.2.840.10008.1.2.4.70\n"
        "TransferSyntax3 = 1.2.840.10008.1.2.4.80\nTransferSyntax4 = 1.2.840.10008.1.2.4.90\n"
        "TransferSyntax5 = 1.2.840.10008.1.2.5\n"
        "[[PresentationContexts]]\n[CompressedCT]\n"
        "PresentationContext1 = 1.2.840.10008.5.1.4.1.1.2\\Compressed\n"
        "[[Profiles]]\n[Refused]\nPresentationContexts = CompressedCT\n"
    )
    files = [
        need_testdata("transfer_syntaxes", n)
        for n in ("CT_1.2.840.10008.1.2.4.50_jpeg_baseline.dcm", "CT_1.2.840.10008.1.2.5_rle.dcm")
    ]
    r = run_tool(
        ["storescu", "-d", "-xf", str(cfg), "Refused", "-aec", "PACSNODE", "127.0.0.1", str(srv.port)]
        + [str(f) for f in files]
    )
    assert r.returncode == 1, r.stdout[-2000:]
    assert "No Acceptable Presentation Contexts" in r.stdout
    answered = parse_dump(r.stdout, "A-ASSOCIATE-AC")
    assert [c["result"] for c in answered.values()] == ["Transfer Syntaxes Not Supported"]
    srv.wait_idle()
    assert scp.received == []


def test_storescu_to_default_node_refuses_storage(threaded_server):
    # The default node serves Verification only: storage contexts are refused, reason 3.
    need_tool("storescu")
    path = need_testdata("modalities", "CT_small.dcm")
    r = run_tool(
        ["storescu", "-d", "-R", "-aec", "PACSNODE", "127.0.0.1", str(threaded_server.port), str(path)]
    )
    assert r.returncode == 1, r.stdout[-2000:]
    answered = parse_dump(r.stdout, "A-ASSOCIATE-AC")
    assert {c["result"] for c in answered.values()} == {"Abstract Syntax Not Supported"}
    threaded_server.wait_idle()


def test_our_implementation_uid_seen_by_dcmtk(threaded_server):
    need_tool("echoscu")
    r = run_tool(["echoscu", "-d", "127.0.0.1", str(threaded_server.port)])
    assert r.returncode == 0
    ac = r.stdout.split("BEGIN A-ASSOCIATE-AC", 1)[1]
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in ac
    assert "Their Implementation Version Name: PACSNODE_010" in ac


def test_storescu_data_set_in_many_pdus(make_threaded_server):
    # Our maximum PDU length of 4 KiB makes storescu cut the data set into many P-DATA PDUs.
    need_tool("storescu")
    srv, scp = start_storage_server(make_threaded_server, NetworkSettings(max_pdu_length=4096))
    path = need_testdata("modalities", "MR_overlay_icon_siemens.dcm")  # 0.5 MB, > 100 PDUs
    assert path.stat().st_size > 100 * 4096
    r = run_tool(["storescu", "-v", "-R", "-aec", "PACSNODE", "127.0.0.1", str(srv.port), str(path)])
    assert r.returncode == 0, r.stdout
    assert "Max Send PDV: 4084" in r.stdout
    srv.wait_idle()
    (got,) = scp.received
    assert _read_received(got.dataset, got.context.transfer_syntax) == _original(path)
