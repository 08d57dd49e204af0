"""A lone storing association is committed on the event loop (SQLite); with more than one, or
with PostgreSQL, every group goes through the committer thread.  Same answers either way."""

from __future__ import annotations

import threading
from typing import Any

from peerkit import AE_TITLE, CT_IMAGE_STORAGE, EXPLICIT_VR_LE, HOST, make_instance


def _spy(node: Any) -> list[str]:
    """The thread name of every group commit of the node's archive, in order."""
    archive = node.node.archive
    threads: list[str] = []
    real = archive._commit

    def commit(batch: Any) -> None:
        threads.append(threading.current_thread().name)
        real(batch)

    archive._commit = commit
    return threads


def _associate(port: int) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title="INLINE")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)
    assoc = ae.associate(HOST, port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def _store(assoc: Any) -> str:
    ds = make_instance(size=8)
    rsp = assoc.send_c_store(ds)
    assert rsp and rsp.Status == 0
    return str(ds.SOPInstanceUID)


def test_where_each_group_is_committed(make_storage_node, index_url, monkeypatch):
    from pacsnode.services.storage import StorageSCP

    ended = threading.Event()
    real_end = StorageSCP.association_ended

    def association_ended(self: StorageSCP, association: Any) -> None:
        real_end(self, association)
        ended.set()

    monkeypatch.setattr(StorageSCP, "association_ended", association_ended)
    node = make_storage_node()
    threads = _spy(node)
    sqlite = not index_url
    loop_thread, committer = node.thread.name, "pacsnode-commit"
    stored = []
    first = _associate(node.port)
    try:
        stored += [_store(first), _store(first)]  # alone
        second = _associate(node.port)
        try:
            stored += [_store(second), _store(first)]  # two associations have stored
        finally:
            second.release()
        assert ended.wait(30), "the node did not see the second association end"
        stored.append(_store(first))  # alone again
    finally:
        first.release()
    where = [t if t == loop_thread else committer if t.startswith(committer) else t for t in threads]
    if sqlite:
        assert where == [loop_thread, loop_thread, committer, committer, loop_thread]
    else:
        assert where == [committer] * 5
    assert all(node.index.instance(uid) is not None for uid in stored)
