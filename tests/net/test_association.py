"""End to end over TCP on 127.0.0.1: our requestor against our acceptor (PS3.8 7.1-7.3, PS3.7 9.1.5)."""

from __future__ import annotations

import asyncio

import pytest

from pacsnode.config.settings import NetworkSettings
from pacsnode.net.blocking import connect
from pacsnode.net.client import (
    AssociationAbortedError,
    AssociationClosed,
    AssociationRejectedError,
    ConnectionFailed,
    associate,
    open_association,
)
from pacsnode.ul.pdu import Abort, RejectReason, RejectResult, RejectSource
from pacsnode.ul.state import State
from peerkit import WAIT, free_port, raw_associate, read_until_eof


async def test_echo(server):
    async with associate(server.host, server.port, called_ae_title="PACSNODE") as assoc:
        result = await assoc.echo()
        assert result.ok
        assert result.status == 0x0000
        assert server.server.active == 1
        n = assoc.negotiated
        assert n.peer_implementation_version_name == "PACSNODE_010"
        assert n.context_for("1.2.840.10008.1.1") is not None
    await server.wait_idle()
    assert server.server.active == 0


async def test_many_echoes_on_one_association(server):
    async with associate(server.host, server.port) as assoc:
        results = [await assoc.echo() for _ in range(300)]
    assert all(r.ok for r in results)
    assert len(results) == 300


async def test_concurrent_associations_each_echo(server):
    async def one(i: int) -> bool:
        async with associate(server.host, server.port, calling_ae_title=f"SCU{i}") as assoc:
            return all([(await assoc.echo()).ok for _ in range(20)])

    assert await asyncio.gather(*(one(i) for i in range(10))) == [True] * 10
    await server.wait_idle()
    assert server.server.active == 0


async def test_release(server):
    assoc = await open_association(server.host, server.port)
    assert assoc.is_established
    assert (await assoc.echo()).ok
    await assoc.release()
    # The peer answered A-RELEASE-RP (no exception on ``released``) and the connection is gone.
    assert assoc.protocol.released.done() and assoc.protocol.released.exception() is None
    assert assoc.protocol.closed.done()
    assert not assoc.is_established
    await server.wait_idle()
    assert server.server.active == 0


async def test_abort(server):
    assoc = await open_association(server.host, server.port)
    assert (await assoc.echo()).ok
    assoc.abort()
    await asyncio.wait_for(assoc.protocol.closed, WAIT)
    assert assoc.protocol.ul.state is State.Sta1
    await server.wait_idle()
    assert server.server.active == 0
    # The server keeps serving after an abort.
    async with associate(server.host, server.port) as again:
        assert (await again.echo()).ok


async def test_echo_after_release_raises(server):
    assoc = await open_association(server.host, server.port)
    await assoc.release()
    with pytest.raises(AssociationClosed):
        await assoc.echo()


def test_blocking_connect(threaded_server):
    with connect(threaded_server.host, threaded_server.port, called_ae_title="PACSNODE") as assoc:
        assert assoc.echo().ok
        assert assoc.echo().status == 0
        assert threaded_server.stats()[0] == 1
    threaded_server.wait_idle()
    assert threaded_server.stats() == (0, 0)


def test_blocking_connect_abort(threaded_server):
    with connect(threaded_server.host, threaded_server.port) as assoc:
        assert assoc.echo().ok
        assoc.abort()
        assert assoc.association.protocol.closed.done()
    threaded_server.wait_idle()
    assert threaded_server.stats() == (0, 0)


def test_blocking_connect_exception_in_block_aborts(threaded_server):
    with pytest.raises(KeyError), connect(threaded_server.host, threaded_server.port) as assoc:
        assert assoc.echo().ok
        raise KeyError("boom")
    threaded_server.wait_idle()
    assert threaded_server.stats() == (0, 0)


def test_blocking_connect_refused():
    with pytest.raises(ConnectionFailed), connect("127.0.0.1", free_port(), connect_timeout=WAIT):
        pass


# ---------------------------------------------------------------- association policy


async def test_association_limit(make_server):
    srv = await make_server(network=NetworkSettings(max_associations=2))
    first = await open_association(srv.host, srv.port)
    second = await open_association(srv.host, srv.port)
    assert srv.server.active == 2
    with pytest.raises(AssociationRejectedError) as info:
        await open_association(srv.host, srv.port)
    rj = info.value.reject
    assert (rj.result, rj.source, rj.reason) == (
        RejectResult.TRANSIENT,
        RejectSource.SERVICE_PROVIDER_PRESENTATION,
        RejectReason.LOCAL_LIMIT_EXCEEDED,
    )
    assert "local limit exceeded" in str(info.value)
    # The two accepted associations are unaffected.
    assert (await first.echo()).ok and (await second.echo()).ok
    await first.release()
    # A slot is free again.
    async with associate(srv.host, srv.port) as third:
        assert (await third.echo()).ok
    await second.release()
    await srv.wait_idle()
    assert srv.server.active == 0


async def test_association_limit_many_at_once(make_server):
    srv = await make_server(network=NetworkSettings(max_associations=3))
    outcomes = await asyncio.gather(
        *(open_association(srv.host, srv.port, calling_ae_title=f"C{i}") for i in range(8)),
        return_exceptions=True,
    )
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    rejected = [o for o in outcomes if isinstance(o, AssociationRejectedError)]
    assert len(accepted) == 3
    assert len(rejected) == 5
    assert all((r.reject.result, r.reject.source, r.reject.reason) == (2, 3, 2) for r in rejected)
    assert srv.server.active == 3
    for assoc in accepted:
        assert (await assoc.echo()).ok
        await assoc.release()
    await srv.wait_idle()
    assert srv.server.active == 0


async def test_called_ae_title_checked(make_server):
    srv = await make_server(network=NetworkSettings(require_called_aet=True))
    with pytest.raises(AssociationRejectedError) as info:
        await open_association(srv.host, srv.port, called_ae_title="SOMEONE_ELSE")
    rj = info.value.reject
    assert (rj.result, rj.source, rj.reason) == (1, 1, 7)
    async with associate(srv.host, srv.port, called_ae_title="PACSNODE") as assoc:
        assert (await assoc.echo()).ok


async def test_called_ae_title_not_checked_by_default(server):
    async with associate(server.host, server.port, called_ae_title="WHATEVER") as assoc:
        assert (await assoc.echo()).ok


async def test_calling_ae_title_not_allowed(make_server):
    srv = await make_server(network=NetworkSettings(allowed_calling_aets=["GOODSCU", "OTHER"]))
    with pytest.raises(AssociationRejectedError) as info:
        await open_association(srv.host, srv.port, calling_ae_title="EVILSCU")
    rj = info.value.reject
    assert (rj.result, rj.source, rj.reason) == (1, 1, 3)
    assert "calling AE title not recognized" in str(info.value)
    async with associate(srv.host, srv.port, calling_ae_title="GOODSCU") as assoc:
        assert (await assoc.echo()).ok
    await srv.wait_idle()


# ---------------------------------------------------------------- shutdown and timers


async def test_graceful_shutdown_drains(make_server):
    srv = await make_server()
    assoc = await open_association(srv.host, srv.port)
    assert (await assoc.echo()).ok
    closing = asyncio.create_task(srv.server.close(timeout=WAIT))
    await asyncio.sleep(0)  # let close() start: stop listening, mark the server draining
    assert srv.server.draining
    # A new association is refused: the listener is closed (or, if a connection got in,
    # the A-ASSOCIATE-RQ is rejected with temporary congestion).
    with pytest.raises((ConnectionFailed, AssociationRejectedError)) as info:
        await open_association(srv.host, srv.port, connect_timeout=WAIT)
    if isinstance(info.value, AssociationRejectedError):
        rj = info.value.reject
        assert (rj.result, rj.source, rj.reason) == (2, 3, 1)
    # The open association still works and releases normally while the server drains.
    assert not closing.done()
    assert (await assoc.echo()).ok
    await assoc.release()
    assert assoc.protocol.released.exception() is None
    await asyncio.wait_for(closing, WAIT)
    assert srv.server.active == 0
    assert not srv.server.connections


async def test_shutdown_aborts_at_deadline(make_server):
    srv = await make_server()
    assoc = await open_association(srv.host, srv.port)
    assert (await assoc.echo()).ok
    # Nobody releases: close() must abort the association once its timeout has passed.
    await asyncio.wait_for(srv.server.close(timeout=0.2), WAIT)
    await asyncio.wait_for(assoc.protocol.closed, WAIT)
    with pytest.raises(AssociationAbortedError, match=r"source 2, reason 0"):
        await assoc.protocol.released
    assert srv.server.active == 0
    assert not srv.server.connections


async def test_idle_timeout_aborts_idle_association(make_server):
    # read_timeout stays at its (long) default: the idle timer alone must end the association.
    srv = await make_server(network=NetworkSettings(idle_timeout=0.3))
    assoc = await open_association(srv.host, srv.port)
    assert (await assoc.echo()).ok
    await asyncio.wait_for(assoc.protocol.closed, WAIT)
    with pytest.raises(AssociationAbortedError, match=r"source 2, reason 0"):
        await assoc.protocol.released
    await srv.wait_idle()
    assert srv.server.active == 0


async def test_idle_timeout_on_raw_association_sends_abort(make_server):
    srv = await make_server(network=NetworkSettings(idle_timeout=0.3))
    raw = await raw_associate(srv.host, srv.port)
    assert (await raw.echo()).status == 0
    assert await read_until_eof(raw.reader) == [Abort(2, 0)]
    raw.close()
    await srv.wait_idle()
