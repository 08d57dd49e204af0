"""A lone storing association is committed on the event loop (SQLite); with more than one, or
with PostgreSQL, every group goes through the committer thread.  Same answers either way."""

from __future__ import annotations

import threading
from typing import Any

import pytest

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


def _associate(port: int, *, verification: bool = False) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title="INLINE")
    if verification:
        ae.add_requested_context("1.2.840.10008.1.1")
    else:
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
    from pacsnode.archive import ingest
    from pacsnode.services.storage import StorageSCP

    ended = threading.Event()
    real_end = StorageSCP.association_ended

    def association_ended(self: StorageSCP, association: Any) -> None:
        real_end(self, association)
        ended.set()

    monkeypatch.setattr(StorageSCP, "association_ended", association_ended)
    # A lone instance is committed on the loop only while no other transaction is open on the
    # index (the audit trail's writer, say, records each association as it opens and ends):
    # what the node saw at each such decision says where that instance must be committed.
    seen: list[int] = []
    real_open = ingest.open_transactions

    def open_transactions(engine: Any) -> int:
        seen.append(real_open(engine))
        return seen[-1]

    monkeypatch.setattr(ingest, "open_transactions", open_transactions)
    node = make_storage_node()
    threads = _spy(node)
    sqlite = not index_url
    loop_thread, committer = node.thread.name, "pacsnode-commit"
    stored = []
    first = _associate(node.port)
    try:
        stored += [_store(first), _store(first), _store(first)]  # alone
        second = _associate(node.port)
        try:
            stored += [_store(second), _store(first)]  # two associations have stored
        finally:
            second.release()
        assert ended.wait(30), "the node did not see the second association end"
        stored += [_store(first), _store(first)]  # alone again
    finally:
        first.release()
    where = [t if t == loop_thread else committer if t.startswith(committer) else t for t in threads]
    if sqlite:
        assert len(seen) == 5, seen  # asked for the lone instances only
        alone = [loop_thread if n == 0 else committer for n in seen]
        assert where == [*alone[:3], committer, committer, *alone[3:]], seen
        assert loop_thread in alone, seen  # five lone instances, each met another transaction?
    else:
        assert where == [committer] * 7
        assert seen == []  # PostgreSQL never commits on the loop
    assert all(node.index.instance(uid) is not None for uid in stored)


def test_a_transaction_elsewhere_never_holds_up_the_event_loop(make_storage_node, index_url):
    """While another thread of the node holds SQLite's write lock (a worklist update, an
    audit record...), a lone association's instance goes to the committer thread, which
    waits for the lock: the event loop keeps answering other associations meanwhile.
    (Committed on the loop, it would wait there for the lock, up to the 5 s busy timeout,
    and then fail with A700.)"""
    if index_url:
        pytest.skip("inline commits are SQLite's only")
    node = make_storage_node()
    index = node.node.archive.index
    entered = threading.Event()
    real_store = index.store

    def store(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        return real_store(*args, **kwargs)

    index.store = store
    locked, echoed = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with index.engine.connect() as conn, conn.begin() as tx:
            conn.exec_driver_sql("INSERT INTO trash (path, at) VALUES ('held', CURRENT_TIMESTAMP)")
            locked.set()
            echoed.wait(60)
            tx.rollback()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert locked.wait(30)
        storing = _associate(node.port)
        statuses: list[int] = []
        sender = threading.Thread(target=lambda: statuses.append(_store_status(storing)))
        sender.start()
        assert entered.wait(30), "the instance never reached the index"
        other = _associate(node.port, verification=True)
        try:
            rsp = other.send_c_echo()
            assert rsp and rsp.Status == 0
            echo_during_lock = holder.is_alive()
        finally:
            echoed.set()
            other.release()
        sender.join(60)
        storing.release()
    finally:
        echoed.set()
        holder.join(60)
    assert echo_during_lock
    assert statuses == [0]


def _store_status(assoc: Any) -> int:
    rsp = assoc.send_c_store(make_instance(size=8))
    return int(rsp.Status) if rsp else -1
