"""The durability contract (DESIGN.md) under kill -9: `pacsnode serve` is killed at a random moment
while four associations store instances, restarted, and checked, round after round.

After every restart: every instance whose C-STORE-RSP said Success is indexed and its file holds
exactly the bytes that were sent (data set bytes and the sha256 column); no index row points at a
missing file; the spool is empty and no object file lacks its row (orphans swept or re-indexed at
start-up); the computed attributes agree with the rows.  Instances that were in flight when the
server died may or may not be there, but if they are, they are whole.

The moment of the kill is chosen by count of acknowledged instances (never by time) from
``random.Random(seed)``; the seed is printed and can be replayed with PACSNODE_KILL9_SEED=<seed>.
A kill -9 ends the process, not the machine: the page cache survives it, so this proves the
ordering of file, sync and index commit against a crash of the server, not against a power cut.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pacsnode.archive.index import ArchiveIndex
from peerkit import (
    AE_TITLE,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    HOST,
    ServeProcess,
    assert_computed_attributes,
    assert_consistent,
    encode_dataset,
    make_instance,
    new_uid,
    part10_dataset,
    premade_files,
)

ROUNDS = 20
SENDERS = 4
MAX_ACKS = 40  # the kill comes after 1..MAX_ACKS acknowledged instances


@dataclass
class Ledger:
    """What the senders sent and what the server acknowledged, shared by the sender threads."""

    sent: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> data set bytes
    acked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def sender(
    port: int, study: str, ledger: Ledger, kill_at: int, server: ServeProcess, errors: list[str]
) -> None:
    """One association: store fresh instances until the association dies (the kill)."""
    from pynetdicom import AE

    ae = AE(ae_title="KILL9SCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(HOST, port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return  # the server was already killed by another sender
    series = new_uid()
    try:
        for _ in range(10_000):
            ds = make_instance(study=study, series=series, size=24, patient_id="KILL9")
            data = encode_dataset(ds, EXPLICIT_VR_LE)
            with ledger.lock:
                ledger.sent[str(ds.SOPInstanceUID)] = data
            try:
                rsp = assoc.send_c_store(ds)
            except Exception:
                return
            status = rsp.get("Status") if rsp else None
            if status is None:
                return  # no response: the server is gone
            if status != 0:
                errors.append(f"C-STORE refused with 0x{status:04X}: {rsp.get('ErrorComment', '')}")
                return
            with ledger.lock:
                ledger.acked.append(str(ds.SOPInstanceUID))
                if len(ledger.acked) == kill_at:
                    server.kill9()
            if not assoc.is_established:
                return
    finally:
        if assoc.is_established:
            assoc.abort()


def check_after_restart(data: Path, index: ArchiveIndex, ledger: Ledger, where: str) -> None:
    paths = assert_consistent(data, index)  # spool empty, no row without file, no orphan file
    rows = assert_computed_attributes(index)
    indexed = {r["sop_instance_uid"]: r for r in rows["instances"]}
    missing = [uid for uid in ledger.acked if uid not in indexed]
    assert not missing, f"{where}: {len(missing)} acknowledged instance(s) lost: {missing[:5]}"
    for uid, row in indexed.items():
        expected = ledger.sent[uid]  # acknowledged, or in flight when the server died
        stored = part10_dataset(data / row["path"])[3]
        assert stored == expected, f"{where}: {uid} stored with other bytes"
        assert row["sha256"] == hashlib.sha256(expected).hexdigest(), f"{where}: {uid} sha256"
    assert len(paths) == len(indexed)


@pytest.mark.timeout(240)
def test_acknowledged_instances_survive_kill_9(tmp_path, index_url):
    seed = int(os.environ.get("PACSNODE_KILL9_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill -9 test seed: {seed} (replay with PACSNODE_KILL9_SEED={seed})")
    rng = random.Random(seed)
    data = tmp_path / "data"
    url = index_url or f"sqlite:///{(data / 'index.sqlite').resolve()}"
    ledger = Ledger()
    studies = [new_uid() for _ in range(SENDERS)]  # the same studies round after round
    kills: list[int] = []
    repaired = 0  # restarts that swept or re-indexed something
    server = ServeProcess(data, index_url=index_url)
    index: ArchiveIndex | None = None
    try:
        for round_no in range(ROUNDS):
            port = server.wait_ready()
            repaired += any("swept" in line or "re-indexed" in line for line in server.lines)
            if index is None:
                index = ArchiveIndex(url)
            check_after_restart(data, index, ledger, f"seed {seed}, before round {round_no}")
            kill_at = len(ledger.acked) + rng.randint(1, MAX_ACKS)
            errors: list[str] = []
            threads = [
                threading.Thread(target=sender, args=(port, study, ledger, kill_at, server, errors))
                for study in studies
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
                assert not t.is_alive(), f"seed {seed}: a sender hung"
            assert not errors, f"seed {seed}: {errors}"
            assert server.proc.poll() is not None, f"seed {seed}: the senders stopped before the kill"
            kills.append(kill_at)
            server = ServeProcess(data, index_url=index_url)  # start-up sweeps and recovers
        server.wait_ready()
        assert index is not None
        check_after_restart(data, index, ledger, f"seed {seed}, after the last round")
        assert len(ledger.acked) >= ROUNDS
        assert server.stop() == 0, server.output
        check_after_restart(data, index, ledger, f"seed {seed}, after a clean stop")
        assert premade_files(data) == [], "a clean stop leaves no pre-made object file"
    finally:
        if server.proc.poll() is None:
            server.kill9()
        if index is not None:
            index.dispose()
    print(f"{ROUNDS} kills after {kills} acknowledged instances; {len(ledger.sent)} sent; {repaired} repairs")


def test_spool_leftovers_and_orphans_are_swept_at_start_up(tmp_path, index_url):
    """What a crash can leave (a spool file, an object file without its row) is gone or
    indexed once the server has started, and never served as a half file."""
    data = tmp_path / "data"
    url = index_url or f"sqlite:///{(data / 'index.sqlite').resolve()}"
    server = ServeProcess(data, index_url=index_url)
    try:
        server.wait_ready()
        server.stop()
        (data / "spool" / "0123456789abcdef0123456789abcdef.part").write_bytes(b"half a data set")
        orphan_dir = data / "objects" / "20990101" / "00"
        orphan_dir.mkdir(parents=True)
        whole = make_instance()
        whole.save_as(orphan_dir / f"{'a' * 32}.dcm", enforce_file_format=True)
        (orphan_dir / f"{'b' * 32}.dcm").write_bytes((orphan_dir / f"{'a' * 32}.dcm").read_bytes()[:300])
        server = ServeProcess(data, index_url=index_url)
        server.wait_ready()
        index = ArchiveIndex(url)
        try:
            assert_consistent(data, index)  # spool empty; each object file is indexed or gone
            assert not (orphan_dir / f"{'b' * 32}.dcm").exists(), "a truncated orphan survived"
        finally:
            index.dispose()
    finally:
        if server.proc.poll() is None:
            server.stop()
