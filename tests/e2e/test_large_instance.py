"""Streaming a large instance (DESIGN.md "Stream anything large"): a ~200 MB synthetic image goes
from P-DATA into the spool and the archive with bounded memory in `pacsnode serve`.

A peer that sends data sets ahead without waiting for responses must not make memory grow
either: reading pauses while a request waits its turn.

The instance is built once per session in a temp file (header by pydicom, then 200 MB of
Pixel Data appended in 1 MiB chunks, so the test never holds it in memory either) and sent by
DCMTK's storescu.  The server's peak resident set size (VmHWM of /proc/<pid>/status) is read
after a small warm-up store and again after the large one: it may grow by less than 100 MB.
Runs in a few seconds here; PACSNODE_SKIP_LARGE=1 skips it on slow machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import struct
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from pacsnode.archive.index import ArchiveIndex
from pacsnode.data.part10 import read_layout
from pacsnode.dimse.fragmentation import encode_message
from pacsnode.dimse.messages import c_store_rq
from pacsnode.ul.negotiation import ProposedContext
from pacsnode.ul.pdu import PDataTF
from peerkit import (
    AE_TITLE,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    HOST,
    ServeProcess,
    assert_consistent,
    echo_ok,
    item_of,
    make_instance,
    need_tool,
    new_uid,
    pynetdicom_store,
    raw_associate,
    read_pdu,
    run_tool,
)

MB = 1 << 20
ROWS = COLUMNS = 10_240  # x 16 bit = 200 MiB of Pixel Data
GROWTH_LIMIT_KB = 100 * 1024

pytestmark = pytest.mark.skipif(bool(os.environ.get("PACSNODE_SKIP_LARGE")), reason="PACSNODE_SKIP_LARGE")


ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
# Where the 200 MB sit: Pixel Data (7FE0,0010), the last element, which a header read stops
# before; or Encapsulated Document (0042,0011), which comes before it (so does Float Pixel Data).
KINDS = {
    "pixel-data": (CT_IMAGE_STORAGE, (0x7FE0, 0x0010), b"OW"),
    "encapsulated-document": (ENCAPSULATED_PDF_STORAGE, (0x0042, 0x0011), b"OB"),
}


@pytest.fixture(scope="session", params=list(KINDS))
def large_file(request, tmp_path_factory) -> tuple[Path, str, str]:
    """(path, SOP Instance UID, sha256 of the data set bytes) of a ~200 MB Part 10 file."""
    sop_class, (group, element), vr = KINDS[request.param]
    path = tmp_path_factory.mktemp("large") / f"{request.param}.dcm"
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.PatientID = "LARGE"
    if sop_class == CT_IMAGE_STORAGE:
        ds.Modality = "CT"
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    else:
        ds.Modality = "DOC"  # (no MIME Type: (0042,0012) would have to follow the document)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    header_end = path.stat().st_size
    length = ROWS * COLUMNS * 2
    digest = hashlib.sha256()
    chunk = bytes(range(256)) * (MB // 256)
    with path.open("r+b") as fp:
        fp.seek(header_end)
        # The big element, explicit VR LE: tag, VR, 2 reserved bytes, 32-bit length (PS3.5 7.1.2).
        fp.write(struct.pack("<HH2sHI", group, element, vr, 0, length))
        for _ in range(length // MB):
            fp.write(chunk)
    with path.open("rb") as fp:
        read_layout(fp)  # what is hashed is the data set, after the File Meta Information
        while block := fp.read(8 * MB):
            digest.update(block)
    return path, str(ds.SOPInstanceUID), digest.hexdigest()


@pytest.mark.timeout(300)
def test_200mb_instance_streams_with_bounded_memory(tmp_path, large_file):
    storescu = need_tool("storescu")
    path, uid, sha = large_file
    data = tmp_path / "data"
    server = ServeProcess(data)
    try:
        port = server.wait_ready()
        # Warm-up: one small store, so that lazy imports and pools count in the baseline.
        assert pynetdicom_store(HOST, port, [make_instance()])[0].ok
        before = server.memory_kb()
        args = [storescu, "-R", "-xe", "-aec", AE_TITLE, "--max-send-pdu", "131072"]
        r = run_tool([*args, HOST, str(port), str(path)], timeout=240)
        assert r.returncode == 0, r.stdout
        after = server.memory_kb()
        index = ArchiveIndex(f"sqlite:///{(data / 'index.sqlite').resolve()}")
        try:
            row = index.instance(uid)
            assert row is not None, server.output[-3000:]
            assert row["sha256"] == sha
            stored = data / row["path"]
            assert row["size"] == stored.stat().st_size
            assert stored.stat().st_size > ROWS * COLUMNS * 2
            assert_consistent(data, index)
        finally:
            index.dispose()
        growth = after - before
        size_mib = path.stat().st_size >> 20
        print(f"server VmHWM {before} kB -> {after} kB (+{growth} kB) for a {size_mib} MiB file")
        assert growth < GROWTH_LIMIT_KB, f"peak RSS grew by {growth >> 10} MiB storing {size_mib} MiB"
    finally:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.output[-3000:]


def test_pipelined_stores_beyond_the_window_keep_memory_bounded(tmp_path):
    """150 data sets of ~1 MB sent back to back without waiting for any C-STORE-RSP.

    To make the pile-up deterministic, the test holds the SQLite index's write lock while it
    sends, so the first commit waits; it lets go as soon as its writes have drained (a node
    that reads everything) or the first response came (a node that stopped reading).
    """
    n = 150
    data = tmp_path / "data"
    server = ServeProcess(data)
    try:
        port = server.wait_ready()
        assert pynetdicom_store(HOST, port, [make_instance()])[0].ok  # warm-up; the schema exists
        items = [item_of(make_instance(size=1000)) for _ in range(n)]  # 10^6 bytes of pixels each
        lock = sqlite3.connect(data / "index.sqlite", isolation_level=None)

        async def pipeline() -> tuple[int, int]:
            sop_class, _, ts, _ = items[0]
            raw = await raw_associate(HOST, port, contexts=[ProposedContext(sop_class, (ts,))])
            (pc,) = raw.accept.presentation_contexts
            peer_max = raw.accept.user_information.max_length
            before = server.memory_kb()
            lock.execute("BEGIN IMMEDIATE")
            for i, (c, uid, _, data) in enumerate(items):
                raw.writer.write(encode_message(pc.context_id, c_store_rq(i + 1, c, uid), data, peer_max))
            drained = asyncio.ensure_future(raw.writer.drain())
            first = asyncio.ensure_future(read_pdu(raw.reader, 60))
            await asyncio.wait([drained, first], return_when=asyncio.FIRST_COMPLETED)
            lock.execute("ROLLBACK")
            answered = 0
            try:
                pdus = [await first] + [await read_pdu(raw.reader, 60) for _ in range(n - 1)]
                answered = sum(isinstance(p, PDataTF) for p in pdus)
            except asyncio.IncompleteReadError:
                pass  # an A-ABORT and close is a fine answer to a peer that breaks the window
            await drained
            raw.close()
            return before, answered

        try:
            before, answered = asyncio.run(pipeline())
        finally:
            lock.close()
        growth = server.memory_kb() - before
        print(f"{answered} of {n} answered; VmHWM +{growth} kB")
        assert growth < GROWTH_LIMIT_KB, f"peak RSS grew by {growth >> 10} MiB for {n} pipelined requests"
        assert echo_ok(HOST, port)
    finally:
        if server.proc.poll() is None:
            server.stop()


@pytest.mark.timeout(300)
def test_200mb_stow_rs_body_streams_with_bounded_memory(tmp_path, large_file):
    """The same instance by STOW-RS, sent chunked (no Content-Length): the body streams into the
    spool as it arrives, so the server's peak RSS grows by less than 100 MB."""
    import requests

    path, uid, sha = large_file
    data = tmp_path / "data"
    server = ServeProcess(data)
    try:
        server.wait_ready()
        url = server.wait_dicomweb()
        boundary = "LARGEBODY"
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
        warm = requests.post(f"{url}/studies", data=_stow_body(boundary, [make_instance()]), headers=headers)
        assert warm.status_code == 200, warm.text
        before = server.memory_kb()

        def body():
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with path.open("rb") as fp:
                while chunk := fp.read(MB):
                    yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()

        r = requests.post(f"{url}/studies", data=body(), headers=headers, timeout=240)
        assert r.status_code == 200, r.text
        after = server.memory_kb()
        index = ArchiveIndex(f"sqlite:///{(data / 'index.sqlite').resolve()}")
        try:
            row = index.instance(uid)
            assert row is not None and row["sha256"] == sha
            assert_consistent(data, index)
        finally:
            index.dispose()
        growth = after - before
        size_mib = path.stat().st_size >> 20
        print(f"server VmHWM {before} kB -> {after} kB (+{growth} kB) for STOW-RS of {size_mib} MiB")
        assert growth < GROWTH_LIMIT_KB, f"peak RSS grew by {growth >> 10} MiB"
    finally:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.output[-3000:]


def _stow_body(boundary: str, datasets: list[Dataset]) -> bytes:
    from io import BytesIO

    out = b""
    for ds in datasets:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue() + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
