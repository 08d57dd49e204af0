"""PS3.7 Annex E command dictionary and the Implicit VR Little Endian command set codec (PS3.7 6.3.1)."""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

from pacsnode.ul.errors import AbortReason, RemoteProtocolError


class CommandField(enum.IntEnum):
    """PS3.7 E.1 Command Field (0000,0100) values; a response is its request | 0x8000."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF

    @property
    def is_request(self) -> bool:
        """True for the -RQ messages (C-CANCEL-RQ included)."""
        return not self & 0x8000

    @property
    def is_response(self) -> bool:
        """True for the -RSP messages."""
        return bool(self & 0x8000)

    @property
    def response_field(self) -> CommandField:
        """The Command Field of the response to this request; C-CANCEL-RQ has none."""
        if self & 0x8000 or self == CommandField.C_CANCEL_RQ:
            raise ValueError(f"{self.message_name} has no response")
        return CommandField(self | 0x8000)

    @property
    def message_name(self) -> str:
        """The name the standard uses, e.g. ``'C-STORE-RQ'``."""
        return self.name.replace("_", "-")


class Priority(enum.IntEnum):
    """PS3.7 E.1 Priority (0000,0700)."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


NO_DATA_SET = 0x0101  # PS3.7 E.1: Command Data Set Type value meaning "no data set present"
DATA_SET_PRESENT = 0x0000  # PS3.7 E.1: any other value means a data set follows


class CommandTag(enum.IntEnum):
    """PS3.7 Table E.1-1: the tags of the command elements, named by their keywords."""

    CommandGroupLength = 0x00000000
    AffectedSOPClassUID = 0x00000002
    RequestedSOPClassUID = 0x00000003
    CommandField = 0x00000100
    MessageID = 0x00000110
    MessageIDBeingRespondedTo = 0x00000120
    MoveDestination = 0x00000600
    Priority = 0x00000700
    CommandDataSetType = 0x00000800
    Status = 0x00000900
    OffendingElement = 0x00000901
    ErrorComment = 0x00000902
    ErrorID = 0x00000903
    AffectedSOPInstanceUID = 0x00001000
    RequestedSOPInstanceUID = 0x00001001
    EventTypeID = 0x00001002
    AttributeIdentifierList = 0x00001005
    ActionTypeID = 0x00001008
    NumberOfRemainingSuboperations = 0x00001020
    NumberOfCompletedSuboperations = 0x00001021
    NumberOfFailedSuboperations = 0x00001022
    NumberOfWarningSuboperations = 0x00001023
    MoveOriginatorApplicationEntityTitle = 0x00001030
    MoveOriginatorMessageID = 0x00001031


@dataclass(frozen=True, slots=True)
class CommandElement:
    """One row of PS3.7 Table E.1-1: tag, keyword, VR and the `Command` attribute holding it."""

    tag: CommandTag
    vr: str
    attribute: str

    @property
    def keyword(self) -> str:
        return self.tag.name


# PS3.7 Table E.1-1, in ascending tag order (PS3.5 7.1). The single source of the codec below.
COMMAND_ELEMENTS: tuple[CommandElement, ...] = (
    CommandElement(CommandTag.CommandGroupLength, "UL", "command_group_length"),
    CommandElement(CommandTag.AffectedSOPClassUID, "UI", "affected_sop_class_uid"),
    CommandElement(CommandTag.RequestedSOPClassUID, "UI", "requested_sop_class_uid"),
    CommandElement(CommandTag.CommandField, "US", "command_field"),
    CommandElement(CommandTag.MessageID, "US", "message_id"),
    CommandElement(CommandTag.MessageIDBeingRespondedTo, "US", "message_id_being_responded_to"),
    CommandElement(CommandTag.MoveDestination, "AE", "move_destination"),
    CommandElement(CommandTag.Priority, "US", "priority"),
    CommandElement(CommandTag.CommandDataSetType, "US", "has_dataset"),
    CommandElement(CommandTag.Status, "US", "status"),
    CommandElement(CommandTag.OffendingElement, "AT", "offending_element"),
    CommandElement(CommandTag.ErrorComment, "LO", "error_comment"),
    CommandElement(CommandTag.ErrorID, "US", "error_id"),
    CommandElement(CommandTag.AffectedSOPInstanceUID, "UI", "affected_sop_instance_uid"),
    CommandElement(CommandTag.RequestedSOPInstanceUID, "UI", "requested_sop_instance_uid"),
    CommandElement(CommandTag.EventTypeID, "US", "event_type_id"),
    CommandElement(CommandTag.AttributeIdentifierList, "AT", "attribute_identifier_list"),
    CommandElement(CommandTag.ActionTypeID, "US", "action_type_id"),
    CommandElement(CommandTag.NumberOfRemainingSuboperations, "US", "number_of_remaining_suboperations"),
    CommandElement(CommandTag.NumberOfCompletedSuboperations, "US", "number_of_completed_suboperations"),
    CommandElement(CommandTag.NumberOfFailedSuboperations, "US", "number_of_failed_suboperations"),
    CommandElement(CommandTag.NumberOfWarningSuboperations, "US", "number_of_warning_suboperations"),
    CommandElement(
        CommandTag.MoveOriginatorApplicationEntityTitle, "AE", "move_originator_application_entity_title"
    ),
    CommandElement(CommandTag.MoveOriginatorMessageID, "US", "move_originator_message_id"),
)
VR: dict[int, str] = {e.tag: e.vr for e in COMMAND_ELEMENTS}
_SHOWN = tuple(e for e in COMMAND_ELEMENTS if e.attribute not in ("command_group_length", "command_field"))


@dataclass(slots=True, repr=False)
class Command:
    """A DIMSE command set (PS3.7 6.3, E.1): every field of Table E.1-1, None when absent.

    ``has_dataset`` is Command Data Set Type (0000,0800) != 0101H. ``extra`` keeps
    any other group 0000 element (retired ones of PS3.7 Annex E.2, unknown ones) as
    raw value bytes keyed by tag. ``command_group_length`` is only what a decoded
    command set claimed; `encode_command` always computes its own.
    """

    command_field: int
    message_id: int | None = None
    message_id_being_responded_to: int | None = None
    affected_sop_class_uid: str | None = None
    requested_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    move_destination: str | None = None
    priority: int | None = None
    status: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    event_type_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    action_type_id: int | None = None
    number_of_remaining_suboperations: int | None = None
    number_of_completed_suboperations: int | None = None
    number_of_failed_suboperations: int | None = None
    number_of_warning_suboperations: int | None = None
    move_originator_application_entity_title: str | None = None
    move_originator_message_id: int | None = None
    has_dataset: bool = False
    extra: dict[int, bytes] = field(default_factory=dict)
    command_group_length: int | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        """Only the fields that are set, so that log lines stay readable."""
        shown = [repr(self.command_field)]
        shown += [f"{e.attribute}={v!r}" for e in _SHOWN if (v := getattr(self, e.attribute)) is not None]
        if self.extra:
            shown.append(f"extra={self.extra!r}")
        return f"Command({', '.join(shown)})"


# ---------------------------------------------------------------- encoding

# PS3.5 7.1.2: Implicit VR LE element = tag (group, element: two LE uint16) + uint32 length + value.
# The group is 0000, so the tag read as one LE uint32 is element << 16.
_HEADER = struct.Struct("<II")
_US_ELEMENT = struct.Struct("<IIH")
_UL_ELEMENT = struct.Struct("<III")
_AT_VALUE = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

_Encoder = Callable[[int, Any], bytes]


def _encode_us(key: int, value: int) -> bytes:
    return _US_ELEMENT.pack(key, 2, value)


def _encode_dataset_type(key: int, has_dataset: bool) -> bytes:
    return _US_ELEMENT.pack(key, 2, DATA_SET_PRESENT if has_dataset else NO_DATA_SET)  # PS3.7 E.1


def _encode_ui(key: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) & 1:
        raw += b"\x00"  # PS3.5 6.2 UI / 9.1: padded with a single trailing NUL
    return _HEADER.pack(key, len(raw)) + raw


def _encode_ae(key: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE value longer than 16 characters: {value!r}")  # PS3.5 6.2 AE
    if len(raw) & 1:
        raw += b" "  # PS3.5 6.2: text values padded with a trailing space
    return _HEADER.pack(key, len(raw)) + raw


def _encode_lo(key: int, value: str) -> bytes:
    # PS3.7 6.3.1: the command set uses the default repertoire; PS3.5 6.2 LO: at most 64 characters.
    raw = value[:64].encode("ascii", "replace")
    if len(raw) & 1:
        raw += b" "
    return _HEADER.pack(key, len(raw)) + raw


def _encode_at(key: int, value: tuple[int, ...]) -> bytes:
    raw = b"".join(_AT_VALUE.pack(tag >> 16, tag & 0xFFFF) for tag in value)  # PS3.5 6.2 AT
    return _HEADER.pack(key, len(raw)) + raw


_ENCODE_BY_VR: dict[str, _Encoder] = {
    "US": _encode_us,
    "UI": _encode_ui,
    "AE": _encode_ae,
    "LO": _encode_lo,
    "AT": _encode_at,
}
_ENCODED = tuple(e for e in COMMAND_ELEMENTS if e.tag != CommandTag.CommandGroupLength)
_ENCODERS: tuple[tuple[int, int, _Encoder], ...] = tuple(
    (
        e.tag,
        e.tag << 16,
        _encode_dataset_type if e.tag == CommandTag.CommandDataSetType else _ENCODE_BY_VR[e.vr],
    )
    for e in _ENCODED
)
_GET_VALUES = attrgetter(*(e.attribute for e in _ENCODED))


def encode_command(cmd: Command) -> bytes:
    """Encode a command set as Implicit VR Little Endian (PS3.7 6.3.1), group length first."""
    values = _GET_VALUES(cmd)
    if not cmd.extra:
        body = b"".join(
            [enc(key, v) for (_, key, enc), v in zip(_ENCODERS, values, strict=True) if v is not None]
        )
    else:
        elements = [
            (tag, enc(key, v)) for (tag, key, enc), v in zip(_ENCODERS, values, strict=True) if v is not None
        ]
        for tag, raw in cmd.extra.items():
            if tag > 0xFFFF or tag in VR:
                raise ValueError(f"extra element {tag:08X} is not an unknown group 0000 element")
            elements.append((tag, _HEADER.pack(tag << 16, len(raw)) + raw))
        elements.sort(key=itemgetter(0))  # PS3.5 7.1: ascending tag order
        body = b"".join([raw for _, raw in elements])
    # PS3.7 E.1: (0000,0000) Command Group Length = bytes after its own element.
    return _UL_ELEMENT.pack(0, 4, len(body)) + body


# ---------------------------------------------------------------- decoding

_Decoder = Callable[[bytes, int, int, int], Any]


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, AbortReason.INVALID_PDU_PARAMETER_VALUE)


def _name(tag: int) -> str:
    try:
        return f"(0000,{tag:04X}) {CommandTag(tag).name}"
    except ValueError:
        return f"(0000,{tag:04X})"


def _decode_us(data: bytes, pos: int, length: int, tag: int) -> int:
    # Command elements have VM 1, but some peers send a second value (pynetdicom#554): like DCMTK,
    # take the first. An empty or odd-length value cannot be read.
    if not length or length & 1:
        raise _invalid(f"command set: {_name(tag)} is US but has value length {length}")
    value: int = _U16.unpack_from(data, pos)[0]
    return value


def _decode_ul(data: bytes, pos: int, length: int, tag: int) -> int:
    if not length or length & 3:
        raise _invalid(f"command set: {_name(tag)} is UL but has value length {length}")
    value: int = _U32.unpack_from(data, pos)[0]
    return value


def _decode_ui(data: bytes, pos: int, length: int, tag: int) -> str:
    raw = data[pos : pos + length]
    if not raw.isascii():
        raise _invalid(f"command set: {_name(tag)} holds non-ASCII bytes")  # PS3.5 9.1
    return raw.decode("ascii").rstrip("\x00 ")  # PS3.5 9.1: trailing NUL padding (some peers use space)


def _decode_text(data: bytes, pos: int, length: int, tag: int) -> str:
    # PS3.5 6.2 AE, LO: leading and trailing spaces are not significant. Latin-1 never fails.
    return data[pos : pos + length].decode("latin-1").strip(" \x00")


def _decode_at(data: bytes, pos: int, length: int, tag: int) -> tuple[int, ...]:
    if length % 4:
        raise _invalid(f"command set: {_name(tag)} is AT but has value length {length}, not a multiple of 4")
    words = struct.unpack_from(f"<{length // 2}H", data, pos)  # PS3.5 6.2 AT: group then element
    return tuple(group << 16 | element for group, element in zip(words[::2], words[1::2], strict=True))


_DECODE_BY_VR: dict[str, _Decoder] = {
    "US": _decode_us,
    "UL": _decode_ul,
    "UI": _decode_ui,
    "AE": _decode_text,
    "LO": _decode_text,
    "AT": _decode_at,
}
_DECODERS: dict[int, tuple[str, _Decoder]] = {
    e.tag: (e.attribute, _DECODE_BY_VR[e.vr]) for e in COMMAND_ELEMENTS
}
_COMMAND_FIELDS: dict[int, CommandField] = {int(f): f for f in CommandField}


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode an Implicit VR Little Endian command set (PS3.7 6.3.1).

    The Command Group Length is recorded, not trusted. Anything malformed raises
    `RemoteProtocolError` (INVALID_PDU_PARAMETER_VALUE) and nothing else does.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    end = len(data)
    pos = 0
    previous = -1
    values: dict[str, Any] = {}
    extra: dict[int, bytes] = {}
    unpack_header = _HEADER.unpack_from
    decoders = _DECODERS
    while pos < end:
        if end - pos < 8:
            raise _invalid(f"command set: {end - pos} trailing byte(s), too short for an element header")
        key, length = unpack_header(data, pos)
        if key & 0xFFFF:
            # PS3.7 6.3.1: a command set holds group 0000 elements only.
            raise _invalid(f"command set: element ({key & 0xFFFF:04X},{key >> 16:04X}) is not in group 0000")
        tag = key >> 16
        if tag <= previous:
            raise _invalid(f"command set: {_name(tag)} out of ascending tag order")  # PS3.5 7.1
        previous = tag
        pos += 8
        if length > end - pos:
            raise _invalid(
                f"command set: {_name(tag)} length {length} runs past the {end - pos} byte(s) left"
            )
        spec = decoders.get(tag)
        if spec is None:
            extra[tag] = data[pos : pos + length]  # PS3.7 E.2 retired, or unknown: kept raw
        else:
            values[spec[0]] = spec[1](data, pos, length, tag)
        pos += length
    command_field = values.pop("command_field", None)
    if command_field is None:
        raise _invalid("command set has no Command Field (0000,0100)")  # PS3.7 E.1: required
    dataset_type = values.pop("has_dataset", None)
    if dataset_type is None:
        # PS3.7 E.1: required in every command; without it the message cannot be delimited.
        raise _invalid("command set has no Command Data Set Type (0000,0800)")
    return Command(
        _COMMAND_FIELDS.get(command_field, command_field),
        has_dataset=dataset_type != NO_DATA_SET,  # PS3.7 E.1
        extra=extra,
        **values,
    )
