"""PS3.8 E.2 / PS3.7 6.3.1: fragmentation into P-DATA-TF PDUs and reassembly of the fragments."""

from __future__ import annotations

import struct

import pytest
from dimse_samples import SAMPLES
from hypothesis import given
from hypothesis import strategies as st

from pacsnode.dimse.assembler import CommandReceived, DataSetFragment, MessageAssembler
from pacsnode.dimse.commands import CommandField, encode_command
from pacsnode.dimse.fragmentation import (
    UNLIMITED_PDU_CAP,
    encode_message,
    fragment,
    fragment_dataset_stream,
    fragment_size,
)
from pacsnode.ul.pdu import PDV, PDataTF, PDUType, decode_bytes

STORE = SAMPLES[CommandField.C_STORE_RQ]
COMMAND = encode_command(STORE)
DATASET = bytes(range(256)) * 13 + b"tail"  # 3332 bytes


def _check_pdu(raw: bytes, max_pdu: int) -> PDV:
    """One P-DATA-TF PDU holding one PDV, within the peer's maximum length (PS3.8 D.1)."""
    pdu_type, _, length = struct.unpack_from(">BBI", raw)
    assert pdu_type == PDUType.P_DATA_TF
    assert length == len(raw) - 6
    assert length <= (max_pdu or UNLIMITED_PDU_CAP)
    pdu = decode_bytes(raw)
    assert isinstance(pdu, PDataTF) and len(pdu.pdvs) == 1
    return pdu.pdvs[0]


def _split(pdvs: list[PDV]) -> tuple[list[PDV], list[PDV]]:
    commands = [p for p in pdvs if p.is_command]
    data = [p for p in pdvs if not p.is_command]
    assert pdvs == commands + data  # command fragments first
    return commands, data


def test_fragment_size():
    assert fragment_size(16) == 10
    assert fragment_size(7) == 1
    assert fragment_size(16384) == 16378
    assert fragment_size(0) == UNLIMITED_PDU_CAP - 6
    for bad in (6, 1, -1):
        with pytest.raises(ValueError):
            fragment_size(bad)


@pytest.mark.parametrize(
    "max_pdu",
    [7, 16, 17, 64, len(COMMAND) + 5, len(COMMAND) + 6, len(COMMAND) + 7, len(DATASET) + 6, 16384, 0],
)
def test_fragments_respect_max_pdu_and_reassemble(max_pdu):
    pdvs = [_check_pdu(raw, max_pdu) for raw in fragment(3, COMMAND, DATASET, max_pdu)]
    commands, data = _split(pdvs)
    size = fragment_size(max_pdu)
    for group, whole in ((commands, COMMAND), (data, DATASET)):
        assert b"".join(p.data for p in group) == whole
        assert [p.is_last for p in group] == [False] * (len(group) - 1) + [True]  # PS3.8 E.2
        assert all(len(p.data) == size for p in group[:-1])  # every fragment but the last is full
        assert 0 < len(group[-1].data) <= size
        assert len(group) == -(-len(whole) // size)
        assert {p.context_id for p in group} == {3}
    assembler = MessageAssembler(accepted_context_ids=[3])
    events = [event for pdv in pdvs for event in assembler.receive(pdv)]
    assert events[0] == CommandReceived(3, STORE)
    assert all(isinstance(e, DataSetFragment) for e in events[1:])
    assert b"".join(e.data for e in events[1:]) == DATASET
    assert len(events) == 1 + len(data)
    assert not assembler.in_message


def test_exact_boundary():
    one = list(fragment(1, COMMAND, None, len(COMMAND) + 6))
    assert len(one) == 1 and len(one[0]) == 6 + 6 + len(COMMAND)
    two = list(fragment(1, COMMAND, None, len(COMMAND) + 5))
    assert [len(_check_pdu(raw, len(COMMAND) + 5).data) for raw in two] == [len(COMMAND) - 1, 1]


def test_no_dataset_and_empty_dataset():
    assert [_check_pdu(raw, 0) for raw in fragment(1, COMMAND, None, 0)] == [PDV(1, True, True, COMMAND)]
    pdvs = [_check_pdu(raw, 0) for raw in fragment(1, COMMAND, b"", 0)]
    assert pdvs[-1] == PDV(1, False, True, b"")


def test_memoryview_dataset():
    view = memoryview(b"xx" + DATASET)[2:]
    assert list(fragment(1, COMMAND, view, 100)) == list(fragment(1, COMMAND, DATASET, 100))


def _stream(chunks: list[bytes], max_pdu: int) -> list[bytes]:
    return list(fragment_dataset_stream(5, iter(chunks), max_pdu))


def _data_pdus(data: bytes, max_pdu: int) -> list[bytes]:
    return [raw for raw in fragment(5, COMMAND, data, max_pdu) if not decode_bytes(raw).pdvs[0].is_command]


@pytest.mark.parametrize("max_pdu", [7, 16, 100, len(DATASET) + 6, 0])
@pytest.mark.parametrize("chunk", [1, 9, 10, 11, 1000, len(DATASET)])
def test_stream_matches_whole_fragmentation(max_pdu, chunk):
    chunks = [DATASET[i : i + chunk] for i in range(0, len(DATASET), chunk)]
    assert _stream(chunks, max_pdu) == _data_pdus(DATASET, max_pdu)


@given(st.lists(st.binary(max_size=40), max_size=20), st.integers(min_value=7, max_value=60))
def test_stream_matches_whole_fragmentation_for_any_chunks(chunks, max_pdu):
    assert _stream(chunks, max_pdu) == _data_pdus(b"".join(chunks), max_pdu)


def test_stream_of_nothing_is_one_empty_last_fragment():
    assert [_check_pdu(raw, 16) for raw in _stream([], 16)] == [PDV(5, False, True, b"")]
    assert [_check_pdu(raw, 16) for raw in _stream([b"", b""], 16)] == [PDV(5, False, True, b"")]


def test_stream_is_lazy():
    consumed = []

    def chunks():
        for i in range(1000):
            consumed.append(i)
            yield b"x" * 100

    stream = fragment_dataset_stream(1, chunks(), 16 + 6)
    first = next(stream)
    assert _check_pdu(first, 22) == PDV(1, False, False, b"x" * 16)
    assert len(consumed) == 1  # a PDU leaves as soon as more data is known to follow it
    rest = list(stream)
    assert len(consumed) == 1000
    assert sum(len(_check_pdu(raw, 22).data) for raw in [first, *rest]) == 100_000


@pytest.mark.parametrize("max_pdu", [0, 16, 100, 16384])
def test_encode_message_joins_the_fragments(max_pdu):
    echo = SAMPLES[CommandField.C_ECHO_RQ]
    assert encode_message(1, echo, None, max_pdu) == b"".join(
        fragment(1, encode_command(echo), None, max_pdu)
    )
    assert encode_message(1, STORE, DATASET, max_pdu) == b"".join(fragment(1, COMMAND, DATASET, max_pdu))


def test_encode_message_checks_the_data_set_type():
    with pytest.raises(ValueError):
        encode_message(1, STORE, None, 0)
    with pytest.raises(ValueError):
        encode_message(1, SAMPLES[CommandField.C_ECHO_RQ], b"", 0)
