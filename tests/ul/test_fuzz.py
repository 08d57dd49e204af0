"""Property tests (hypothesis): arbitrary bytes parse or raise RemoteProtocolError; valid PDUs round-trip."""

from __future__ import annotations

import dataclasses
import itertools
import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacsnode.ul.connection import Aborted, AssociationRequested, Role, UpperLayer
from pacsnode.ul.errors import RemoteProtocolError
from pacsnode.ul.negotiation import AcceptorPolicy, SOPClassSupport, UserIdentityDecision, negotiate
from pacsnode.ul.pdu import (
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    AsynchronousOperationsWindow,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    PresentationContextRQ,
    ReleaseRP,
    ReleaseRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_bytes,
    encode,
)
from pacsnode.ul.state import State

# UL_FUZZ_EXAMPLES=20000 for a long hunt by hand; the default keeps the suite quick.
FUZZ = settings(
    max_examples=int(os.environ.get("UL_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# ------------------------------------------------------------------ strategies for valid PDUs

uids = st.lists(st.integers(0, 999_999), min_size=1, max_size=8).map(lambda parts: ".".join(map(str, parts)))
# PS3.5 AE VR: no backslash or control characters; leading/trailing spaces are not significant.
ae_titles = st.text(
    alphabet=st.sampled_from([c for c in string.printable if " " < c <= "~" and c != "\\"]),
    min_size=1,
    max_size=16,
)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
small_bytes = st.binary(max_size=40)
KNOWN_SUB_ITEMS = set(range(0x51, 0x5A))


@st.composite
def user_information(draw, *, rq: bool) -> UserInformation:
    has_max_length = draw(st.booleans())
    return UserInformation(
        max_length=draw(st.integers(0, 0xFFFFFFFF)) if has_max_length else 0,
        implementation_class_uid=draw(uids),
        implementation_version_name=draw(
            st.text(alphabet=string.ascii_uppercase + string.digits + "_.", max_size=16)
        ),
        async_ops_window=draw(st.none() | st.builds(AsynchronousOperationsWindow, u16, u16)),
        role_selections=tuple(
            draw(st.lists(st.builds(RoleSelection, uids, st.booleans(), st.booleans()), max_size=3))
        ),
        extended_negotiations=tuple(
            draw(st.lists(st.builds(SOPClassExtendedNegotiation, uids, small_bytes), max_size=3))
        ),
        common_extended_negotiations=tuple(
            draw(
                st.lists(
                    st.builds(
                        SOPClassCommonExtendedNegotiation,
                        uids,
                        uids,
                        st.lists(uids, max_size=3).map(tuple),
                    ),
                    max_size=2,
                )
            )
        )
        if rq
        else (),
        user_identity_rq=draw(
            st.none() | st.builds(UserIdentityRQ, u8, st.booleans(), small_bytes, small_bytes)
        )
        if rq
        else None,
        user_identity_ac=None if rq else draw(st.none() | st.builds(UserIdentityAC, small_bytes)),
        unknown_items=tuple(
            draw(
                st.lists(
                    st.tuples(u8.filter(lambda t: t not in KNOWN_SUB_ITEMS), small_bytes),
                    max_size=2,
                )
            )
        ),
        has_max_length=has_max_length,
    )


associate_rqs = st.builds(
    AssociateRQ,
    called_ae_title=ae_titles,
    calling_ae_title=ae_titles,
    presentation_contexts=st.lists(
        st.builds(PresentationContextRQ, u8, uids, st.lists(uids, max_size=4).map(tuple)), max_size=6
    ).map(tuple),
    user_information=user_information(rq=True),
    application_context=uids,
    protocol_version=u16,
)

associate_acs = st.builds(
    AssociateAC,
    called_ae_title=ae_titles,
    calling_ae_title=ae_titles,
    presentation_contexts=st.lists(
        st.builds(PresentationContextAC, u8, u8, st.just("") | uids), max_size=6
    ).map(tuple),
    user_information=user_information(rq=False),
    application_context=uids,
    protocol_version=u16,
)

pdata = st.builds(
    PDataTF,
    st.lists(st.builds(PDV, u8, st.booleans(), st.booleans(), small_bytes), min_size=1, max_size=4).map(
        tuple
    ),
)

any_pdu = st.one_of(
    associate_rqs,
    associate_acs,
    st.builds(AssociateRJ, u8, u8, u8),
    pdata,
    st.just(ReleaseRQ()),
    st.just(ReleaseRP()),
    st.builds(Abort, u8, u8),
)


@given(associate_rqs)
@FUZZ
def test_associate_rq_round_trip(pdu):
    raw = encode(pdu)
    back = decode_bytes(raw)
    assert back == pdu
    assert back.user_information.has_max_length == pdu.user_information.has_max_length
    assert encode(back) == raw


@given(associate_acs)
@FUZZ
def test_associate_ac_round_trip(pdu):
    raw = encode(pdu)
    assert decode_bytes(raw) == pdu
    assert encode(decode_bytes(raw)) == raw


@given(any_pdu)
def test_any_pdu_round_trip(pdu):
    assert decode_bytes(encode(pdu)) == pdu


# ------------------------------------------------------------------ arbitrary and mutated bytes


@st.composite
def chunked(draw, data: bytes) -> list[bytes]:
    """Split ``data`` at random points (possibly into single bytes)."""
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=min(len(data), 20))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def mutated_pdus(draw) -> bytes:
    """Valid PDUs (one or a few), then byte flips, truncation and insertion: reaches the decoders."""
    raw = bytearray(b"".join(encode(p) for p in draw(st.lists(any_pdu, min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, len(raw)))
        if op == "flip" and at < len(raw):
            raw[at] = draw(u8)
        elif op == "cut":
            del raw[at : at + draw(st.integers(1, 8))]
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


hostile_bytes = st.binary(max_size=300) | mutated_pdus()


@given(st.data(), hostile_bytes)
@FUZZ
def test_reader_yields_pdus_or_raises_remote_protocol_error(data, raw):
    reader = PDUReader(max_pdata_length=data.draw(st.sampled_from([0, 16, 4096])), max_other_length=4096)
    try:
        for chunk in data.draw(chunked(raw)):
            reader.feed(chunk)
            while (pdu := reader.next_pdu()) is not None:
                assert_stable(pdu)
    except RemoteProtocolError as exc:
        assert 0 <= int(exc.reason) <= 6


def texts(obj) -> list[str]:
    """Every str held anywhere inside a PDU object."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, tuple):
        return [t for o in obj for t in texts(o)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in texts(getattr(obj, f.name))]
    return []


def assert_stable(pdu) -> None:
    """A decoded PDU re-encodes to one that decodes the same, unless it holds non-ASCII text.

    The decoder is lenient by design (texts are Latin-1, judged later by negotiation);
    the encoder only writes ASCII, as PS3.8 requires of AE titles and UIDs.
    """
    try:
        raw = encode(pdu)
    except UnicodeEncodeError:
        assert not all(t.isascii() for t in texts(pdu))
        return
    assert decode_bytes(raw) == pdu


GOOD_RQ = AssociateRQ(
    "ANY-SCP",
    "FUZZER",
    (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
    UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
)


@given(st.data(), hostile_bytes)
@FUZZ
def test_acceptor_never_raises_on_bytes_after_a_valid_request(data, tail):
    ul = UpperLayer(Role.ACCEPTOR, max_pdata_length=4096, max_other_length=4096)
    ul.transport_connected()
    indications = []
    for chunk in data.draw(chunked(encode(GOOD_RQ) + tail)):
        indications += ul.receive_data(chunk)
    assert indications[0] == AssociationRequested(GOOD_RQ)
    assert ul.state is State.Sta3 or all(isinstance(i, Aborted) for i in indications[1:])
    # Anything written is an A-ABORT (AA-8 / AA-7); the peer's own A-ABORT (AA-3) writes nothing.
    out = ul.data_to_send()
    reader = PDUReader(max_pdata_length=0)
    reader.feed(out)
    while (pdu := reader.next_pdu()) is not None:
        assert isinstance(pdu, Abort) and pdu.source == 2
    assert reader.buffered == 0
    assert ul.state in (State.Sta3, State.Sta13, State.Sta1)
    if ul.state is State.Sta3:
        assert len(indications) == 1 and out == b""


RECEIVING_STATES = [s for s in State if s not in (State.Sta1, State.Sta4)]


@given(st.sampled_from(RECEIVING_STATES), st.sampled_from(list(Role)), hostile_bytes)
@FUZZ
def test_any_bytes_in_any_connected_state_never_raise(state, role, raw):
    ul = UpperLayer(role, max_pdata_length=4096, max_other_length=4096)
    ul.state = state
    ul.artim_running = state in (State.Sta2, State.Sta13)
    ul.receive_data(raw)
    ul.data_to_send()


HOSTILE_POLICY = AcceptorPolicy(
    ae_title="ANY-SCP",
    supported={
        uid: SOPClassSupport(uid, ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"), True, True)
        for uid in ("1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2", "1")
    },
    implementation_class_uid="1.2.3",
    user_identity=lambda identity, calling: UserIdentityDecision(identity.identity_type != 3, b"ok"),
    extended_negotiation=lambda sop, info: info[:4] or None,
)


@given(st.one_of(associate_rqs.map(encode), mutated_pdus()))
@FUZZ
def test_negotiate_always_answers_with_an_encodable_pdu(raw):
    # Whatever request the decoder lets through, the acceptor can always answer it.
    try:
        rq = decode_bytes(raw)
    except RemoteProtocolError:
        return
    if not isinstance(rq, AssociateRQ):
        return
    answer, agreed = negotiate(rq, HOSTILE_POLICY)
    assert decode_bytes(encode(answer)) == answer
    assert (agreed is None) == isinstance(answer, AssociateRJ)
