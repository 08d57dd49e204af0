"""PS3.7 6.3.1 / PS3.8 E.2: reassembly of DIMSE messages from PDVs, and the violations that abort."""

from __future__ import annotations

import pytest
from dimse_samples import SAMPLES
from hypothesis import given
from hypothesis import strategies as st

from pacsnode.dimse.assembler import CommandReceived, DataSetFragment, MessageAssembler
from pacsnode.dimse.commands import CommandField, encode_command
from pacsnode.dimse.fragmentation import fragment
from pacsnode.ul.errors import AbortReason, RemoteProtocolError
from pacsnode.ul.pdu import PDV, decode_bytes

ECHO = SAMPLES[CommandField.C_ECHO_RQ]
STORE = SAMPLES[CommandField.C_STORE_RQ]
ECHO_BYTES = encode_command(ECHO)
STORE_BYTES = encode_command(STORE)
UNEXPECTED = AbortReason.UNEXPECTED_PDU_PARAMETER
INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE


def cmd(data: bytes, last: bool = True, ctx: int = 1) -> PDV:
    return PDV(ctx, True, last, data)


def data(payload: bytes, last: bool = False, ctx: int = 1) -> PDV:
    return PDV(ctx, False, last, payload)


def feed(assembler: MessageAssembler, *pdvs: PDV) -> list:
    return [event for pdv in pdvs for event in assembler.receive(pdv)]


def test_single_pdv_command():
    a = MessageAssembler()
    assert a.receive(cmd(ECHO_BYTES)) == [CommandReceived(1, ECHO)]
    assert not a.in_message
    assert a.receive(cmd(ECHO_BYTES, ctx=3)) == [CommandReceived(3, ECHO)]


def test_fragmented_command_then_streamed_data_set():
    a = MessageAssembler()
    assert a.receive(cmd(STORE_BYTES[:10], last=False, ctx=5)) == []
    assert a.in_message
    assert a.receive(cmd(STORE_BYTES[10:11], last=False, ctx=5)) == []
    assert a.receive(cmd(STORE_BYTES[11:], ctx=5)) == [CommandReceived(5, STORE)]
    assert a.in_message
    first = data(b"abc", ctx=5)
    [event] = a.receive(first)
    assert event == DataSetFragment(5, b"abc", False)
    assert event.data is first.data  # handed on, not copied or buffered
    assert a.receive(data(b"", ctx=5)) == [DataSetFragment(5, b"", False)]
    assert a.receive(data(b"z", last=True, ctx=5)) == [DataSetFragment(5, b"z", True)]
    assert not a.in_message
    assert a.receive(cmd(ECHO_BYTES)) == [CommandReceived(1, ECHO)]


def test_messages_back_to_back_on_different_contexts():
    a = MessageAssembler(accepted_context_ids=(1, 3))
    events = feed(a, cmd(STORE_BYTES, ctx=3), data(b"x", True, ctx=3), cmd(ECHO_BYTES, ctx=1))
    assert events == [CommandReceived(3, STORE), DataSetFragment(3, b"x", True), CommandReceived(1, ECHO)]


@pytest.mark.parametrize(
    ("pdvs", "reason", "why"),
    [
        ([data(b"x")], UNEXPECTED, "no command"),
        ([data(b"x", last=True)], UNEXPECTED, "no command"),
        ([cmd(ECHO_BYTES), data(b"x", last=True)], UNEXPECTED, "no command announcing a data set"),
        ([cmd(STORE_BYTES[:5], last=False), data(b"x")], UNEXPECTED, "before its command set was complete"),
        ([cmd(STORE_BYTES), cmd(ECHO_BYTES)], UNEXPECTED, "while a data set is in progress"),
        ([cmd(STORE_BYTES), data(b"x"), cmd(ECHO_BYTES)], UNEXPECTED, "while a data set is in progress"),
        ([cmd(STORE_BYTES), data(b"x", ctx=3)], UNEXPECTED, "during a data set on context 1"),
        ([cmd(STORE_BYTES[:5], last=False), cmd(STORE_BYTES[5:], ctx=3)], UNEXPECTED, "during a command"),
        ([cmd(ECHO_BYTES[:-1])], INVALID, "runs past"),
        ([cmd(b"")], INVALID, "no Command Field"),
        ([cmd(ECHO_BYTES, ctx=7)], INVALID, "not accepted"),
        ([cmd(STORE_BYTES), data(b"x", ctx=7)], INVALID, "not accepted"),
    ],
)
def test_protocol_violations(pdvs, reason, why):
    a = MessageAssembler(accepted_context_ids=frozenset({1, 3}))
    with pytest.raises(RemoteProtocolError, match=why) as info:
        feed(a, *pdvs)
    assert info.value.reason is reason


def test_any_context_without_an_accepted_list():
    assert MessageAssembler().receive(cmd(ECHO_BYTES, ctx=255)) == [CommandReceived(255, ECHO)]


def test_command_length_cap():
    a = MessageAssembler(max_command_length=len(STORE_BYTES))
    assert a.receive(cmd(STORE_BYTES)) == [CommandReceived(1, STORE)]
    with pytest.raises(RemoteProtocolError, match="longer than 10") as info:
        MessageAssembler(max_command_length=10).receive(cmd(ECHO_BYTES))
    assert info.value.reason is INVALID
    small = MessageAssembler(max_command_length=20)
    small.receive(cmd(ECHO_BYTES[:20], last=False))
    with pytest.raises(RemoteProtocolError, match="longer than 20"):
        small.receive(cmd(ECHO_BYTES[20:21], last=False))


def test_default_cap_is_64_kib():
    a = MessageAssembler()
    a.receive(cmd(b"\x00" * 65536, last=False))
    with pytest.raises(RemoteProtocolError, match="longer than 65536"):
        a.receive(cmd(b"\x00", last=False))


# ---------------------------------------------------------------- properties

_messages = st.lists(
    st.tuples(
        st.sampled_from(list(SAMPLES.values())),
        st.binary(max_size=300),
        st.sampled_from([1, 3, 5]),
        st.sampled_from([7, 16, 50, 0]),
    ),
    max_size=6,
)


@given(_messages)
def test_fragmented_messages_come_back_whole(messages):
    a = MessageAssembler()
    expected = []
    events = []
    for command, payload, ctx, max_pdu in messages:
        dataset = payload if command.has_dataset else None
        expected.append((ctx, command, dataset))
        for raw in fragment(ctx, encode_command(command), dataset, max_pdu):
            events += a.receive(decode_bytes(raw).pdvs[0])
    rebuilt = []
    for event in events:
        if isinstance(event, CommandReceived):
            rebuilt.append([event.context_id, event.command, None])
        else:
            assert event.context_id == rebuilt[-1][0]
            rebuilt[-1][2] = (rebuilt[-1][2] or b"") + event.data
    assert [tuple(r) for r in rebuilt] == expected
    assert not a.in_message


_pdv = st.builds(
    PDV,
    context_id=st.sampled_from([1, 3, 9]),
    is_command=st.booleans(),
    is_last=st.booleans(),
    data=st.one_of(
        st.binary(max_size=40),
        st.sampled_from([ECHO_BYTES, STORE_BYTES]),
        st.sampled_from([ECHO_BYTES, STORE_BYTES]).flatmap(
            lambda b: st.integers(0, len(b)).map(lambda i: b[:i] if i % 2 else b[i:])
        ),
    ),
)


@given(st.lists(_pdv, max_size=30), st.booleans())
def test_any_pdv_sequence_gives_events_or_remote_protocol_error(pdvs, restrict):
    a = MessageAssembler(max_command_length=200, accepted_context_ids={1, 3} if restrict else None)
    open_data_set = None  # context of the data set in progress
    for pdv in pdvs:
        try:
            events = a.receive(pdv)
        except RemoteProtocolError as exc:
            assert exc.reason in (UNEXPECTED, INVALID)
            return
        for event in events:
            if isinstance(event, CommandReceived):
                assert open_data_set is None
                if event.command.has_dataset:
                    open_data_set = event.context_id
            else:
                assert isinstance(event, DataSetFragment)
                assert event.context_id == open_data_set
                if event.is_last:
                    open_data_set = None
        assert a.in_message == (open_data_set is not None or (pdv.is_command and not pdv.is_last))
