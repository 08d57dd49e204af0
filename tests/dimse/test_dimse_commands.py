"""PS3.7 6.3.1 and Annex E: the command set codec against hand-written bytes, round trips and bad input."""

from __future__ import annotations

import struct

import pytest
from dimse_samples import ECHO_RQ, FIXTURES, SAMPLES
from hypothesis import given
from hypothesis import strategies as st

from pacsnode.dimse.commands import (
    COMMAND_ELEMENTS,
    Command,
    CommandField,
    CommandTag,
    Priority,
    decode_command,
    encode_command,
)
from pacsnode.ul.errors import AbortReason, RemoteProtocolError


@pytest.mark.parametrize(("command", "wire"), FIXTURES)
def test_annotated_fixtures(command, wire):
    assert encode_command(command) == wire
    decoded = decode_command(wire)
    assert decoded == command
    assert decoded.command_group_length == len(wire) - 12
    assert type(decoded.command_field) is CommandField


@pytest.mark.parametrize("field", list(CommandField), ids=lambda f: f.message_name)
def test_round_trip_every_command_field(field):
    cmd = SAMPLES[field]
    wire = encode_command(cmd)
    assert decode_command(wire) == cmd
    assert decode_command(memoryview(wire)) == cmd
    assert decode_command(bytearray(wire)) == cmd
    assert encode_command(decode_command(wire)) == wire


def test_every_field_round_trips():
    cmd = Command(
        0x0FFF,
        message_id=0xFFFF,
        message_id_being_responded_to=0,
        affected_sop_class_uid="1.2",
        requested_sop_class_uid="1.23",
        affected_sop_instance_uid="",
        requested_sop_instance_uid="9" * 64,
        move_destination="A" * 16,
        priority=Priority.LOW,
        status=0xC001,
        offending_element=(0xFFFFFFFF, 0),
        error_comment="odd",
        error_id=9,
        event_type_id=2,
        attribute_identifier_list=(),
        action_type_id=3,
        number_of_remaining_suboperations=1,
        number_of_completed_suboperations=2,
        number_of_failed_suboperations=3,
        number_of_warning_suboperations=4,
        move_originator_application_entity_title="B",
        move_originator_message_id=5,
        has_dataset=True,
        extra={0x0001: b"\x10\x00\x00\x00", 0x5010: b"SETID "},
    )
    wire = encode_command(cmd)
    assert decode_command(wire) == cmd
    tags = []
    pos = 0
    while pos < len(wire):
        group, element, length = struct.unpack_from("<HHI", wire, pos)
        assert group == 0 and length % 2 == 0
        tags.append(element)
        pos += 8 + length
    assert tags == sorted(tags)  # PS3.5 7.1
    assert len(tags) == len(COMMAND_ELEMENTS) + 2


def test_padding_and_stripping():
    cmd = Command(1, affected_sop_class_uid="1.2.3", move_destination="ABC", error_comment="x")
    wire = encode_command(cmd)
    assert b"1.2.3\x00" in wire
    assert b"ABC " in wire
    assert b"x " in wire
    back = decode_command(wire)
    assert (back.affected_sop_class_uid, back.move_destination, back.error_comment) == ("1.2.3", "ABC", "x")


def test_dataset_type_values():
    present = decode_command(encode_command(Command(1, has_dataset=True)))
    assert present.has_dataset
    assert b"\x00\x00\x00\x08\x02\x00\x00\x00\x00\x00" in encode_command(Command(1, has_dataset=True))
    assert b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01" in encode_command(Command(1))
    # PS3.7 E.1: any value other than 0101H means a data set follows (pynetdicom sends 0001H).
    for value in (0x0001, 0x0102, 0xFFFF):
        wire = _elements((0x0100, struct.pack("<H", 1)), (0x0800, struct.pack("<H", value)))
        assert decode_command(wire).has_dataset


def test_long_error_comment_is_cut_to_lo_length_and_made_ascii():
    wire = encode_command(Command(0x8001, status=0x0110, error_comment="é" + "x" * 100))
    assert decode_command(wire).error_comment == "?" + "x" * 63


def test_encode_rejects_local_mistakes():
    with pytest.raises(ValueError):
        encode_command(Command(1, move_destination="A" * 17))
    with pytest.raises(UnicodeEncodeError):
        encode_command(Command(1, affected_sop_class_uid="1.2.é"))
    with pytest.raises(ValueError):
        encode_command(Command(1, extra={0x0100: b"\x01\x00"}))
    with pytest.raises(ValueError):
        encode_command(Command(1, extra={0x00080016: b""}))


def _elements(*items: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack("<HHI", 0, element, len(value)) + value for element, value in items)


_FIELD = (0x0100, b"\x30\x00")
_NO_DATA = (0x0800, b"\x01\x01")


def test_group_length_missing_or_wrong_is_tolerated():
    assert decode_command(_elements(_FIELD, _NO_DATA)).command_group_length is None
    wrong = _elements((0x0000, struct.pack("<I", 999)), _FIELD, _NO_DATA)
    assert decode_command(wrong).command_group_length == 999


def test_unknown_and_retired_elements_are_kept_raw():
    cmd = decode_command(_elements((0x0001, b"\x00\x01\x00\x00"), _FIELD, (0x0200, b"AE  "), _NO_DATA))
    assert cmd.extra == {0x0001: b"\x00\x01\x00\x00", 0x0200: b"AE  "}
    assert cmd.command_field is CommandField.C_ECHO_RQ


def test_us_with_two_values_gives_the_first():
    # A PACS sends its sub-operation counts twice (pynetdicom#554); DCMTK reads the first value.
    cmd = decode_command(_elements((0x0100, b"\x21\x80\x00\x00"), _NO_DATA, (0x1020, b"\x03\x00\x07\x00")))
    assert cmd.command_field is CommandField.C_MOVE_RSP
    assert cmd.number_of_remaining_suboperations == 3


def test_unknown_command_field_is_kept_as_int():
    cmd = decode_command(_elements((0x0100, b"\x40\x00"), _NO_DATA))
    assert cmd.command_field == 0x0040 and not isinstance(cmd.command_field, CommandField)


def test_text_decoding():
    cmd = decode_command(
        _elements(
            (0x0002, b"1.2.3 "),  # some peers pad UIDs with a space
            _FIELD,
            (0x0600, b"  DEST  "),  # AE: leading and trailing spaces not significant
            _NO_DATA,
            (0x0901, b""),
            (0x0902, b"caf\xe9"),  # not the default repertoire, but readable
        )
    )
    assert cmd.affected_sop_class_uid == "1.2.3"
    assert cmd.move_destination == "DEST"
    assert cmd.error_comment == "café"
    assert cmd.offending_element == ()


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"", "no Command Field"),
        (_elements(_NO_DATA), "no Command Field"),
        (_elements(_FIELD), "no Command Data Set Type"),
        (_elements(_FIELD, _NO_DATA)[:-1], "runs past"),
        (_elements(_FIELD, _NO_DATA) + b"\x00\x00\x00", "trailing"),
        (_elements(_FIELD, _NO_DATA) + b"\x00" * 7, "trailing"),
        (_elements(_FIELD, (0x0800, b"\x01")), "is US but has value length 1"),
        (_elements((0x0100, b"\x30\x00\x00"), _NO_DATA), "is US but has value length 3"),
        (_elements((0x0100, b""), _NO_DATA), "is US but has value length 0"),
        (_elements((0x0000, b"\x00\x00"), _FIELD, _NO_DATA), "is UL but has value length 2"),
        (_elements((0x0000, b"\x00" * 6), _FIELD, _NO_DATA), "is UL but has value length 6"),
        (_elements(_FIELD, _NO_DATA, (0x0901, b"\x10\x00")), "multiple of 4"),
        (_elements(_FIELD, _NO_DATA, (0x1005, b"\x10\x00\x10\x00\x20\x00")), "multiple of 4"),
        (_elements((0x0002, b"1.2.\xc3\xa9"), _FIELD, _NO_DATA), "non-ASCII"),
        (_elements(_FIELD, _NO_DATA) + struct.pack("<HHI", 8, 0x16, 0), "not in group 0000"),
        (_elements(_NO_DATA, _FIELD), "ascending"),
        (_elements(_FIELD, _FIELD, _NO_DATA), "ascending"),
        (struct.pack("<HHI", 0, 0x0100, 0xFFFFFFFF) + b"\x30\x00", "runs past"),  # undefined length
    ],
)
def test_malformed_raises_remote_protocol_error(wire, why):
    with pytest.raises(RemoteProtocolError, match=why) as info:
        decode_command(wire)
    assert info.value.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


@given(st.binary(max_size=200))
def test_any_bytes_give_a_command_or_remote_protocol_error(data):
    try:
        cmd = decode_command(data)
    except RemoteProtocolError:
        return
    assert isinstance(cmd, Command)


_element = st.tuples(
    st.sampled_from([int(t) for t in CommandTag] + [0x0001, 0x0850, 0x5010, 0x0800, 0x0100]),
    st.binary(max_size=12),
)


@given(st.lists(_element, max_size=12), st.booleans())
def test_element_shaped_bytes_give_a_command_or_remote_protocol_error(items, sort):
    if sort:
        items = sorted(items)
    try:
        cmd = decode_command(_elements(*items))
    except RemoteProtocolError:
        return
    texts = [v for v in (getattr(cmd, e.attribute) for e in COMMAND_ELEMENTS) if isinstance(v, str)]
    if all(t.isascii() for t in texts):  # we only ever send the default repertoire (PS3.7 6.3.1)
        assert decode_command(encode_command(cmd)) == cmd


def test_command_field_properties():
    F = CommandField
    assert F.C_STORE_RQ.is_request and not F.C_STORE_RQ.is_response
    assert F.C_STORE_RSP.is_response and not F.C_STORE_RSP.is_request
    assert F.C_CANCEL_RQ.is_request
    assert F.C_FIND_RQ.response_field is F.C_FIND_RSP
    assert F.N_DELETE_RQ.response_field is F.N_DELETE_RSP
    assert F.C_ECHO_RSP.message_name == "C-ECHO-RSP"
    assert F.N_EVENT_REPORT_RQ.message_name == "N-EVENT-REPORT-RQ"
    for field in F:
        if field.is_request and field is not F.C_CANCEL_RQ:
            assert field.response_field == field | 0x8000
    with pytest.raises(ValueError):
        _ = F.C_CANCEL_RQ.response_field
    with pytest.raises(ValueError):
        _ = F.C_ECHO_RSP.response_field


def test_command_field_values():
    F = CommandField
    expected = {
        F.C_STORE_RQ: 0x0001, F.C_GET_RQ: 0x0010, F.C_FIND_RQ: 0x0020, F.C_MOVE_RQ: 0x0021,
        F.C_ECHO_RQ: 0x0030, F.N_EVENT_REPORT_RQ: 0x0100, F.N_GET_RQ: 0x0110, F.N_SET_RQ: 0x0120,
        F.N_ACTION_RQ: 0x0130, F.N_CREATE_RQ: 0x0140, F.N_DELETE_RQ: 0x0150, F.C_CANCEL_RQ: 0x0FFF,
    }  # fmt: skip
    for field, value in expected.items():
        assert field == value
    assert (Priority.LOW, Priority.MEDIUM, Priority.HIGH) == (2, 0, 1)


def test_tags_and_vrs_agree_with_pydicom_dictionary():
    from pydicom.datadict import dictionary_keyword, dictionary_VR

    for element in COMMAND_ELEMENTS:
        assert dictionary_keyword(element.tag) == element.keyword
        assert dictionary_VR(element.tag) == element.vr


def test_repr_shows_only_set_fields():
    assert repr(ECHO_RQ) == (
        "Command(<CommandField.C_ECHO_RQ: 48>, affected_sop_class_uid='1.2.840.10008.1.1', "
        "message_id=1, has_dataset=False)"
    )
