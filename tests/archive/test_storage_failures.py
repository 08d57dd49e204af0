"""Storage when the world fails: a full disk (0xA700, nothing half-stored, recovery once space is
freed) and an index database that is unreachable at start-up, cut off or dropped while running
(a failure status within the DIMSE timeout, never a hang, and C-ECHO still served).

The disk-full tests put the data folder on an 8 MB tmpfs (root can mount one; skipped otherwise).
The index lives elsewhere (SQLite in the test's temp folder, or PostgreSQL) in the parametrised
test, so that what fills up is the spool/object store itself; a second test keeps the default
layout (SQLite inside the full data folder), where the index write may be the one that fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from pacsnode.dimse.status import Status
from peerkit import (
    TcpProxy,
    assert_consistent,
    create_pg_database,
    drop_pg_database,
    echo_ok,
    free_port,
    item_of,
    make_instance,
    object_files,
    part10_dataset,
    pynetdicom_store,
    start_threaded_node,
    storage_settings,
)

MB = 1 << 20


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    """An 8 MB tmpfs, unmounted after the test (after the node on it is closed)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``disk``."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler.bin"
    with filler.open("wb") as fp:
        remaining = max(free - leave, 0)
        while remaining > 0:
            n = min(remaining, MB)
            fp.write(b"\0" * n)
            remaining -= n
    return filler


def store_until_full(node: Any, size: int, limit: int = 60) -> tuple[list[Any], Any, Any]:
    """Send size x size 8-bit instances until one is refused: (stored, refused dataset, its status)."""
    stored: list[Any] = []
    for _ in range(limit):
        ds = make_instance(size=size)
        (status,) = pynetdicom_store(node.host, node.port, [ds], called=node.ae_title)
        if not status.ok:
            return stored, ds, status
        stored.append(ds)
    raise AssertionError(f"the disk never filled up after {limit} instances")


def check_full_then_recover(node: Any, filler: Path, size: int = 512) -> None:
    stored, refused, status = store_until_full(node, size)
    # PS3.4 B.2.3: A7xx Refused: Out of Resources, with a reason.
    assert status.status == Status.OUT_OF_RESOURCES, status
    assert status.comment
    assert node.index.instance(refused.SOPInstanceUID) is None
    assert_consistent(node.data, node.index)  # spool empty, no row without file, no stray file
    for ds in stored:  # what was acknowledged is intact
        row = node.index.instance(ds.SOPInstanceUID)
        assert part10_dataset(node.data / row["path"])[3] == item_of(ds)[3]
    # The node still answers, and once there is room again it stores.
    assert echo_ok(node.host, node.port)
    filler.unlink()
    again = make_instance(size=size)
    statuses = pynetdicom_store(node.host, node.port, [refused, again], called=node.ae_title)
    assert [s.status for s in statuses] == [0, 0], statuses
    for ds in (refused, again):
        row = node.index.instance(ds.SOPInstanceUID)
        assert part10_dataset(node.data / row["path"])[3] == item_of(ds)[3]
    assert node.index.counts()["instances"] == len(stored) + 2
    assert_consistent(node.data, node.index)


# 512 x 512 (256 KiB) data sets are held in memory until the committer writes them; 1200 x 1200
# (1.4 MiB) ones spill to a spool file while they arrive: both ways must end in 0xA700.
@pytest.mark.parametrize("size", [512, 1200], ids=["in-memory", "spooled"])
def test_disk_full_answers_a700_and_recovers(tmpfs, make_storage_node, index_url, tmp_path, size):
    url = index_url or f"sqlite:///{tmp_path / 'index-elsewhere.sqlite'}"
    node = make_storage_node(data=tmpfs / "data", index_url=url)
    filler = fill(tmpfs, leave=3 * MB)
    check_full_then_recover(node, filler, size)


def test_disk_full_with_the_index_on_the_same_disk(tmpfs, make_storage_node, index_url):
    if index_url:
        pytest.skip("the default layout: SQLite in the data folder")
    node = make_storage_node(data=tmpfs / "data")
    assert (tmpfs / "data" / "index.sqlite").exists()
    filler = fill(tmpfs, leave=2 * MB)
    check_full_then_recover(node, filler)


# ---------------------------------------------------------------- index database unavailable


def test_unreachable_index_fails_start_up_at_once(tmp_path):
    """A PostgreSQL index on a closed port: the node refuses to start (no hang, no half start)."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(OperationalError):
        start_threaded_node(storage_settings(tmp_path / "data", url))
    assert not list((tmp_path / "data" / "objects").rglob("*.dcm"))


@contextlib.contextmanager
def node_on(settings: Any) -> Iterator[Any]:
    node = start_threaded_node(settings)
    try:
        yield node
    finally:
        node.close()


def assert_refused_not_hung(node: Any, ds: Any) -> None:
    (status,) = pynetdicom_store(node.host, node.port, [ds], called=node.ae_title, dimse_timeout=30)
    assert status.status is not None, "no C-STORE-RSP within the 30 s DIMSE timeout"
    assert status.status != Status.SUCCESS
    assert status.status == Status.OUT_OF_RESOURCES, status
    assert echo_ok(node.host, node.port), "the node stopped answering C-ECHO"


def test_index_cut_off_while_running(tmp_path):
    """The PostgreSQL port closes under a running node, then comes back."""
    name, url = create_pg_database()
    try:
        from sqlalchemy.engine import make_url

        target = make_url(url)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        proxy.start()
        via_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        with node_on(storage_settings(tmp_path / "data", via_proxy)) as node:
            first = make_instance()
            assert pynetdicom_store(node.host, node.port, [first])[0].ok
            kept = object_files(node.data)
            proxy.stop()
            lost = make_instance()
            assert_refused_not_hung(node, lost)
            assert_refused_not_hung(node, lost)
            assert object_files(node.data) == kept  # the refused instance left nothing behind
            assert not list((node.data / "spool").iterdir())
            proxy.start()  # same port again
            again = make_instance()
            statuses = pynetdicom_store(node.host, node.port, [lost, again])
            assert [s.status for s in statuses] == [0, 0], statuses
            assert node.index.counts()["instances"] == 3
            assert_consistent(node.data, node.index)
        proxy.stop()
    finally:
        drop_pg_database(name)


def test_index_database_dropped_while_running(tmp_path):
    name, url = create_pg_database()
    try:
        with node_on(storage_settings(tmp_path / "data", url)) as node:
            first = make_instance()
            assert pynetdicom_store(node.host, node.port, [first])[0].ok
            kept = object_files(node.data)
            drop_pg_database(name)
            assert_refused_not_hung(node, make_instance())
            assert_refused_not_hung(node, make_instance())
            # Nothing of the refused instances stays on disk.
            assert object_files(node.data) == kept
            assert not list((node.data / "spool").iterdir())
    finally:
        drop_pg_database(name)


def test_index_that_stops_answering_fails_the_store_not_hangs(tmp_path):
    name, url = create_pg_database()
    try:
        from sqlalchemy.engine import make_url

        target = make_url(url)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        proxy.start()
        via_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        try:
            with node_on(storage_settings(tmp_path / "data", via_proxy, commit_timeout=4.0)) as node:
                assert pynetdicom_store(node.host, node.port, [make_instance()])[0].ok
                proxy.freeze()
                try:
                    (status,) = pynetdicom_store(node.host, node.port, [make_instance()], dimse_timeout=10)
                    assert status.status is not None, "no C-STORE-RSP within a 10 s DIMSE timeout"
                    assert status.status != Status.SUCCESS
                finally:
                    proxy.thaw()
                    proxy.stop()  # cut the stalled connection so that the node can close
        finally:
            proxy.stop()
    finally:
        drop_pg_database(name)
