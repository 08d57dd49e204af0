"""Reading an HL7 v2 message with `hl7` (HL7 v2.5.1 chapter 2: MSH, encoding rules, Table 0211 charsets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hl7

# HL7 v2.5.1 Table 0357, Message error condition codes.
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION_ID = 203
UNKNOWN_KEY_IDENTIFIER = 204
APPLICATION_INTERNAL_ERROR = 207

# HL7 v2.5.1 Table 0008, Acknowledgment code (original mode).
ACCEPT = "AA"
ERROR = "AE"
REJECT = "AR"


class Hl7Error(Exception):
    """A message we answer with AE or AR: a Table 0357 code, a text, and where the problem is."""

    def __init__(
        self, ack: str, code: int, text: str, segment: str = "", sequence: int = 1, field: int = 0
    ) -> None:
        super().__init__(text)
        self.ack = ack
        self.code = code
        self.text = text
        self.segment = segment
        self.sequence = sequence
        self.field = field


@dataclass(frozen=True, slots=True)
class Charset:
    """An MSH-18 character set: the Python codec that reads it and the DICOM term that keeps its text."""

    hl7_name: str
    codec: str
    dicom: str  # (0008,0005) Specific Character Set; "" is the default repertoire (ASCII)


# HL7 v2.5.1 2.15.9.18 / Table 0211 -> Python codec, DICOM PS3.3 C.12.1.1.2 defined term.
# Sets DICOM names only through ISO 2022 code extensions are kept as UTF-8 (ISO_IR 192):
# the text is decoded once here, and UTF-8 holds all of it.
CHARSETS: dict[str, Charset] = {
    c.hl7_name: c
    for c in (
        Charset("ASCII", "ascii", ""),
        Charset("8859/1", "iso8859_1", "ISO_IR 100"),
        Charset("8859/2", "iso8859_2", "ISO_IR 101"),
        Charset("8859/3", "iso8859_3", "ISO_IR 109"),
        Charset("8859/4", "iso8859_4", "ISO_IR 110"),
        Charset("8859/5", "iso8859_5", "ISO_IR 144"),
        Charset("8859/6", "iso8859_6", "ISO_IR 127"),
        Charset("8859/7", "iso8859_7", "ISO_IR 126"),
        Charset("8859/8", "iso8859_8", "ISO_IR 138"),
        Charset("8859/9", "iso8859_9", "ISO_IR 148"),
        Charset("8859/15", "iso8859_15", "ISO_IR 203"),
        Charset("ISO IR14", "shift_jis", "ISO_IR 192"),
        Charset("ISO IR87", "iso2022_jp", "ISO_IR 192"),
        Charset("ISO IR159", "iso2022_jp_2", "ISO_IR 192"),
        Charset("GB 18030-2000", "gb18030", "GB18030"),
        Charset("KS X 1001", "euc_kr", "ISO_IR 192"),
        Charset("BIG-5", "big5", "ISO_IR 192"),
        Charset("UNICODE", "utf-8", "ISO_IR 192"),
        Charset("UNICODE UTF-8", "utf-8", "ISO_IR 192"),
    )
}
UTF8 = CHARSETS["UNICODE UTF-8"]
LATIN1 = CHARSETS["8859/1"]


@dataclass(frozen=True, slots=True)
class Received:
    """A parsed message with what its header says."""

    message: Any  # hl7.Message
    charset: Charset
    message_type: str  # MSH-9.1, e.g. ORM
    trigger: str  # MSH-9.2, e.g. O01
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1

    @property
    def header(self) -> Any:
        """The MSH segment."""
        return self.message.segment("MSH")


def value(segment: Any, field: int, component: int = 1, sub: int = 1, repetition: int = 1) -> str:
    """One value of a segment, unescaped (HL7 v2.5.1 2.7); "" when it is not there."""
    if segment is None:
        return ""
    try:
        return str(segment.extract_field(1, field, repetition, component, sub)).strip()
    except (IndexError, TypeError, AttributeError):
        return ""


def repetitions(segment: Any, field: int) -> int:
    """How many repetitions a field has (0 when absent or empty)."""
    if segment is None or field >= len(segment):
        return 0
    raw = segment(field)
    return len(raw) if str(raw) else 0


def present(segment: Any, field: int) -> bool:
    """True when the field is sent, with a value or with the null value "" (HL7 v2.5.1 2.5.3)."""
    return segment is not None and field < len(segment) and bool(str(segment(field)))


def is_null(text: str) -> bool:
    """HL7 v2.5.1 2.5.3: "" (two double quotes) says: delete the receiver's value."""
    return text == '""'


def read_header(payload: bytes) -> Any:
    """The MSH segment of a message (its first segment, read as ISO 8859-1); raises Hl7Error (AR)."""
    text = _normalise(payload.decode("latin-1"))
    # HL7 v2.5.1 2.5.4: a message begins with MSH, its field separator, then 4 encoding characters.
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error(
            REJECT, SEGMENT_SEQUENCE_ERROR, "the message does not start with an MSH segment", "MSH"
        )
    try:
        return hl7.parse(text.split("\r", 1)[0]).segment("MSH")
    except Exception as exc:
        raise Hl7Error(REJECT, SEGMENT_SEQUENCE_ERROR, f"unreadable MSH segment: {exc}", "MSH") from None


def read(payload: bytes) -> Received:
    """Decode (MSH-18) and parse one message; raises Hl7Error (AR) when it is not one."""
    header = read_header(payload)
    charset = _charset(value(header, 18), payload)
    try:
        # HL7 v2.5.1 2.15.9.18: MSH-18 names the character set of the whole message.
        decoded = _normalise(payload.decode(charset.codec))
        message = hl7.parse(decoded)
        header = message.segment("MSH")
    except UnicodeDecodeError as exc:
        raise Hl7Error(
            REJECT, DATA_TYPE_ERROR, f"not {charset.hl7_name} text: {exc.reason}", "MSH", field=18
        ) from None
    except Exception as exc:
        raise Hl7Error(REJECT, SEGMENT_SEQUENCE_ERROR, f"not an HL7 v2 message: {exc}", "MSH") from None
    if "\0" in decoded:
        # Fix (tests/security): text holds no NUL; PostgreSQL refused it mid-processing (AE, a traceback).
        raise Hl7Error(REJECT, DATA_TYPE_ERROR, "the message contains a NUL character", "MSH")
    return Received(
        message=message,
        charset=charset,
        message_type=value(header, 9, 1).upper(),
        trigger=value(header, 9, 2).upper(),
        control_id=value(header, 10),
        processing_id=value(header, 11, 1),
        version=value(header, 12, 1),
    )


def _normalise(text: str) -> str:
    # HL7 v2.5.1 2.5.1: segments end with a carriage return; senders writing files with
    # line feeds (or CR LF) are common, and a line feed is never data in an HL7 field.
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


def _charset(declared: str, payload: bytes) -> Charset:
    name = declared.strip().upper()
    if name in ("", "ASCII") and not payload.isascii():
        # HL7 v2.5.1 2.15.9.18 says ASCII when MSH-18 is empty; senders that leave it empty
        # with 8-bit text mostly send UTF-8, else one of the ISO 8859-1 family.
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return LATIN1
        return UTF8
    if not name:
        return CHARSETS["ASCII"]
    found = CHARSETS.get(name)
    if found is None:
        raise Hl7Error(
            REJECT,
            TABLE_VALUE_NOT_FOUND,
            f"unsupported character set (HL7 Table 0211): {declared}",
            "MSH",
            field=18,
        )
    return found


def segment_ids(message: Any) -> list[str]:
    """The segment IDs of a message, in order."""
    return [str(seg[0][0]).strip().upper() for seg in message]
