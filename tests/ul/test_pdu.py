"""PS3.8 9.3 codec edge cases: length checks, malformed input and the A-ABORT reason each one earns."""

from __future__ import annotations

import struct

import pytest
from test_pdu_fixtures import (
    ABORT,
    ASSOCIATE_AC_FULL,
    ASSOCIATE_RQ_ECHO,
    ASSOCIATE_RQ_ECHO_PDU,
    ASSOCIATE_RQ_FULL,
    PDATA_TWO_PDVS,
    RELEASE_RQ,
    h,
)

from pacsnode.ul.errors import AbortReason, AbortSource, RemoteProtocolError
from pacsnode.ul.pdu import (
    PDV,
    AssociateRQ,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    decode,
    decode_bytes,
    encode,
    encode_pdata,
)

INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE  # 6


def reason_of(raw: bytes, **reader_args) -> int:
    reader = PDUReader(**({"max_pdata_length": 0} | reader_args))
    reader.feed(raw)
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.source == AbortSource.SERVICE_PROVIDER
    return int(info.value.reason)


def with_length(raw: bytes) -> bytes:
    """Fix up the PDU-length field after editing the body of a PDU."""
    return raw[:2] + struct.pack(">I", len(raw) - 6) + raw[6:]


def patch(raw: bytes, at: int, new: bytes) -> bytes:
    return raw[:at] + new + raw[at + len(new) :]


# Offsets inside ASSOCIATE_RQ_ECHO (see its annotation): fixed part 6 + 68 = 74.
APP_ITEM = 74  # Application Context Item, 25 bytes
PC_ITEM = APP_ITEM + 25  # Presentation Context Item, 73 bytes
ABSTRACT_SUB = PC_ITEM + 8  # Abstract Syntax Sub-Item
UI_ITEM = PC_ITEM + 73  # User Information Item, 55 bytes
MAX_LEN_SUB = UI_ITEM + 4


# ------------------------------------------------------------------ item longer than its parent -> reason 6


@pytest.mark.parametrize(
    ("where", "at", "new_length"),
    [
        ("application context item beyond the PDU", APP_ITEM + 2, b"\x01\x00"),
        ("presentation context item beyond the PDU", PC_ITEM + 2, b"\x00\xff"),
        ("abstract syntax sub-item beyond its presentation context", ABSTRACT_SUB + 2, b"\x00\x45"),
        ("user information item beyond the PDU", UI_ITEM + 2, b"\x00\x34"),
        ("maximum length sub-item beyond user information", MAX_LEN_SUB + 2, b"\x00\x40"),
    ],
)
def test_item_longer_than_its_parent(where, at, new_length):
    assert reason_of(patch(ASSOCIATE_RQ_ECHO, at, new_length)) == INVALID, where


def test_user_information_sub_item_longer_than_its_parent_in_ac():
    ui = ASSOCIATE_AC_FULL.index(bytes.fromhex("50 00 008b"))
    raw = patch(ASSOCIATE_AC_FULL, ui + 4 + 2, b"\x00\x88")  # max length sub-item claims 136 bytes
    assert reason_of(raw) == INVALID


@pytest.mark.parametrize(
    ("what", "raw"),
    [
        ("PDV item longer than the PDU", patch(PDATA_TWO_PDVS, 6, b"\x00\x00\x00\x0f")),
        ("PDV item length 0xFFFFFFFF", patch(PDATA_TWO_PDVS, 6, b"\xff\xff\xff\xff")),
        ("PDV item length 1 (no room for its header)", patch(PDATA_TWO_PDVS, 6, b"\x00\x00\x00\x01")),
        ("trailing bytes too short for a PDV", with_length(PDATA_TWO_PDVS + b"\x00\x00")),
        ("no PDV at all", h("04 00 00000000")),
        ("reserved bits in the control header", patch(PDATA_TWO_PDVS, 11, b"\x07")),
    ],
)
def test_pdata_length_and_header_errors(what, raw):
    assert reason_of(raw) == INVALID, what


@pytest.mark.parametrize(
    ("what", "uid_length_field"),
    [
        ("role selection UID length one too long", b"\x00\x1a"),
        ("role selection UID length ends early", b"\x00\x18"),
    ],
)
def test_role_selection_lengths(what, uid_length_field):
    at = ASSOCIATE_RQ_FULL.index(bytes.fromhex("54 00 001d")) + 4
    assert reason_of(patch(ASSOCIATE_RQ_FULL, at, uid_length_field)) == INVALID, what


def test_common_extended_negotiation_inner_length_beyond_item():
    at = ASSOCIATE_RQ_FULL.index(bytes.fromhex("57 00 0072")) + 4
    assert reason_of(patch(ASSOCIATE_RQ_FULL, at, b"\x00\x70")) == INVALID


def test_user_identity_field_beyond_item():
    at = ASSOCIATE_RQ_FULL.index(bytes.fromhex("58 00 0011")) + 6
    assert reason_of(patch(ASSOCIATE_RQ_FULL, at, b"\x00\x10")) == INVALID


# ------------------------------------------------------------------ limits checked from the header alone


@pytest.mark.parametrize("pdu_type", [1, 2, 3, 5, 6, 7])
def test_length_ffffffff_raises_from_the_header_alone(pdu_type):
    reader = PDUReader(max_pdata_length=16384)
    header = bytes((pdu_type, 0)) + b"\xff\xff\xff\xff"
    reader.feed(header[:5])
    assert reader.next_pdu() is None  # five bytes: not a header yet
    reader.feed(header[5:])
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == INVALID
    assert reader.buffered == 6  # nothing of the body was needed or waited for


def test_pdata_length_ffffffff_raises_from_the_header_alone():
    reader = PDUReader(max_pdata_length=16384)
    reader.feed(b"\x04\x00\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == INVALID


def test_pdata_larger_than_max_pdata_length():
    body = b"x" * 100
    pdu = encode_pdata(1, False, True, body)  # PDU-length 106
    assert reason_of(pdu, max_pdata_length=105) == INVALID
    # Exactly the limit is fine (PS3.8 D.1: the limit is on the variable field).
    reader = PDUReader(max_pdata_length=106)
    reader.feed(pdu)
    assert reader.next_pdu() == PDataTF((PDV(1, False, True, body),))


def test_max_pdata_length_zero_means_no_limit():
    reader = PDUReader(max_pdata_length=0)
    reader.feed(encode_pdata(1, False, True, b"y" * 70000))
    assert isinstance(reader.next_pdu(), PDataTF)


def test_other_pdus_are_bounded_by_max_other_length_not_max_pdata_length():
    assert reason_of(ASSOCIATE_RQ_ECHO, max_pdata_length=1 << 20, max_other_length=100) == INVALID
    reader = PDUReader(max_pdata_length=10, max_other_length=len(ASSOCIATE_RQ_ECHO) - 6)
    reader.feed(ASSOCIATE_RQ_ECHO)
    assert reader.next_pdu() == ASSOCIATE_RQ_ECHO_PDU


# ------------------------------------------------------------------ unrecognised PDU / item / parameter


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0xFF])
def test_unknown_pdu_type_is_reason_1_from_the_header(pdu_type):
    reader = PDUReader(max_pdata_length=0)
    reader.feed(bytes((pdu_type, 0, 0, 0, 0, 4)))  # header only
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == AbortReason.UNRECOGNIZED_PDU
    with pytest.raises(RemoteProtocolError) as info:
        decode(pdu_type, b"\x00" * 4)
    assert info.value.reason == AbortReason.UNRECOGNIZED_PDU


def test_unknown_top_level_item_is_reason_4():
    unknown = h("60 00 0002 ab cd  # item-type 60H is not defined in an A-ASSOCIATE-RQ")
    raw = with_length(ASSOCIATE_RQ_ECHO[:UI_ITEM] + unknown + ASSOCIATE_RQ_ECHO[UI_ITEM:])
    assert reason_of(raw) == AbortReason.UNRECOGNIZED_PDU_PARAMETER


def test_ac_presentation_context_item_in_an_rq_is_reason_4():
    raw = patch(ASSOCIATE_RQ_ECHO, PC_ITEM, b"\x21")
    assert reason_of(raw) == AbortReason.UNRECOGNIZED_PDU_PARAMETER


def test_unknown_sub_item_in_a_presentation_context_is_reason_4():
    raw = patch(ASSOCIATE_RQ_ECHO, ABSTRACT_SUB + 21, b"\x41")  # first TS sub-item becomes 41H
    assert reason_of(raw) == AbortReason.UNRECOGNIZED_PDU_PARAMETER


def test_abstract_syntax_in_an_ac_context_is_reason_5():
    at = ASSOCIATE_AC_FULL.index(bytes.fromhex("21 00 001b")) + 8
    assert reason_of(patch(ASSOCIATE_AC_FULL, at, b"\x30")) == AbortReason.UNEXPECTED_PDU_PARAMETER


def test_repeated_items_are_reason_5():
    app = ASSOCIATE_RQ_ECHO[APP_ITEM:PC_ITEM]
    twice = with_length(ASSOCIATE_RQ_ECHO[:PC_ITEM] + app + ASSOCIATE_RQ_ECHO[PC_ITEM:])
    assert reason_of(twice) == AbortReason.UNEXPECTED_PDU_PARAMETER
    ui = ASSOCIATE_RQ_ECHO[UI_ITEM:]
    assert reason_of(with_length(ASSOCIATE_RQ_ECHO + ui)) == AbortReason.UNEXPECTED_PDU_PARAMETER
    abstract = ASSOCIATE_RQ_ECHO[ABSTRACT_SUB : ABSTRACT_SUB + 21]
    pc_body = ASSOCIATE_RQ_ECHO[PC_ITEM + 4 : UI_ITEM] + abstract
    pc = bytes((0x20, 0)) + struct.pack(">H", len(pc_body)) + pc_body
    raw = with_length(ASSOCIATE_RQ_ECHO[:PC_ITEM] + pc + ASSOCIATE_RQ_ECHO[UI_ITEM:])
    assert reason_of(raw) == AbortReason.UNEXPECTED_PDU_PARAMETER


@pytest.mark.parametrize(
    ("what", "raw"),
    [
        ("A-ASSOCIATE-RQ shorter than its fixed fields", with_length(ASSOCIATE_RQ_ECHO[:6 + 67])),
        ("no application context item", with_length(
            ASSOCIATE_RQ_ECHO[:APP_ITEM] + ASSOCIATE_RQ_ECHO[PC_ITEM:])),
        ("no user information item", with_length(ASSOCIATE_RQ_ECHO[:UI_ITEM])),
        ("presentation context item shorter than 4", with_length(
            ASSOCIATE_RQ_ECHO[:PC_ITEM] + h("20 00 0002 01 00") + ASSOCIATE_RQ_ECHO[UI_ITEM:])),
        ("presentation context without abstract syntax", with_length(
            ASSOCIATE_RQ_ECHO[:PC_ITEM] + h("20 00 0004 01 00 00 00") + ASSOCIATE_RQ_ECHO[UI_ITEM:])),
        ("trailing bytes shorter than an item header", with_length(ASSOCIATE_RQ_ECHO + b"\x50\x00")),
        ("maximum length sub-item of length 2", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 0006 51 00 0002 40 00"))),
        ("asynchronous operations window of length 2", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 0006 53 00 0002 00 01"))),
        ("role selection with a third role byte", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 0009 54 00 0005 0001 31 01 00 01"))),
        ("role selection without its length field", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 0005 54 00 0001 00"))),
        ("user identity shorter than 2", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 0005 58 00 0001 01"))),
        ("user identity with trailing bytes", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 000b 58 00 0007 01 00 0001 61 0000 ff"))),
        ("user identity response with trailing bytes", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 0008 59 00 0004 0001 61 ff"))),
        ("common extended negotiation with trailing bytes", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 000f 57 00 000b 0001 31 0001 32 0002 0000 ff ff"))),
        ("common extended negotiation related UID overruns", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 000d 57 00 0009 0001 31 0001 32 0001 00"))),
        ("SOP class extended negotiation without UID length", with_length(
            ASSOCIATE_RQ_ECHO[:UI_ITEM] + h("50 00 0005 56 00 0001 00"))),
        ("A-RELEASE-RQ of length 5", h("05 00 00000005 00000000 00")),
        ("A-RELEASE-RP of length 3", h("06 00 00000003 000000")),
        ("A-ABORT of length 0", h("07 00 00000000")),
        ("A-ASSOCIATE-RJ of length 6", h("03 00 00000006 00 01 01 01 00 00")),
    ],
)  # fmt: skip
def test_malformed_is_invalid_parameter_value(what, raw):
    assert reason_of(raw) == INVALID, what


def test_decode_bytes_wants_exactly_one_pdu():
    with pytest.raises(RemoteProtocolError):
        decode_bytes(RELEASE_RQ + ABORT)
    with pytest.raises(RemoteProtocolError):
        decode_bytes(RELEASE_RQ[:-1])


def test_error_in_one_pdu_leaves_the_reader_at_the_next():
    # The reader consumed the bad PDU before decoding it; the caller (UpperLayer)
    # must still treat the stream as broken, but the reader itself is not stuck.
    reader = PDUReader(max_pdata_length=0)
    reader.feed(h("05 00 00000005 00000000 00") + ABORT)
    with pytest.raises(RemoteProtocolError):
        reader.next_pdu()
    assert reader.next_pdu() == decode_bytes(ABORT)


# ------------------------------------------------------------------ tolerance the standard asks for


def test_unknown_user_information_sub_items_are_kept_and_re_encoded():
    # PS3.7 D.3.3: unrecognised sub-items are ignored, not fatal.
    raw = with_length(
        ASSOCIATE_RQ_ECHO[:UI_ITEM]
        + h("""
        50 00 003b                      # User Information, 51 + 8
        51 00 0004 00004000
    """)
        + ASSOCIATE_RQ_ECHO[MAX_LEN_SUB + 8 :]
        + h("5f 00 0004 de ad be ef  # unknown 5FH sub-item")
    )
    pdu = decode_bytes(raw)
    assert isinstance(pdu, AssociateRQ)
    assert pdu.user_information.unknown_items == ((0x5F, b"\xde\xad\xbe\xef"),)
    assert encode(pdu) == raw


def test_reserved_fields_are_not_tested_on_receipt():
    # PS3.8 9.3.1: reserved fields are sent as 00H but not tested when received.
    raw = bytearray(ASSOCIATE_RQ_ECHO)
    raw[1] = 0xFF  # reserved byte of the PDU header
    raw[8:10] = b"\xff\xff"  # reserved after protocol-version
    raw[42:74] = b"\xee" * 32  # 32 reserved bytes
    raw[APP_ITEM + 1] = 0xFF  # reserved byte of the item header
    raw[PC_ITEM + 5 : PC_ITEM + 8] = b"\xff\xff\xff"  # reserved bytes of the RQ context item
    assert decode_bytes(bytes(raw)) == ASSOCIATE_RQ_ECHO_PDU
    assert decode_bytes(patch(RELEASE_RQ, 6, b"\xff\xff\xff\xff")) == decode_bytes(RELEASE_RQ)


def test_uid_padded_with_nul_is_trimmed():
    # PS3.8 Annex F: some implementations pad UIDs to even length with a NUL.
    app = h("10 00 0016 31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 33 2e 31 2e 31 2e 31 00")
    raw = with_length(ASSOCIATE_RQ_ECHO[:APP_ITEM] + app + ASSOCIATE_RQ_ECHO[PC_ITEM:])
    pdu = decode_bytes(raw)
    assert isinstance(pdu, AssociateRQ)
    assert pdu.application_context == "1.2.840.10008.3.1.1.1"


def test_ae_titles_are_trimmed_of_padding():
    raw = patch(ASSOCIATE_RQ_ECHO, 10, b"  ANY-SCP       ")
    pdu = decode_bytes(raw)
    assert isinstance(pdu, AssociateRQ)
    assert pdu.called_ae_title == "ANY-SCP"


def test_pdv_with_empty_fragment():
    raw = h("04 00 00000006  00000002 01 02  # one PDV with no data")
    assert decode_bytes(raw) == PDataTF((PDV(1, False, True, b""),))
    assert encode_pdata(1, False, True, b"") == raw


# ------------------------------------------------------------------ encoder refusals


def test_encode_refuses_what_cannot_be_encoded():
    ui = UserInformation(max_length=0, implementation_class_uid="1.2")
    with pytest.raises(ValueError, match="AE title"):
        encode(AssociateRQ("A" * 17, "B", (), ui))
    with pytest.raises(ValueError, match="longer than 65535"):
        encode(AssociateRQ("A", "B", (PresentationContextRQ(1, "1." * 33000, ("1.2",)),), ui))
    with pytest.raises(TypeError):
        encode(PresentationContextAC(1, 0, "1.2"))  # type: ignore[arg-type]


def test_multiple_pdvs_encode_in_order():
    pdvs = (PDV(1, True, False, b"a"), PDV(1, True, True, b"bc"), PDV(3, False, True, b""))
    raw = encode(PDataTF(pdvs))
    assert raw == h("""
        04 00 00000015                  # P-DATA-TF, length 21 = 7 + 8 + 6
        00000003 01 01 61               # context 1, command, not last, "a"
        00000004 01 03 62 63            # context 1, command, last, "bc"
        00000002 03 02                  # context 3, data, last, empty
    """)
    assert decode_bytes(raw) == PDataTF(pdvs)
