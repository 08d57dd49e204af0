"""Annotated byte fixtures for every PS3.8 9.3 PDU and every PS3.8/PS3.7 Annex D item and sub-item.

Each fixture is written by hand from the byte layouts of PS3.8 Section 9.3 (PDUs and
items) and PS3.7 Annex D.3.3 (user information sub-items), one commented group of
bytes a line, not produced by the encoder under test.  Every fixture is decoded and
compared field by field with a hand-built object, that object is encoded and compared
byte for byte with the fixture, and the fixture is fed to PDUReader one byte at a time.
"""

from __future__ import annotations

import pytest

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
    decode,
    decode_bytes,
    encode,
    encode_pdata,
)


def h(text: str) -> bytes:
    """Join commented hex lines: everything after '#' is a comment, whitespace is ignored."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


# ------------------------------------------------------------------ UIDs and texts used below

APP_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1 DICOM Application Context Name
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
IMPL_UID = "1.2.826.0.1.3680043.10.1"
IMPL_VERSION = "PACSNODE_01"

# Hex fragments reused in several PDUs (each is one complete item or sub-item).
APP_CONTEXT_ITEM = """
    10                                  # item-type 10H: Application Context Item (PS3.8 9.3.2.1)
    00                                  # reserved
    0015                                # item-length 21
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 33 2e 31 2e 31 2e 31   # "1.2.840.10008.3.1.1.1"
"""
IMPL_CLASS_UID_ITEM = """
    52 00 0018                          # 52H Implementation Class UID Sub-Item (PS3.7 D.3.3.2), length 24
    31 2e 32 2e 38 32 36 2e 30 2e 31 2e 33 36 38 30 30 34 33 2e 31 30 2e 31   # "1.2.826.0.1.3680043.10.1"
"""
IMPL_VERSION_ITEM = """
    55 00 000b                          # 55H Implementation Version Name Sub-Item (PS3.7 D.3.3.2), length 11
    50 41 43 53 4e 4f 44 45 5f 30 31    # "PACSNODE_01"
"""
CALLED_ANY_SCP = """
    41 4e 59 2d 53 43 50 20 20 20 20 20 20 20 20 20   # called AE "ANY-SCP", space padded to 16
"""
CALLING_STORESCU = """
    53 54 4f 52 45 53 43 55 20 20 20 20 20 20 20 20   # calling AE "STORESCU", space padded to 16
"""
RESERVED_32 = """
    00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000   # 32 reserved bytes
"""
ROLE_CT_SCU_ITEM = """
    54 00 001d                          # 54H SCP/SCU Role Selection Sub-Item (PS3.7 D.3.3.4), length 29
    0019                                # UID-length 25
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 32   # CT Image Storage
    01                                  # SCU-role 1: the requestor may be SCU
    00                                  # SCP-role 0: not SCP
"""
EXT_NEG_FIND_ITEM = """
    56 00 0020                          # 56H SOP Class Extended Negotiation Sub-Item (PS3.7 D.3.3.5), len 32
    001b                                # SOP-class-uid-length 27
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 32 2e 31 2e 31   # Patient Root FIND
    01 00 01                            # service-class-application-information (PS3.4 C.3.4: relational,
                                        #   no combined date-time, fuzzy semantic matching)
"""


# ------------------------------------------------------------------ A-ASSOCIATE-RQ, Verification only

ASSOCIATE_RQ_ECHO = h(f"""
    01                                  # PDU-type 01H: A-ASSOCIATE-RQ (PS3.8 9.3.2)
    00                                  # reserved
    000000dd                            # PDU-length 221 = 68 fixed + 25 + 73 + 55
    0001                                # protocol-version: bit 0 set
    0000                                # reserved
    {CALLED_ANY_SCP}
    45 43 48 4f 53 43 55 20 20 20 20 20 20 20 20 20   # calling AE "ECHOSCU", space padded to 16
    {RESERVED_32}
    {APP_CONTEXT_ITEM}
    20                                  # item-type 20H: Presentation Context Item, RQ (PS3.8 9.3.2.2)
    00                                  # reserved
    0045                                # item-length 69 = 4 + 21 + 21 + 23
    01                                  # presentation-context-ID 1 (odd)
    00 00 00                            # reserved
    30 00 0011                          # 30H Abstract Syntax Sub-Item (PS3.8 9.3.2.2.1), length 17
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 31         # "1.2.840.10008.1.1" Verification
    40 00 0011                          # 40H Transfer Syntax Sub-Item (PS3.8 9.3.2.2.2), length 17
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32         # Implicit VR Little Endian
    40 00 0013                          # 40H Transfer Syntax Sub-Item, length 19
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32 2e 31   # Explicit VR Little Endian
    50                                  # item-type 50H: User Information Item (PS3.8 9.3.2.3)
    00                                  # reserved
    0033                                # item-length 51 = 8 + 28 + 15
    51 00 0004                          # 51H Maximum Length Sub-Item (PS3.8 D.1), length 4
    00004000                            # maximum-length-received 16384
    {IMPL_CLASS_UID_ITEM}
    {IMPL_VERSION_ITEM}
""")

ASSOCIATE_RQ_ECHO_PDU = AssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE, EXPLICIT_LE)),),
    user_information=UserInformation(
        max_length=16384, implementation_class_uid=IMPL_UID, implementation_version_name=IMPL_VERSION
    ),
)


# ------------------------------------------------------------------ A-ASSOCIATE-RQ, every RQ sub-item

ASSOCIATE_RQ_FULL = h(f"""
    01 00                               # A-ASSOCIATE-RQ, reserved
    000001e6                            # PDU-length 486 = 68 + 25 + 60 + 62 + 271
    0001 0000                           # protocol-version 1, reserved
    {CALLED_ANY_SCP}
    {CALLING_STORESCU}
    {RESERVED_32}
    {APP_CONTEXT_ITEM}
    20 00 0038                          # Presentation Context Item (RQ), length 56 = 4 + 29 + 23
    01 00 00 00                         # context ID 1, three reserved bytes
    30 00 0019                          # Abstract Syntax Sub-Item, length 25
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 32   # CT Image Storage
    40 00 0013                          # Transfer Syntax Sub-Item, length 19
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32 2e 31   # Explicit VR Little Endian
    20 00 003a                          # Presentation Context Item (RQ), length 58 = 4 + 33 + 21
    03 00 00 00                         # context ID 3, reserved
    30 00 001d                          # Abstract Syntax Sub-Item, length 29
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 38 38 2e 31 31   # Basic Text SR
    40 00 0011                          # Transfer Syntax Sub-Item, length 17
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32         # Implicit VR Little Endian
    50 00 010b                          # User Information Item, length 267 = 8+28+8+33+15+36+118+21
    51 00 0004 00004000                 # Maximum Length Sub-Item: 16384
    {IMPL_CLASS_UID_ITEM}
    53 00 0004                          # 53H Asynchronous Operations Window Sub-Item (PS3.7 D.3.3.3)
    0005                                # maximum-number-operations-invoked 5
    0001                                # maximum-number-operations-performed 1
    {ROLE_CT_SCU_ITEM}
    {IMPL_VERSION_ITEM}
    {EXT_NEG_FIND_ITEM}
    57                                  # 57H SOP Class Common Extended Negotiation Sub-Item (PS3.7 D.3.3.6)
    00                                  # sub-item-version 0
    0072                                # item-length 114 = 2+29 + 2+17 + 2+62
    001d                                # SOP-class-uid-length 29
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 38 38 2e 32 32   # Enhanced SR
    0011                                # service-class-uid-length 17
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 34 2e 32         # Storage Service Class
    003e                                # related-general-sop-class-identification-length 62
    001d                                # related-general-sop-class-uid-length 29
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 38 38 2e 31 31   # Basic Text SR
    001d                                # related-general-sop-class-uid-length 29
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 38 38 2e 33 33   # Compr. SR
    58 00 0011                          # 58H User Identity Sub-Item RQ (PS3.7 D.3.3.7.1), length 17
    02                                  # user-identity-type 2: username and passcode
    01                                  # positive-response-requested 1
    0005 61 6c 69 63 65                 # primary-field-length 5, "alice"
    0006 73 33 63 72 65 74              # secondary-field-length 6, "s3cret"
""")

ASSOCIATE_RQ_FULL_PDU = AssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="STORESCU",
    presentation_contexts=(
        PresentationContextRQ(1, CT_IMAGE, (EXPLICIT_LE,)),
        PresentationContextRQ(3, BASIC_TEXT_SR, (IMPLICIT_LE,)),
    ),
    user_information=UserInformation(
        max_length=16384,
        implementation_class_uid=IMPL_UID,
        implementation_version_name=IMPL_VERSION,
        async_ops_window=AsynchronousOperationsWindow(5, 1),
        role_selections=(RoleSelection(CT_IMAGE, scu_role=True, scp_role=False),),
        extended_negotiations=(SOPClassExtendedNegotiation(PATIENT_ROOT_FIND, b"\x01\x00\x01"),),
        common_extended_negotiations=(
            SOPClassCommonExtendedNegotiation(
                ENHANCED_SR, STORAGE_SERVICE_CLASS, (BASIC_TEXT_SR, COMPREHENSIVE_SR)
            ),
        ),
        user_identity_rq=UserIdentityRQ(2, True, b"alice", b"s3cret"),
    ),
)


# ---------------------------------------------------------- A-ASSOCIATE-RQ, no Maximum Length, username only

ASSOCIATE_RQ_NO_MAX_LENGTH = h(f"""
    01 00 000000be                      # A-ASSOCIATE-RQ, PDU-length 190 = 68 + 25 + 50 + 47
    0001 0000                           # protocol-version 1, reserved
    50 41 43 53 20 20 20 20 20 20 20 20 20 20 20 20   # called AE "PACS"
    4d 4f 44 41 4c 49 54 59 31 20 20 20 20 20 20 20   # calling AE "MODALITY1"
    {RESERVED_32}
    {APP_CONTEXT_ITEM}
    20 00 002e                          # Presentation Context Item (RQ), length 46 = 4 + 21 + 21
    ff 00 00 00                         # context ID 255 (the highest allowed)
    30 00 0011                          # Abstract Syntax Sub-Item, length 17
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 31         # Verification
    40 00 0011                          # Transfer Syntax Sub-Item, length 17
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32         # Implicit VR Little Endian
    50 00 002b                          # User Information Item, length 43 = 28 + 15: no 51H sub-item
    {IMPL_CLASS_UID_ITEM}
    58 00 000b                          # User Identity Sub-Item RQ, length 11
    01                                  # user-identity-type 1: username
    00                                  # positive-response-requested 0
    0005 61 6c 69 63 65                 # primary field "alice"
    0000                                # secondary-field-length 0 (present, empty, as D.3.3.7.1 requires)
""")

ASSOCIATE_RQ_NO_MAX_LENGTH_PDU = AssociateRQ(
    called_ae_title="PACS",
    calling_ae_title="MODALITY1",
    presentation_contexts=(PresentationContextRQ(255, VERIFICATION, (IMPLICIT_LE,)),),
    user_information=UserInformation(
        implementation_class_uid=IMPL_UID,
        user_identity_rq=UserIdentityRQ(1, False, b"alice", b""),
        has_max_length=False,
    ),
)


# ------------------------------------------------------------------ A-ASSOCIATE-AC, every AC sub-item

ASSOCIATE_AC_FULL = h(f"""
    02                                  # PDU-type 02H: A-ASSOCIATE-AC (PS3.8 9.3.3)
    00                                  # reserved
    00000134                            # PDU-length 308 = 68 + 25 + 31 + 29 + 12 + 143
    0001 0000                           # protocol-version 1, reserved
    {CALLED_ANY_SCP}                    # (echoed from the RQ, not tested on receipt)
    {CALLING_STORESCU}
    {RESERVED_32}
    {APP_CONTEXT_ITEM}
    21                                  # item-type 21H: Presentation Context Item, AC (PS3.8 9.3.3.2)
    00                                  # reserved
    001b                                # item-length 27 = 4 + 23
    01                                  # presentation-context-ID 1
    00                                  # reserved
    00                                  # result/reason 0: acceptance
    00                                  # reserved
    40 00 0013                          # Transfer Syntax Sub-Item, length 19
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32 2e 31   # Explicit VR Little Endian
    21 00 0019                          # Presentation Context Item (AC), length 25 = 4 + 21
    03 00 04 00                         # context ID 3, reserved, 4: transfer-syntaxes-not-supported, reserved
    40 00 0011                          # Transfer Syntax Sub-Item (value not significant when rejected)
    31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32         # Implicit VR Little Endian
    21 00 0008                          # Presentation Context Item (AC), length 8 = 4 + 4
    05 00 03 00                         # context ID 5, reserved, 3: abstract-syntax-not-supported, reserved
    40 00 0000                          # Transfer Syntax Sub-Item with no value
    50 00 008b                          # User Information Item, length 139 = 8+28+8+33+15+36+11
    51 00 0004 00010000                 # Maximum Length Sub-Item: 65536
    {IMPL_CLASS_UID_ITEM}
    53 00 0004 0001 0001                # Asynchronous Operations Window: 1 invoked, 1 performed
    {ROLE_CT_SCU_ITEM}
    {IMPL_VERSION_ITEM}
    {EXT_NEG_FIND_ITEM}
    59                                  # 59H User Identity Sub-Item AC (PS3.7 D.3.3.7.2)
    00                                  # reserved
    0007                                # item-length 7
    0005                                # server-response-length 5
    74 6f 6b 65 6e                      # server-response "token"
""")

ASSOCIATE_AC_FULL_PDU = AssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="STORESCU",
    presentation_contexts=(
        PresentationContextAC(1, 0, EXPLICIT_LE),
        PresentationContextAC(3, 4, IMPLICIT_LE),
        PresentationContextAC(5, 3, ""),
    ),
    user_information=UserInformation(
        max_length=65536,
        implementation_class_uid=IMPL_UID,
        implementation_version_name=IMPL_VERSION,
        async_ops_window=AsynchronousOperationsWindow(1, 1),
        role_selections=(RoleSelection(CT_IMAGE, scu_role=True, scp_role=False),),
        extended_negotiations=(SOPClassExtendedNegotiation(PATIENT_ROOT_FIND, b"\x01\x00\x01"),),
        user_identity_ac=UserIdentityAC(b"token"),
    ),
)


# ------------------------------------------------------------------ the short PDUs

ASSOCIATE_RJ = h("""
    03                                  # PDU-type 03H: A-ASSOCIATE-RJ (PS3.8 9.3.4)
    00                                  # reserved
    00000004                            # PDU-length 4
    00                                  # reserved
    01                                  # result 1: rejected-permanent
    01                                  # source 1: DICOM UL service-user
    07                                  # reason 7: called-AE-title-not-recognized
""")

PDATA_TWO_PDVS = h("""
    04                                  # PDU-type 04H: P-DATA-TF (PS3.8 9.3.5)
    00                                  # reserved
    00000017                            # PDU-length 23 = (4 + 10) + (4 + 5)
    0000000a                            # PDV item-length 10 (PS3.8 9.3.5.1)
    01                                  # presentation-context-ID 1
    03                                  # message control header (PS3.8 E.2): bit 0 command, bit 1 last
    00 00 00 00 04 00 00 00             # fragment: (0000,0000) UL length 4 ...
    0000 0005                           # PDV item-length 5
    03                                  # presentation-context-ID 3
    00                                  # message control header: data, not the last fragment
    aa bb cc                            # fragment
""")

PDATA_ONE_PDV = h("""
    04 00 0000000b                      # P-DATA-TF, PDU-length 11
    00000007                            # PDV item-length 7
    05                                  # presentation-context-ID 5
    02                                  # message control header: data, last fragment
    01 02 03 04 05                      # fragment
""")

RELEASE_RQ = h("""
    05                                  # PDU-type 05H: A-RELEASE-RQ (PS3.8 9.3.6)
    00                                  # reserved
    00000004                            # PDU-length 4
    00000000                            # reserved
""")

RELEASE_RP = h("""
    06                                  # PDU-type 06H: A-RELEASE-RP (PS3.8 9.3.7)
    00                                  # reserved
    00000004                            # PDU-length 4
    00000000                            # reserved
""")

ABORT = h("""
    07                                  # PDU-type 07H: A-ABORT (PS3.8 9.3.8)
    00                                  # reserved
    00000004                            # PDU-length 4
    00                                  # reserved
    00                                  # reserved
    02                                  # source 2: DICOM UL service-provider
    06                                  # reason/diag 6: invalid-PDU-parameter-value
""")

ABORT_USER = h("""
    07 00 00000004                      # A-ABORT, PDU-length 4
    00 00                               # reserved
    00                                  # source 0: DICOM UL service-user
    00                                  # reason 0 (not significant for service-user source)
""")


FIXTURES = [
    pytest.param(ASSOCIATE_RQ_ECHO, ASSOCIATE_RQ_ECHO_PDU, id="associate-rq-echo"),
    pytest.param(ASSOCIATE_RQ_FULL, ASSOCIATE_RQ_FULL_PDU, id="associate-rq-all-sub-items"),
    pytest.param(ASSOCIATE_RQ_NO_MAX_LENGTH, ASSOCIATE_RQ_NO_MAX_LENGTH_PDU, id="associate-rq-no-max-length"),
    pytest.param(ASSOCIATE_AC_FULL, ASSOCIATE_AC_FULL_PDU, id="associate-ac-all-sub-items"),
    pytest.param(ASSOCIATE_RJ, AssociateRJ(1, 1, 7), id="associate-rj"),
    pytest.param(
        PDATA_TWO_PDVS,
        PDataTF(
            (PDV(1, True, True, bytes.fromhex("0000000004000000")), PDV(3, False, False, b"\xaa\xbb\xcc"))
        ),
        id="p-data-tf-two-pdvs",
    ),
    pytest.param(
        PDATA_ONE_PDV, PDataTF((PDV(5, False, True, b"\x01\x02\x03\x04\x05"),)), id="p-data-tf-one-pdv"
    ),
    pytest.param(RELEASE_RQ, ReleaseRQ(), id="release-rq"),
    pytest.param(RELEASE_RP, ReleaseRP(), id="release-rp"),
    pytest.param(ABORT, Abort(2, 6), id="abort-provider"),
    pytest.param(ABORT_USER, Abort(0, 0), id="abort-user"),
]


def test_fixture_lengths_are_self_consistent():
    # The hand-written PDU-length fields match the bytes that follow them.
    for param in FIXTURES:
        raw = param.values[0]
        assert int.from_bytes(raw[2:6], "big") == len(raw) - 6, param.id


@pytest.mark.parametrize(("raw", "expected"), FIXTURES)
def test_decode(raw, expected):
    pdu = decode_bytes(raw)
    assert type(pdu) is type(expected)
    assert pdu == expected
    # decode() on the variable field alone gives the same object.
    assert decode(raw[0], raw[6:]) == expected
    if isinstance(expected, AssociateRQ | AssociateAC):
        # compare=False field: checked on its own.
        assert pdu.user_information.has_max_length == expected.user_information.has_max_length


@pytest.mark.parametrize(("raw", "expected"), FIXTURES)
def test_encode(raw, expected):
    assert encode(expected) == raw


@pytest.mark.parametrize(("raw", "expected"), FIXTURES)
def test_round_trip(raw, expected):
    assert encode(decode_bytes(raw)) == raw
    assert decode_bytes(encode(expected)) == expected


@pytest.mark.parametrize(("raw", "expected"), FIXTURES)
def test_reader_one_byte_at_a_time(raw, expected):
    reader = PDUReader(max_pdata_length=1 << 16)
    out = []
    for i in range(len(raw)):
        reader.feed(raw[i : i + 1])
        pdu = reader.next_pdu()
        if pdu is not None:
            out.append((i, pdu))
        assert reader.next_pdu() is None  # asking again never yields it twice
    assert out == [(len(raw) - 1, expected)]
    assert reader.buffered == 0


def test_reader_whole_stream_of_all_fixtures():
    stream = b"".join(p.values[0] for p in FIXTURES)
    reader = PDUReader(max_pdata_length=1 << 16)
    reader.feed(stream)
    got = []
    while (pdu := reader.next_pdu()) is not None:
        got.append(pdu)
    assert got == [p.values[1] for p in FIXTURES]
    assert reader.buffered == 0


def test_field_values_spelled_out():
    # A few fields asserted one by one, as a reader of PS3.8 would check them.
    rq = decode_bytes(ASSOCIATE_RQ_FULL)
    assert isinstance(rq, AssociateRQ)
    assert (rq.protocol_version, rq.called_ae_title, rq.calling_ae_title) == (1, "ANY-SCP", "STORESCU")
    assert rq.application_context == APP_CONTEXT
    assert [pc.context_id for pc in rq.presentation_contexts] == [1, 3]
    ui = rq.user_information
    assert ui.max_length == 16384 and ui.has_max_length
    assert ui.async_ops_window == AsynchronousOperationsWindow(invoked=5, performed=1)
    assert ui.user_identity_rq is not None and ui.user_identity_rq.identity_type == 2
    assert ui.common_extended_negotiations[0].related_general_sop_classes == (BASIC_TEXT_SR, COMPREHENSIVE_SR)

    ac = decode_bytes(ASSOCIATE_AC_FULL)
    assert isinstance(ac, AssociateAC)
    assert [(pc.context_id, pc.result) for pc in ac.presentation_contexts] == [(1, 0), (3, 4), (5, 3)]
    assert ac.user_information.user_identity_ac == UserIdentityAC(b"token")

    pdata = decode_bytes(PDATA_TWO_PDVS)
    assert isinstance(pdata, PDataTF)
    assert [p.control_header for p in pdata.pdvs] == [0x03, 0x00]


def test_encode_pdata_matches_the_fixture():
    assert encode_pdata(5, False, True, b"\x01\x02\x03\x04\x05") == PDATA_ONE_PDV
    assert encode_pdata(1, True, True, bytes.fromhex("0000000004000000")) == h("""
        04 00 0000000e                  # P-DATA-TF, PDU-length 14
        0000000a 01 03                  # PDV length 10, context 1, command + last
        00 00 00 00 04 00 00 00
    """)
