"""Bad input to the Storage SCP: a data set cut off mid P-DATA, every file of testdata/malformed sent
byte for byte, and peer-supplied text (UIDs, AE titles) shaped like paths.  Nothing may crash the
node, leave half-stored data, or choose a file name (DESIGN.md, durability contract)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from pacsnode.data.part10 import read_layout
from pacsnode.dimse.commands import encode_command
from pacsnode.dimse.messages import c_store_rq
from pacsnode.dimse.status import Status
from pacsnode.net.client import associate
from pacsnode.ul.negotiation import ProposedContext
from pacsnode.ul.pdu import Abort, encode, encode_pdata
from peerkit import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    OBJECT_NAME,
    WAIT,
    assert_consistent,
    echo_ok,
    index_rows,
    item_of,
    make_instance,
    need_testdata,
    object_files,
    part10_dataset,
    raw_associate,
    raw_store,
)

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# What a refusal may say (PS3.4 B.2.3, PS3.7 C.5): each comes with an Error Comment.
REFUSALS = {
    Status.DUPLICATE_SOP_INSTANCE,
    Status.OUT_OF_RESOURCES,
    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    Status.CANNOT_UNDERSTAND,
}


# ---------------------------------------------------------------- cut off mid data set


# 256 x 256: the data set stays in memory; 1600 x 1600: half of it (1.3 MB) has spilled to a spool
# file by the time the connection ends (SpoolSink keeps up to 1 MiB in memory).
@pytest.mark.parametrize("size", [256, 1600], ids=["in-memory", "spooled"])
@pytest.mark.parametrize("ending", ["close", "abort"])
def test_data_set_cut_off_mid_p_data(storage_node, ending, size):
    sop_class, sop_instance, ts, data = item_of(make_instance(size=size))
    half = data[: len(data) // 2]

    async def go() -> None:
        raw = await raw_associate(
            storage_node.host,
            storage_node.port,
            contexts=[ProposedContext(sop_class, (ts,))],
            max_pdu_length=65536,
        )
        (pc,) = raw.accept.presentation_contexts
        assert pc.result == 0
        command = encode_command(c_store_rq(1, sop_class, sop_instance))
        raw.writer.write(encode_pdata(pc.context_id, True, True, command))
        # Half the data set, last-fragment bit never set: more is announced but never comes.
        for i in range(0, len(half), 16000):
            raw.writer.write(encode_pdata(pc.context_id, False, False, half[i : i + 16000]))
        await raw.writer.drain()
        if ending == "abort":
            raw.writer.write(encode(Abort(0, 0)))
            await raw.writer.drain()
        raw.close()
        await raw.writer.wait_closed()

    asyncio.run(go())
    storage_node.wait_idle()  # the server saw the connection go: the sink is discarded
    assert storage_node.index.instance(sop_instance) is None
    assert storage_node.index.counts()["instances"] == 0
    assert_consistent(storage_node.data, storage_node.index)
    assert not list((storage_node.data / "spool").iterdir())
    assert echo_ok(storage_node.host, storage_node.port)


# ---------------------------------------------------------------- testdata/malformed, byte for byte


def malformed_item(path: Path) -> tuple[str, str, str, bytes]:
    """(SOP class, SOP instance, transfer syntax, data set bytes) to send for a malformed file.

    The data set goes exactly as the file has it, after its File Meta Information if any.
    The command's UIDs are the data set's own where a forced read finds them (so that what
    is tested is the data set, not a meta/data set mismatch), else the meta's, else stand-ins;
    without meta, the transfer syntax comes from a look at the first element (explicit VR:
    two capital letters at offset 4).
    """
    with path.open("rb") as fp:
        layout = read_layout(fp)
        data = fp.read()
    sop_class, sop_instance = "", ""
    try:
        ds = dcmread(path, force=True, stop_before_pixels=True)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    except Exception:
        pass
    sop_class = sop_class or layout.sop_class_uid or CT_IMAGE_STORAGE
    sop_instance = sop_instance or layout.sop_instance_uid or "1.2.3.4.5.6.7.8.9"
    ts = layout.transfer_syntax_uid
    if not ts:
        ts = EXPLICIT_VR_LE if data[4:6].isalpha() and data[4:6].isupper() else IMPLICIT_VR_LE
    return sop_class, sop_instance, ts, data


async def _accepted(host: str, port: int, sop_class: str, ts: str) -> bool:
    async with associate(
        host, port, called_ae_title="PACSNODE", contexts=[ProposedContext(sop_class, (ts,))]
    ) as a:
        return a.negotiated.context_for(sop_class, ts) is not None


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_every_malformed_file_is_stored_or_refused_clearly(make_storage_node):
    # replace: malformed copies share UIDs; each data set must get past the duplicate check.
    storage_node = make_storage_node(duplicate_policy="replace")
    folder = need_testdata("malformed")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(files) >= 25
    outcomes: dict[str, str] = {}
    stored_uids: set[str] = set()
    for path in files:
        sop_class, sop_instance, ts, data = malformed_item(path)
        if not asyncio.run(_accepted(storage_node.host, storage_node.port, sop_class, ts)):
            # A SOP class or syntax the node does not take: send it as CT Explicit VR LE.
            sop_class, ts = CT_IMAGE_STORAGE, EXPLICIT_VR_LE
        try:
            (rsp,) = raw_store(storage_node.host, storage_node.port, [(sop_class, sop_instance, ts, data)])
        except Exception as exc:  # an aborted association is not a clear status
            raise AssertionError(f"{path.name}: no C-STORE-RSP: {exc!r}") from exc
        if rsp.status == Status.SUCCESS:
            row = storage_node.index.instance(sop_instance)
            assert row is not None, path.name
            assert part10_dataset(storage_node.data / row["path"])[3] == data, path.name
            outcomes[path.name] = "stored"
            stored_uids.add(sop_instance)
        else:
            assert rsp.status in REFUSALS, f"{path.name}: status 0x{rsp.status:04X}"
            assert rsp.error_comment, f"{path.name}: refused without an Error Comment"
            outcomes[path.name] = f"0x{rsp.status:04X} {rsp.error_comment}"
        assert echo_ok(storage_node.host, storage_node.port), f"node stopped serving after {path.name}"
    assert_consistent(storage_node.data, storage_node.index)
    assert storage_node.index.counts()["instances"] == len(stored_uids)
    refused = [name for name, outcome in outcomes.items() if outcome != "stored"]
    assert stored_uids and refused, outcomes


# ---------------------------------------------------------------- peer text that looks like a path


EVIL_UIDS = ["../../evil", "a/b/c", "/etc/passwd", "..", "1.2.3\x00/../x", "..\\..\\evil"]
EVIL_AE_TITLES = ["A/../B", "../../..", "/tmp/x", "./"]  # (a backslash is no AE character)


def _with_uid(ds: Any, uid: str) -> tuple[str, str, str, bytes]:
    """The instance with ``uid`` as its SOP Instance UID, written into the encoded bytes
    (pydicom would not write such a UID itself)."""
    sop_class, old, ts, data = item_of(ds)
    old_value = old.encode() + b"\0" * (len(old) % 2)
    element = b"\x08\x00\x18\x00UI" + struct.pack("<H", len(old_value)) + old_value  # (0008,0018)
    assert data.count(element) == 1
    value = uid.encode() + b"\0" * (len(uid) % 2)
    return sop_class, uid, ts, data.replace(element, element[:6] + struct.pack("<H", len(value)) + value)


def snapshot(root: Path, skip: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if skip not in (p, *p.parents)}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("calling", EVIL_AE_TITLES)
def test_uids_and_ae_titles_never_name_files(make_storage_node, tmp_path, calling):
    data = tmp_path / "a" / "b" / "c" / "data"
    node = make_storage_node(data=data)
    before = snapshot(tmp_path, data)
    statuses = {}
    for uid in EVIL_UIDS:
        ds = make_instance()
        item = _with_uid(ds, uid)
        (rsp,) = raw_store(node.host, node.port, [item], calling=calling)
        statuses[uid] = rsp.status
        assert rsp.status == Status.SUCCESS or rsp.error_comment, (uid, rsp)
    # Study and Series Instance UIDs too.
    ds = make_instance(study="../../study", series="../series/x")
    (rsp,) = raw_store(node.host, node.port, [item_of(ds)], calling=calling)
    statuses["study/series"] = rsp.status
    node.wait_idle(WAIT)
    assert snapshot(tmp_path, data) == before, "a file or folder appeared outside the data folder"
    paths = assert_consistent(node.data, node.index)
    assert all(OBJECT_NAME.fullmatch(p) for p in paths)
    assert len(object_files(node.data)) == sum(1 for s in statuses.values() if s == Status.SUCCESS)
    for row in index_rows(node.index)["instances"]:
        assert row["source_ae_title"] == calling  # kept as text, used for nothing else
    assert echo_ok(node.host, node.port)
