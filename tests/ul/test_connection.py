"""Two UpperLayers (requestor, acceptor) talking through pipes: associations, release collisions, aborts.

No sockets: ``pipe`` moves what one side's ``data_to_send`` returns into the other
side's ``receive_data``, whole or one byte at a time.
"""

from __future__ import annotations

import pytest

from pacsnode.ul.connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    UpperLayer,
)
from pacsnode.ul.errors import AbortReason, AbortSource, LocalProtocolError
from pacsnode.ul.negotiation import AcceptorPolicy, ProposedContext, SOPClassSupport, build_request, negotiate
from pacsnode.ul.pdu import (
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
    decode_bytes,
    encode,
    encode_pdata,
)
from pacsnode.ul.state import State

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

REQUEST = build_request(
    "ANY-SCP",
    "ECHOSCU",
    [ProposedContext(VERIFICATION, (IMPLICIT_LE,))],
    implementation_class_uid="1.2.826.0.1.3680043.10.1",
    max_pdu_length=16384,
)
POLICY = AcceptorPolicy(
    ae_title="ANY-SCP",
    supported={VERIFICATION: SOPClassSupport(VERIFICATION, (IMPLICIT_LE,))},
    implementation_class_uid="1.2.826.0.1.3680043.10.1",
)

CHUNKINGS = [pytest.param(False, id="whole"), pytest.param(True, id="byte-by-byte")]


def pipe(src: UpperLayer, dst: UpperLayer, one_byte: bool = False) -> list:
    data = src.data_to_send()
    assert data, "nothing to send"
    if not one_byte:
        return dst.receive_data(data)
    out: list = []
    for i in range(len(data)):
        out += dst.receive_data(data[i : i + 1])
    return out


def associate(one_byte: bool = False) -> tuple[UpperLayer, UpperLayer]:
    """A requestor and an acceptor in Sta6, after a real negotiation."""
    req, acc = UpperLayer(Role.REQUESTOR), UpperLayer(Role.ACCEPTOR)
    req.request_association(REQUEST)
    assert req.state is State.Sta4 and req.data_to_send() == b""
    acc.transport_connected()
    req.transport_connected()
    assert (req.state, acc.state) == (State.Sta5, State.Sta2)
    assert acc.artim_running and not req.artim_running

    [requested] = pipe(req, acc, one_byte)
    assert requested == AssociationRequested(REQUEST)
    assert acc.state is State.Sta3 and not acc.artim_running
    answer, agreed = negotiate(requested.request, POLICY)
    assert isinstance(answer, AssociateAC) and agreed is not None
    acc.accept(answer)
    assert pipe(acc, req, one_byte) == [AssociationAccepted(answer)]
    assert req.is_established and acc.is_established
    return req, acc


@pytest.mark.parametrize("one_byte", CHUNKINGS)
def test_whole_association_requestor_releases(one_byte):
    req, acc = associate(one_byte)
    # P-DATA both ways (DT-1 / DT-2).
    req.send_pdata(encode_pdata(1, True, True, b"C-ECHO-RQ"))
    assert pipe(req, acc, one_byte) == [DataReceived((PDV(1, True, True, b"C-ECHO-RQ"),))]
    acc.send_pdata(encode_pdata(1, True, True, b"C-ECHO-RSP"))
    assert pipe(acc, req, one_byte) == [DataReceived((PDV(1, True, True, b"C-ECHO-RSP"),))]
    # Release (AR-1, AR-2, AR-4, AR-3, AR-5).
    req.release()
    assert req.state is State.Sta7
    assert pipe(req, acc, one_byte) == [ReleaseRequested(collision=False)]
    assert acc.state is State.Sta8
    acc.release_response()
    assert acc.state is State.Sta13 and acc.artim_running and not acc.close_requested
    assert pipe(acc, req, one_byte) == [ReleaseConfirmed()]
    assert req.state is State.Sta1 and req.close_requested
    # The requestor closes; the acceptor sees it in Sta13.
    assert acc.connection_lost() == []
    assert acc.state is State.Sta1 and not acc.artim_running
    assert req.connection_lost() == []  # already idle


def test_acceptor_may_release_too():
    req, acc = associate()
    acc.release()
    assert pipe(acc, req) == [ReleaseRequested(collision=False)]
    req.release_response()
    assert req.state is State.Sta13 and req.artim_running
    assert pipe(req, acc) == [ReleaseConfirmed()]
    assert acc.state is State.Sta1 and acc.close_requested
    assert req.connection_lost() == []
    assert req.state is State.Sta1


def test_pdata_keeps_flowing_while_release_is_pending():
    req, acc = associate()
    req.release()  # Sta7: may still receive P-DATA (AR-6)
    acc.send_pdata(encode_pdata(1, False, True, b"late"))
    assert pipe(acc, req) == [DataReceived((PDV(1, False, True, b"late"),))]
    assert req.state is State.Sta7
    with pytest.raises(LocalProtocolError):
        req.send_pdata(encode_pdata(1, False, True, b"no"))  # Evt9 in Sta7 is empty
    assert pipe(req, acc) == [ReleaseRequested()]
    acc.send_pdata(encode_pdata(1, False, True, b"after"))  # Sta8: AR-7
    assert acc.state is State.Sta8
    acc.release_response()
    # Both PDUs arrive in one chunk: the P-DATA (AR-6), then the A-RELEASE-RP (AR-3).
    assert pipe(acc, req) == [DataReceived((PDV(1, False, True, b"after"),)), ReleaseConfirmed()]


@pytest.mark.parametrize("one_byte", CHUNKINGS)
@pytest.mark.parametrize("first", ["requestor-first", "acceptor-first"])
def test_release_collision(one_byte, first):
    """PS3.8 7.2.2 / Table 9-10: both sides ask for release at once.

    Requestor path: Sta6 -AR-1-> Sta7 -AR-8-> Sta9 -AR-9-> Sta11 -AR-3-> Sta1.
    Acceptor path:  Sta6 -AR-1-> Sta7 -AR-8-> Sta10 -AR-10-> Sta12 -AR-4-> Sta13 -AR-5-> Sta1.
    """
    req, acc = associate()
    req.release()
    acc.release()
    if first == "requestor-first":
        assert pipe(req, acc, one_byte) == [ReleaseRequested(collision=True)]
        assert pipe(acc, req, one_byte) == [ReleaseRequested(collision=True)]
    else:
        assert pipe(acc, req, one_byte) == [ReleaseRequested(collision=True)]
        assert pipe(req, acc, one_byte) == [ReleaseRequested(collision=True)]
    assert (req.state, acc.state) == (State.Sta9, State.Sta10)
    # The acceptor side must wait for the requestor's A-RELEASE-RP (Evt14 empty in Sta10).
    with pytest.raises(LocalProtocolError):
        acc.release_response()
    req.release_response()  # AR-9
    assert req.state is State.Sta11
    assert pipe(req, acc, one_byte) == [ReleaseConfirmed()]  # AR-10
    assert acc.state is State.Sta12
    acc.release_response()  # AR-4
    assert acc.state is State.Sta13 and acc.artim_running
    assert pipe(acc, req, one_byte) == [ReleaseConfirmed()]  # AR-3
    assert req.state is State.Sta1 and req.close_requested
    assert acc.connection_lost() == []  # AR-5
    assert acc.state is State.Sta1


def test_release_collision_rq_and_rp_in_one_chunk():
    # The requestor answered the collision before the acceptor read anything:
    # the acceptor gets A-RELEASE-RQ and A-RELEASE-RP together (Sta7 -> Sta10 -> Sta12).
    req, acc = associate()
    req.release()
    acc.release()
    assert pipe(acc, req) == [ReleaseRequested(collision=True)]
    req.release_response()
    assert pipe(req, acc) == [ReleaseRequested(collision=True), ReleaseConfirmed()]
    assert acc.state is State.Sta12
    acc.release_response()
    assert pipe(acc, req) == [ReleaseConfirmed()]
    assert (req.state, acc.state) == (State.Sta1, State.Sta13)


def test_release_collision_acceptor_artim_expires_if_requestor_never_closes():
    req, acc = associate()
    req.release()
    acc.release()
    pipe(req, acc)
    pipe(acc, req)
    req.release_response()
    pipe(req, acc)
    acc.release_response()
    assert acc.artim_running
    assert acc.artim_expired() == []  # AA-2
    assert acc.state is State.Sta1 and acc.close_requested and not acc.artim_running


@pytest.mark.parametrize("one_byte", CHUNKINGS)
def test_reject(one_byte):
    req, acc = UpperLayer(Role.REQUESTOR), UpperLayer(Role.ACCEPTOR)
    req.request_association(REQUEST)
    acc.transport_connected()
    req.transport_connected()
    [requested] = pipe(req, acc, one_byte)
    answer, agreed = negotiate(requested.request, POLICY, congested=True)
    assert isinstance(answer, AssociateRJ) and agreed is None
    acc.reject(answer)
    assert acc.state is State.Sta13 and acc.artim_running  # AE-8
    assert pipe(acc, req, one_byte) == [AssociationRejected(answer)]
    assert req.state is State.Sta1 and req.close_requested  # AE-4
    assert acc.connection_lost() == []
    assert acc.state is State.Sta1


@pytest.mark.parametrize("who", ["requestor", "acceptor"])
def test_user_abort(who):
    req, acc = associate()
    src, dst = (req, acc) if who == "requestor" else (acc, req)
    src.abort(AbortSource.SERVICE_USER, 0)
    assert src.state is State.Sta13 and src.artim_running  # AA-1
    [aborted] = pipe(src, dst)
    assert aborted == Aborted(0, 0, by_peer=True)  # AA-3
    assert dst.state is State.Sta1 and dst.close_requested
    assert src.artim_expired() == []  # AA-2: the peer never closed
    assert src.state is State.Sta1 and src.close_requested
    src.abort()  # no-op once idle
    assert src.data_to_send() == b""


def test_abort_before_the_transport_is_up():
    req = UpperLayer(Role.REQUESTOR)
    req.request_association(REQUEST)
    req.abort()  # Evt15 in Sta4: AA-2
    assert req.state is State.Sta1 and req.close_requested
    assert req.data_to_send() == b""


def test_abort_while_awaiting_the_accept():
    req, acc = UpperLayer(Role.REQUESTOR), UpperLayer(Role.ACCEPTOR)
    req.request_association(REQUEST)
    acc.transport_connected()
    req.transport_connected()
    req.abort()  # Sta5: AA-1
    # The A-ASSOCIATE-RQ and the A-ABORT leave together; the acceptor sees both.
    assert pipe(req, acc) == [AssociationRequested(REQUEST), Aborted(0, 0, by_peer=True)]
    assert acc.state is State.Sta1


def test_transport_lost_mid_association_is_a_provider_abort():
    _req, acc = associate()
    [ind] = acc.connection_lost()  # AA-4
    assert isinstance(ind, Aborted)
    assert (ind.source, ind.reason, ind.by_peer) == (AbortSource.SERVICE_PROVIDER, 0, False)
    assert acc.state is State.Sta1 and acc.close_requested


def test_transport_lost_before_any_pdu():
    acc = UpperLayer(Role.ACCEPTOR)
    acc.transport_connected()
    assert acc.connection_lost() == []  # AA-5
    assert acc.state is State.Sta1 and not acc.artim_running


def test_no_request_within_artim():
    acc = UpperLayer(Role.ACCEPTOR)
    acc.transport_connected()
    assert acc.artim_expired() == []  # Evt18 in Sta2: AA-2
    assert acc.state is State.Sta1 and acc.close_requested


def test_artim_expired_when_not_running_is_ignored():
    _req, acc = associate()
    assert acc.artim_expired() == []
    assert acc.state is State.Sta6


# ------------------------------------------------------------------ protocol errors from the peer


def test_malformed_pdu_mid_association_aborts_and_stops_reading():
    req, acc = associate()
    garbage = bytes.fromhex("05 00 00000005 00000000 00")  # A-RELEASE-RQ of length 5
    indications = acc.receive_data(garbage + encode(ReleaseRQ()) + encode_pdata(1, False, True, b"x"))
    assert len(indications) == 1
    [ind] = indications
    assert isinstance(ind, Aborted) and not ind.by_peer
    assert (ind.source, ind.reason) == (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    assert "length 5" in ind.detail
    assert acc.last_error is not None and acc.last_error.reason == AbortReason.INVALID_PDU_PARAMETER_VALUE
    assert acc.state is State.Sta13 and acc.artim_running  # AA-8
    # Nothing after the bad PDU is read: the stream cannot be re-synchronised.
    assert acc.receive_data(encode(ReleaseRQ())) == []
    # The peer learns why.
    [seen] = pipe(acc, req)
    assert seen == Aborted(
        AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE, by_peer=True
    )
    assert req.state is State.Sta1


def test_pdata_over_our_maximum_length_is_aborted():
    req = UpperLayer(Role.REQUESTOR, max_pdata_length=64)
    acc = UpperLayer(Role.ACCEPTOR, max_pdata_length=64)
    req.request_association(REQUEST)
    acc.transport_connected()
    req.transport_connected()
    pipe(req, acc)
    acc.accept(negotiate(REQUEST, POLICY)[0])  # type: ignore[arg-type]
    pipe(acc, req)
    # Only the header of an oversized P-DATA-TF is needed to refuse it.
    [ind] = acc.receive_data(encode_pdata(1, False, True, b"z" * 100)[:6])
    assert isinstance(ind, Aborted)
    assert ind.reason == AbortReason.INVALID_PDU_PARAMETER_VALUE
    assert decode_bytes(acc.data_to_send()) == Abort(2, 6)


def test_unexpected_first_pdu_and_then_more():
    acc = UpperLayer(Role.ACCEPTOR)
    acc.transport_connected()
    # A-RELEASE-RQ as the first PDU (Evt12 in Sta2): AA-1.
    assert acc.receive_data(encode(ReleaseRQ())) == []
    assert acc.state is State.Sta13 and acc.artim_running
    assert decode_bytes(acc.data_to_send()) == Abort(2, 2)
    # In Sta13 further PDUs are ignored (AA-6) except an A-ASSOCIATE-RQ (AA-7).
    assert acc.receive_data(encode(ReleaseRP()) + encode_pdata(1, False, True, b"x")) == []
    assert acc.data_to_send() == b""
    assert acc.receive_data(encode(REQUEST)) == []
    assert decode_bytes(acc.data_to_send()) == Abort(2, 2)
    assert acc.state is State.Sta13
    # The peer's A-ABORT closes (AA-2).
    assert acc.receive_data(encode(Abort())) == []
    assert acc.state is State.Sta1 and acc.close_requested and not acc.artim_running


def test_pdus_after_a_closing_pdu_are_not_read():
    req, _acc = associate()
    assert req.receive_data(encode(Abort(0, 0)) + encode_pdata(1, False, True, b"x")) == [
        Aborted(0, 0, by_peer=True)
    ]
    assert req.state is State.Sta1
    assert req.receive_data(encode_pdata(1, False, True, b"y")) == []


def test_several_pdus_in_one_chunk_and_the_accept_split_anywhere():
    req, acc = UpperLayer(Role.REQUESTOR), UpperLayer(Role.ACCEPTOR)
    req.request_association(REQUEST)
    acc.transport_connected()
    req.transport_connected()
    pipe(req, acc)
    answer = negotiate(REQUEST, POLICY)[0]
    acc.accept(answer)  # type: ignore[arg-type]
    acc.send_pdata(encode_pdata(1, True, False, b"a") + encode_pdata(1, True, True, b"b"))
    stream = acc.data_to_send()
    for cut in range(len(stream) + 1):
        r = UpperLayer(Role.REQUESTOR)
        r.request_association(REQUEST)
        r.transport_connected()
        r.data_to_send()
        got = r.receive_data(stream[:cut]) + r.receive_data(stream[cut:])
        assert got == [
            AssociationAccepted(answer),  # type: ignore[arg-type]
            DataReceived((PDV(1, True, False, b"a"),)),
            DataReceived((PDV(1, True, True, b"b"),)),
        ]


def test_multi_pdv_pdata_is_one_indication():
    _req, acc = associate()
    pdvs = (PDV(1, True, False, b"a"), PDV(1, True, True, b"b"))
    assert acc.receive_data(encode(PDataTF(pdvs))) == [DataReceived(pdvs)]


def test_primitives_out_of_order_are_local_errors():
    req, acc = associate()
    with pytest.raises(LocalProtocolError):
        req.request_association(REQUEST)  # Evt1 in Sta6
    with pytest.raises(LocalProtocolError):
        acc.accept(negotiate(REQUEST, POLICY)[0])  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        acc.release_response()  # nothing to answer
    with pytest.raises(LocalProtocolError):
        req.transport_connected()
    assert (req.state, acc.state) == (State.Sta6, State.Sta6)
    assert req.data_to_send() == acc.data_to_send() == b""


def test_nothing_is_read_before_the_transport_is_up():
    acc = UpperLayer(Role.ACCEPTOR)
    assert acc.receive_data(encode(REQUEST)) == []
    assert acc.state is State.Sta1
    assert acc.connection_lost() == []


def test_release_rp_echoes_only_what_the_standard_defines():
    req, acc = associate()
    req.release()
    assert req.data_to_send() == encode(ReleaseRQ()) == bytes.fromhex("05 00 00000004 00000000")
    acc.receive_data(encode(ReleaseRQ()))
    acc.release_response()
    assert acc.data_to_send() == encode(ReleaseRP()) == bytes.fromhex("06 00 00000004 00000000")


def test_artim_generation_counts_every_start_and_restart() -> None:
    # PS3.8 9.1.5 / AA-1: ARTIM is started (AE-5) and restarted (AA-1 after a bad first PDU);
    # each start is a new generation, so the shell arms a fresh deadline.
    from pacsnode.ul.connection import Role, UpperLayer

    ul = UpperLayer(Role.ACCEPTOR, max_pdata_length=16384)
    ul.transport_connected()
    assert ul.artim_running and ul.artim_generation == 1
    ul.receive_data(b"\x09\x00\x00\x00\x00\x00")  # unknown PDU type in Sta2: AA-1
    assert ul.artim_running and ul.artim_generation == 2
