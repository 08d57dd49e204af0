"""Byte compatibility of our PS3.7 command sets with pydicom's reader and pynetdicom, every message."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from io import BytesIO

import pytest
from dimse_samples import FIXTURES, SAMPLES
from pydicom.filereader import read_dataset
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.pdu_primitives import P_DATA

from pacsnode.dimse.assembler import CommandReceived, DataSetFragment, MessageAssembler
from pacsnode.dimse.commands import COMMAND_ELEMENTS, Command, CommandField, decode_command, encode_command
from pacsnode.dimse.fragmentation import encode_message
from pacsnode.ul.pdu import PDV, PDataTF, PDUReader

FIELDS = list(CommandField)
DATASET = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " * 40  # (0008,0052) CS "STUDY ", 40 times

# pynetdicom's primitive attribute holding the data set of each message that can carry one.
_DATASET_ATTRIBUTE = {
    "C_STORE_RQ": "DataSet",
    "C_FIND_RQ": "Identifier",
    "C_FIND_RSP": "Identifier",
    "C_GET_RQ": "Identifier",
    "C_GET_RSP": "Identifier",
    "C_MOVE_RQ": "Identifier",
    "C_MOVE_RSP": "Identifier",
    "N_EVENT_REPORT_RQ": "EventInformation",
    "N_EVENT_REPORT_RSP": "EventReply",
    "N_GET_RSP": "AttributeList",
    "N_SET_RQ": "ModificationList",
    "N_SET_RSP": "AttributeList",
    "N_ACTION_RQ": "ActionInformation",
    "N_ACTION_RSP": "ActionReply",
    "N_CREATE_RQ": "AttributeList",
    "N_CREATE_RSP": "AttributeList",
}


def _set_fields(cmd: Command) -> list[tuple[str, object]]:
    """(keyword, value) of every element set in `cmd`, command field and data set type aside."""
    skip = {"command_group_length", "command_field", "has_dataset"}
    return [
        (e.keyword, getattr(cmd, e.attribute))
        for e in COMMAND_ELEMENTS
        if e.attribute not in skip and getattr(cmd, e.attribute) is not None
    ]


def _same(theirs, ours) -> bool:
    if isinstance(ours, str):
        return str(theirs).strip() == ours
    if isinstance(ours, tuple):
        # AT with VM 1-n: pydicom and pynetdicom give a single value when VM is 1.
        values = theirs if isinstance(theirs, Sequence) else [theirs]
        return tuple(int(v) for v in values) == ours
    return int(theirs) == ours


def _pynetdicom_fragments(cmd: Command, max_pdu: int) -> list[tuple[int, bytes]]:
    """Have pynetdicom build and fragment the message: [(context ID, control header + data)]."""
    name = CommandField(cmd.command_field).name
    primitive = getattr(dimse_primitives, name.rsplit("_", 1)[0])()
    for keyword, value in _set_fields(cmd):
        setattr(primitive, keyword, list(value) if isinstance(value, tuple) else value)
    if cmd.has_dataset:
        setattr(primitive, _DATASET_ATTRIBUTE[name], BytesIO(DATASET))
    message = getattr(dimse_messages, name)()
    message.primitive_to_message(primitive)
    return [pdv for p_data in message.encode_msg(1, max_pdu) for pdv in p_data.presentation_data_value_list]


def _our_pdvs(cmd: Command, max_pdu: int) -> list[PDV]:
    reader = PDUReader(max_pdata_length=max_pdu)
    reader.feed(encode_message(1, cmd, DATASET if cmd.has_dataset else None, max_pdu))
    pdvs = []
    while (pdu := reader.next_pdu()) is not None:
        assert isinstance(pdu, PDataTF)
        pdvs.extend(pdu.pdvs)
    assert reader.buffered == 0
    return pdvs


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.message_name)
def test_pydicom_reads_our_command_set(field):
    cmd = SAMPLES[field]
    wire = encode_command(cmd)
    ds = read_dataset(BytesIO(wire), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(wire) - 12
    assert ds.CommandField == cmd.command_field
    assert ds.CommandDataSetType == (0x0000 if cmd.has_dataset else 0x0101)
    expected = dict(_set_fields(cmd))
    assert {e.keyword for e in ds} - {"CommandGroupLength", "CommandField", "CommandDataSetType"} == set(
        expected
    )
    for keyword, value in expected.items():
        assert _same(ds[keyword].value, value), keyword


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.message_name)
def test_pynetdicom_command_set_is_byte_identical_to_ours(field):
    cmd = SAMPLES[field]
    fragments = _pynetdicom_fragments(cmd, 0)
    theirs = b"".join(data[1:] for _, data in fragments if data[0] & 1)
    if cmd.has_dataset:
        # PS3.7 E.1: any value but 0101H means "data set follows"; pynetdicom sends 0001H, we 0000H.
        present = struct.pack("<HHIH", 0, 0x0800, 2, 0x0001)
        assert theirs.count(present) == 1
        theirs = theirs.replace(present, struct.pack("<HHIH", 0, 0x0800, 2, 0x0000))
    assert theirs == encode_command(cmd)


@pytest.mark.parametrize("max_pdu", [0, 16, 64, 16384])
@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.message_name)
def test_we_reassemble_pynetdicom_fragments(field, max_pdu):
    cmd = SAMPLES[field]
    assembler = MessageAssembler(accepted_context_ids={1})
    events = []
    for context_id, data in _pynetdicom_fragments(cmd, max_pdu):
        header = data[0]
        events += assembler.receive(PDV(context_id, bool(header & 1), bool(header & 2), data[1:]))
    assert isinstance(events[0], CommandReceived)
    assert events[0].command == cmd
    fragments = events[1:]
    assert all(isinstance(e, DataSetFragment) for e in fragments)
    assert b"".join(e.data for e in fragments) == (DATASET if cmd.has_dataset else b"")
    assert [e.is_last for e in fragments] == [False] * (len(fragments) - 1) + [True] * cmd.has_dataset
    assert not assembler.in_message


@pytest.mark.parametrize("max_pdu", [0, 16, 64, 16384])
@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.message_name)
def test_pynetdicom_reassembles_our_fragments(field, max_pdu):
    cmd = SAMPLES[field]
    message = dimse_messages.DIMSEMessage()
    done = []
    for pdv in _our_pdvs(cmd, max_pdu):
        p_data = P_DATA()
        p_data.presentation_data_value_list = [[pdv.context_id, bytes([pdv.control_header]) + pdv.data]]
        done.append(message.decode_msg(p_data))
    assert done[-1] and not any(done[:-1])
    assert type(message).__name__ == CommandField(cmd.command_field).name
    primitive = message.message_to_primitive()
    for keyword, value in _set_fields(cmd):
        assert _same(getattr(primitive, keyword), value), keyword
    if cmd.has_dataset:
        assert getattr(primitive, _DATASET_ATTRIBUTE[type(message).__name__]).getvalue() == DATASET


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.message_name)
def test_decode_pynetdicom_command_set(field):
    cmd = SAMPLES[field]
    wire = b"".join(data[1:] for _, data in _pynetdicom_fragments(cmd, 0) if data[0] & 1)
    decoded = decode_command(wire)
    assert decoded == cmd
    assert decoded.command_group_length == len(wire) - 12


def _pynetdicom_test_vectors() -> list[tuple[str, bytes]]:
    """The command-set PDVs in pynetdicom's own test data (control header byte first)."""
    from pynetdicom.tests import encoded_dimse_msg, encoded_dimse_n_msg

    return [
        (f"{module.__name__.rsplit('.', 1)[1]}.{name}", value)
        for module in (encoded_dimse_msg, encoded_dimse_n_msg)
        for name, value in vars(module).items()
        if isinstance(value, bytes) and value[:1] == b"\x03"
    ]


_VECTORS = _pynetdicom_test_vectors()


@pytest.mark.parametrize(("name", "pdv"), _VECTORS, ids=[name for name, _ in _VECTORS])
def test_decode_pynetdicom_test_vectors(name, pdv):
    wire = pdv[1:]
    cmd = decode_command(wire)
    ds = read_dataset(BytesIO(wire), is_implicit_VR=True, is_little_endian=True)
    assert cmd.command_field == ds.CommandField
    assert cmd.has_dataset == (ds.CommandDataSetType != 0x0101)
    for element in COMMAND_ELEMENTS:
        if element.keyword not in ds or element.attribute in ("has_dataset", "command_group_length"):
            continue
        theirs = ds[element.keyword].value
        if element.vr == "US" and isinstance(theirs, Sequence):
            theirs = theirs[0]  # VM > 1 where the standard says 1: the first value counts
        assert _same(theirs, getattr(cmd, element.attribute)), (name, element.keyword)
    if "with_dup" in name:
        return  # its second US values are not ours to send again
    header = struct.pack("<HHI", 0, 0x0800, 2)
    at = wire.index(header) + len(header)
    ours = wire[:at] + (b"\x00\x00" if cmd.has_dataset else b"\x01\x01") + wire[at + 2 :]
    assert encode_command(cmd) == ours


def test_pynetdicom_test_vectors_are_there():
    assert len(_VECTORS) >= 20


@pytest.mark.parametrize(("cmd", "wire"), FIXTURES)
def test_pynetdicom_encodes_the_annotated_fixtures(cmd, wire):
    theirs = b"".join(data[1:] for _, data in _pynetdicom_fragments(cmd, 0) if data[0] & 1)
    present = struct.pack("<HHIH", 0, 0x0800, 2, 0x0001)
    assert theirs.replace(present, struct.pack("<HHIH", 0, 0x0800, 2, 0x0000)) == wire
