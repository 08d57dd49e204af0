"""PS3.8 9.3 and Annex D: the seven Upper Layer PDUs, their items and sub-items, encoded and decoded."""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from pacsnode.ul.errors import AbortReason, AbortSource, RemoteProtocolError

_HEADER = struct.Struct(">BBI")  # PS3.8 9.3.1: PDU-type, reserved, PDU-length
_ITEM_HEADER = struct.Struct(">BBH")  # PS3.8 9.3.2.x: item-type, reserved, item-length
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PDV_HEADER = struct.Struct(">IBB")  # PS3.8 9.3.5.1: item-length, context ID, control header
_PDATA_ONE = struct.Struct(">BBIIBB")

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
ASSOCIATE_FIXED_LENGTH = 68  # PS3.8 9.3.2: bytes 7-74 of the A-ASSOCIATE-RQ/AC PDU
HARD_PDU_CAP = 64 << 20  # never buffer a PDU larger than this, whatever was advertised


class PDUType(enum.IntEnum):
    """PS3.8 9.3.1: the PDU-type field."""

    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


class ItemType(enum.IntEnum):
    """PS3.8 9.3.2 and Annex D: item and sub-item types of the A-ASSOCIATE PDUs."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


class ContextResult(enum.IntEnum):
    """PS3.8 Table 9-18: Result/Reason of a presentation context in the A-ASSOCIATE-AC."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class RejectResult(enum.IntEnum):
    """PS3.8 Table 9-21: Result field of the A-ASSOCIATE-RJ PDU."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(enum.IntEnum):
    """PS3.8 Table 9-21: Source field of the A-ASSOCIATE-RJ PDU."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(enum.IntEnum):
    """PS3.8 Table 9-21: Reason/Diag. of the A-ASSOCIATE-RJ PDU (meaning depends on the source)."""

    # source 1, service-user
    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7
    # source 2, service-provider (ACSE): 1 no-reason-given, 2 protocol-version-not-supported
    PROTOCOL_VERSION_NOT_SUPPORTED = 2
    # source 3, service-provider (presentation): 1 temporary-congestion, 2 local-limit-exceeded
    TEMPORARY_CONGESTION = 1
    LOCAL_LIMIT_EXCEEDED = 2


class UserIdentityType(enum.IntEnum):
    """PS3.7 Table D.3-14: User-Identity-Type."""

    USERNAME = 1
    USERNAME_AND_PASSCODE = 2
    KERBEROS = 3
    SAML = 4
    JWT = 5


# ---------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """PS3.8 9.3.2.2: a proposed presentation context."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """PS3.8 9.3.3.2: the answer to one proposed presentation context."""

    context_id: int
    result: int
    transfer_syntax: str = ""


@dataclass(frozen=True, slots=True)
class AsynchronousOperationsWindow:
    """PS3.7 D.3.3.3: maximum operations invoked and performed."""

    invoked: int
    performed: int


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """PS3.7 D.3.3.4: SCP/SCU role selection for one SOP class."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class SOPClassExtendedNegotiation:
    """PS3.7 D.3.3.5: service-class-application-information for one SOP class."""

    sop_class_uid: str
    information: bytes


@dataclass(frozen=True, slots=True)
class SOPClassCommonExtendedNegotiation:
    """PS3.7 D.3.3.6: service class and related general SOP classes of a SOP class."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """PS3.7 D.3.3.7.1: the requestor's user identity."""

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""


@dataclass(frozen=True, slots=True)
class UserIdentityAC:
    """PS3.7 D.3.3.7.2: the acceptor's server response to a user identity."""

    server_response: bytes


@dataclass(frozen=True, slots=True)
class UserInformation:
    """PS3.8 9.3.2.3 and Annex D: the User Information item and its sub-items."""

    max_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_ops_window: AsynchronousOperationsWindow | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    extended_negotiations: tuple[SOPClassExtendedNegotiation, ...] = ()
    common_extended_negotiations: tuple[SOPClassCommonExtendedNegotiation, ...] = ()
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: UserIdentityAC | None = None
    unknown_items: tuple[tuple[int, bytes], ...] = ()
    # PS3.8 D.1: absent Maximum Length sub-item is not the same as 0; remember which.
    has_max_length: bool = field(default=True, compare=False)


# ---------------------------------------------------------------- PDUs


@dataclass(frozen=True, slots=True)
class AssociateRQ:
    """PS3.8 9.3.2: A-ASSOCIATE-RQ PDU."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation
    application_context: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateAC:
    """PS3.8 9.3.3: A-ASSOCIATE-AC PDU."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation
    application_context: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateRJ:
    """PS3.8 9.3.4: A-ASSOCIATE-RJ PDU."""

    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class PDV:
    """PS3.8 9.3.5.1 and E.2: one presentation data value item."""

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes

    @property
    def control_header(self) -> int:
        """PS3.8 E.2: bit 0 command/data, bit 1 last/not-last fragment."""
        return (1 if self.is_command else 0) | (2 if self.is_last else 0)


@dataclass(frozen=True, slots=True)
class PDataTF:
    """PS3.8 9.3.5: P-DATA-TF PDU."""

    pdvs: tuple[PDV, ...]


@dataclass(frozen=True, slots=True)
class ReleaseRQ:
    """PS3.8 9.3.6: A-RELEASE-RQ PDU."""


@dataclass(frozen=True, slots=True)
class ReleaseRP:
    """PS3.8 9.3.7: A-RELEASE-RP PDU."""


@dataclass(frozen=True, slots=True)
class Abort:
    """PS3.8 9.3.8: A-ABORT PDU."""

    source: int = AbortSource.SERVICE_USER
    reason: int = AbortReason.NOT_SPECIFIED


PDU = AssociateRQ | AssociateAC | AssociateRJ | PDataTF | ReleaseRQ | ReleaseRP | Abort


# ---------------------------------------------------------------- encoding


def _ae(title: str) -> bytes:
    # PS3.8 9.3.2: 16 characters, space padded; PS3.5 6.2 AE VR.
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title longer than 16 characters: {title!r}")
    return raw.ljust(16, b" ")


def _uid(uid: str) -> bytes:
    # PS3.8 9.3.2.2.1 / D.3.3.2: UIDs are not padded in items (PS3.8 Annex F).
    return uid.encode("ascii")


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} longer than 65535 bytes")
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value


def _u16_prefixed(value: bytes) -> bytes:
    return _U16.pack(len(value)) + value


def _encode_user_information(ui: UserInformation) -> bytes:
    parts = []
    if ui.has_max_length:
        parts.append(_item(ItemType.MAXIMUM_LENGTH, _U32.pack(ui.max_length)))
    parts.append(_item(ItemType.IMPLEMENTATION_CLASS_UID, _uid(ui.implementation_class_uid)))
    if ui.async_ops_window is not None:
        w = ui.async_ops_window
        parts.append(
            _item(ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW, struct.pack(">HH", w.invoked, w.performed))
        )
    for role in ui.role_selections:
        parts.append(
            _item(
                ItemType.ROLE_SELECTION,
                _u16_prefixed(_uid(role.sop_class_uid)) + bytes((int(role.scu_role), int(role.scp_role))),
            )
        )
    if ui.implementation_version_name:
        parts.append(
            _item(ItemType.IMPLEMENTATION_VERSION_NAME, ui.implementation_version_name.encode("ascii"))
        )
    for ext in ui.extended_negotiations:
        parts.append(
            _item(
                ItemType.SOP_CLASS_EXTENDED_NEGOTIATION,
                _u16_prefixed(_uid(ext.sop_class_uid)) + ext.information,
            )
        )
    for common in ui.common_extended_negotiations:
        related = b"".join(_u16_prefixed(_uid(u)) for u in common.related_general_sop_classes)
        value = (
            _u16_prefixed(_uid(common.sop_class_uid))
            + _u16_prefixed(_uid(common.service_class_uid))
            + _u16_prefixed(related)
        )
        # PS3.7 D.3.3.6.1: byte 2 is the sub-item version (0), not a reserved byte.
        parts.append(_ITEM_HEADER.pack(ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION, 0, len(value)) + value)
    if ui.user_identity_rq is not None:
        uid_rq = ui.user_identity_rq
        parts.append(
            _item(
                ItemType.USER_IDENTITY_RQ,
                bytes((uid_rq.identity_type, int(uid_rq.positive_response_requested)))
                + _u16_prefixed(uid_rq.primary_field)
                + _u16_prefixed(uid_rq.secondary_field),
            )
        )
    if ui.user_identity_ac is not None:
        parts.append(_item(ItemType.USER_IDENTITY_AC, _u16_prefixed(ui.user_identity_ac.server_response)))
    for item_type, raw in ui.unknown_items:
        parts.append(_item(item_type, raw))
    return _item(ItemType.USER_INFORMATION, b"".join(parts))


def _encode_associate(
    pdu_type: int,
    pdu: AssociateRQ | AssociateAC,
) -> bytes:
    body = [
        struct.pack(">HH", pdu.protocol_version, 0),
        _ae(pdu.called_ae_title),
        _ae(pdu.calling_ae_title),
        bytes(32),
        _item(ItemType.APPLICATION_CONTEXT, _uid(pdu.application_context)),
    ]
    for pc in pdu.presentation_contexts:
        if isinstance(pc, PresentationContextRQ):
            subs = _item(ItemType.ABSTRACT_SYNTAX, _uid(pc.abstract_syntax)) + b"".join(
                _item(ItemType.TRANSFER_SYNTAX, _uid(ts)) for ts in pc.transfer_syntaxes
            )
            body.append(_item(ItemType.PRESENTATION_CONTEXT_RQ, bytes((pc.context_id, 0, 0, 0)) + subs))
        else:
            # PS3.8 9.3.3.2: the transfer syntax sub-item is always present; its
            # value is not significant unless the context was accepted.
            subs = _item(ItemType.TRANSFER_SYNTAX, _uid(pc.transfer_syntax))
            body.append(
                _item(ItemType.PRESENTATION_CONTEXT_AC, bytes((pc.context_id, 0, pc.result, 0)) + subs)
            )
    body.append(_encode_user_information(pdu.user_information))
    payload = b"".join(body)
    return _HEADER.pack(pdu_type, 0, len(payload)) + payload


def encode_pdata(context_id: int, is_command: bool, is_last: bool, data: bytes) -> bytes:
    """Encode a P-DATA-TF PDU holding exactly one PDV (the hot path)."""
    n = len(data)
    header = (1 if is_command else 0) | (2 if is_last else 0)
    return _PDATA_ONE.pack(PDUType.P_DATA_TF, 0, n + 6, n + 2, context_id, header) + data


def encode(pdu: PDU) -> bytes:
    """Encode any PDU to its bytes on the wire."""
    if isinstance(pdu, PDataTF):
        body = b"".join(
            _PDV_HEADER.pack(len(p.data) + 2, p.context_id, p.control_header) + p.data for p in pdu.pdvs
        )
        return _HEADER.pack(PDUType.P_DATA_TF, 0, len(body)) + body
    if isinstance(pdu, AssociateRQ):
        return _encode_associate(PDUType.A_ASSOCIATE_RQ, pdu)
    if isinstance(pdu, AssociateAC):
        return _encode_associate(PDUType.A_ASSOCIATE_AC, pdu)
    if isinstance(pdu, AssociateRJ):
        return _HEADER.pack(PDUType.A_ASSOCIATE_RJ, 0, 4) + bytes((0, pdu.result, pdu.source, pdu.reason))
    if isinstance(pdu, ReleaseRQ):
        return _HEADER.pack(PDUType.A_RELEASE_RQ, 0, 4) + bytes(4)
    if isinstance(pdu, ReleaseRP):
        return _HEADER.pack(PDUType.A_RELEASE_RP, 0, 4) + bytes(4)
    if isinstance(pdu, Abort):
        return _HEADER.pack(PDUType.A_ABORT, 0, 4) + bytes((0, 0, pdu.source, pdu.reason))
    raise TypeError(f"not a PDU: {pdu!r}")


# ---------------------------------------------------------------- decoding


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, AbortReason.INVALID_PDU_PARAMETER_VALUE)


def _text(raw: bytes | memoryview) -> str:
    # Latin-1 never fails; the negotiation layer judges the characters.
    return bytes(raw).decode("latin-1")


def _uid_text(raw: bytes | memoryview) -> str:
    # PS3.8 Annex F: a UID may have been padded with a trailing NUL by some peers.
    return _text(raw).rstrip("\x00 ")


def _iter_items(buf: memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    """Yield (item-type, value) pairs; every item length is checked against its parent."""
    pos = 0
    end = len(buf)
    while pos < end:
        if end - pos < 4:
            raise _invalid(f"{what}: {end - pos} trailing byte(s), too short for an item header")
        item_type, _, length = _ITEM_HEADER.unpack_from(buf, pos)
        pos += 4
        if length > end - pos:
            raise _invalid(
                f"{what}: item 0x{item_type:02X} length {length} exceeds the {end - pos} "
                "byte(s) left in its parent"
            )
        yield item_type, buf[pos : pos + length]
        pos += length


def _u16_field(buf: memoryview, pos: int, what: str) -> tuple[memoryview, int]:
    if len(buf) - pos < 2:
        raise _invalid(f"{what}: missing length field")
    (n,) = _U16.unpack_from(buf, pos)
    pos += 2
    if n > len(buf) - pos:
        raise _invalid(f"{what}: field length {n} exceeds the {len(buf) - pos} byte(s) left")
    return buf[pos : pos + n], pos + n


def _decode_user_information(buf: memoryview) -> UserInformation:
    max_length = 0
    has_max_length = False
    impl_uid = ""
    version = ""
    window: AsynchronousOperationsWindow | None = None
    roles: list[RoleSelection] = []
    exts: list[SOPClassExtendedNegotiation] = []
    commons: list[SOPClassCommonExtendedNegotiation] = []
    ui_rq: UserIdentityRQ | None = None
    ui_ac: UserIdentityAC | None = None
    unknown: list[tuple[int, bytes]] = []
    for item_type, value in _iter_items(buf, "user information"):
        if item_type == ItemType.MAXIMUM_LENGTH:
            if len(value) != 4:
                raise _invalid(f"maximum length sub-item has length {len(value)}, not 4")
            (max_length,) = _U32.unpack_from(value)
            has_max_length = True
        elif item_type == ItemType.IMPLEMENTATION_CLASS_UID:
            impl_uid = _uid_text(value)
        elif item_type == ItemType.IMPLEMENTATION_VERSION_NAME:
            version = _text(value).strip()
        elif item_type == ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW:
            if len(value) != 4:
                raise _invalid(f"asynchronous operations window has length {len(value)}, not 4")
            invoked, performed = struct.unpack_from(">HH", value)
            window = AsynchronousOperationsWindow(invoked, performed)
        elif item_type == ItemType.ROLE_SELECTION:
            uid, pos = _u16_field(value, 0, "role selection")
            if len(value) - pos != 2:
                raise _invalid("role selection: SCU and SCP role fields must follow the UID")
            roles.append(RoleSelection(_uid_text(uid), value[pos] == 1, value[pos + 1] == 1))
        elif item_type == ItemType.SOP_CLASS_EXTENDED_NEGOTIATION:
            uid, pos = _u16_field(value, 0, "SOP class extended negotiation")
            exts.append(SOPClassExtendedNegotiation(_uid_text(uid), bytes(value[pos:])))
        elif item_type == ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION:
            what = "SOP class common extended negotiation"
            sop, pos = _u16_field(value, 0, what)
            service, pos = _u16_field(value, pos, what)
            related_raw, pos = _u16_field(value, pos, what)
            if pos != len(value):
                raise _invalid(f"{what}: {len(value) - pos} unexpected trailing byte(s)")
            related: list[str] = []
            rpos = 0
            while rpos < len(related_raw):
                uid, rpos = _u16_field(related_raw, rpos, what)
                related.append(_uid_text(uid))
            commons.append(
                SOPClassCommonExtendedNegotiation(_uid_text(sop), _uid_text(service), tuple(related))
            )
        elif item_type == ItemType.USER_IDENTITY_RQ:
            what = "user identity"
            if len(value) < 2:
                raise _invalid(f"{what}: too short")
            primary, pos = _u16_field(value, 2, what)
            secondary, pos = _u16_field(value, pos, what) if pos < len(value) else (value[0:0], pos)
            if pos != len(value):
                raise _invalid(f"{what}: {len(value) - pos} unexpected trailing byte(s)")
            ui_rq = UserIdentityRQ(value[0], value[1] == 1, bytes(primary), bytes(secondary))
        elif item_type == ItemType.USER_IDENTITY_AC:
            response, pos = _u16_field(value, 0, "user identity response")
            if pos != len(value):
                raise _invalid("user identity response: unexpected trailing bytes")
            ui_ac = UserIdentityAC(bytes(response))
        else:
            # PS3.7 D.3.3: unrecognised user information sub-items are ignored.
            unknown.append((item_type, bytes(value)))
    return UserInformation(
        max_length=max_length,
        implementation_class_uid=impl_uid,
        implementation_version_name=version,
        async_ops_window=window,
        role_selections=tuple(roles),
        extended_negotiations=tuple(exts),
        common_extended_negotiations=tuple(commons),
        user_identity_rq=ui_rq,
        user_identity_ac=ui_ac,
        unknown_items=tuple(unknown),
        has_max_length=has_max_length,
    )


def _decode_associate(pdu_type: int, body: memoryview) -> AssociateRQ | AssociateAC:
    name = "A-ASSOCIATE-RQ" if pdu_type == PDUType.A_ASSOCIATE_RQ else "A-ASSOCIATE-AC"
    if len(body) < ASSOCIATE_FIXED_LENGTH:
        raise _invalid(f"{name}: {len(body)} bytes, shorter than its fixed fields")
    (version,) = _U16.unpack_from(body, 0)
    called = _text(body[4:20]).strip(" ")
    calling = _text(body[20:36]).strip(" ")
    app_context: str | None = None
    rq_contexts: list[PresentationContextRQ] = []
    ac_contexts: list[PresentationContextAC] = []
    user_info: UserInformation | None = None
    for item_type, value in _iter_items(body[ASSOCIATE_FIXED_LENGTH:], name):
        if item_type == ItemType.APPLICATION_CONTEXT:
            if app_context is not None:
                raise RemoteProtocolError(
                    f"{name}: more than one application context item",
                    AbortReason.UNEXPECTED_PDU_PARAMETER,
                )
            app_context = _uid_text(value)
        elif item_type == ItemType.PRESENTATION_CONTEXT_RQ and pdu_type == PDUType.A_ASSOCIATE_RQ:
            if len(value) < 4:
                raise _invalid(f"{name}: presentation context item too short")
            abstract: str | None = None
            syntaxes: list[str] = []
            for sub_type, sub in _iter_items(value[4:], "presentation context"):
                if sub_type == ItemType.ABSTRACT_SYNTAX:
                    if abstract is not None:
                        raise RemoteProtocolError(
                            "presentation context: more than one abstract syntax",
                            AbortReason.UNEXPECTED_PDU_PARAMETER,
                        )
                    abstract = _uid_text(sub)
                elif sub_type == ItemType.TRANSFER_SYNTAX:
                    syntaxes.append(_uid_text(sub))
                else:
                    raise RemoteProtocolError(
                        f"presentation context: unrecognised sub-item 0x{sub_type:02X}",
                        AbortReason.UNRECOGNIZED_PDU_PARAMETER,
                    )
            if abstract is None:
                raise _invalid(f"presentation context {value[0]}: no abstract syntax sub-item")
            rq_contexts.append(PresentationContextRQ(value[0], abstract, tuple(syntaxes)))
        elif item_type == ItemType.PRESENTATION_CONTEXT_AC and pdu_type == PDUType.A_ASSOCIATE_AC:
            if len(value) < 4:
                raise _invalid(f"{name}: presentation context item too short")
            ts = ""
            for sub_type, sub in _iter_items(value[4:], "presentation context"):
                if sub_type != ItemType.TRANSFER_SYNTAX:
                    raise RemoteProtocolError(
                        f"presentation context: unexpected sub-item 0x{sub_type:02X}",
                        AbortReason.UNEXPECTED_PDU_PARAMETER,
                    )
                ts = _uid_text(sub)
            ac_contexts.append(PresentationContextAC(value[0], value[2], ts))
        elif item_type == ItemType.USER_INFORMATION:
            if user_info is not None:
                raise RemoteProtocolError(
                    f"{name}: more than one user information item",
                    AbortReason.UNEXPECTED_PDU_PARAMETER,
                )
            user_info = _decode_user_information(value)
        else:
            raise RemoteProtocolError(
                f"{name}: unrecognised item type 0x{item_type:02X}",
                AbortReason.UNRECOGNIZED_PDU_PARAMETER,
            )
    if app_context is None:
        raise _invalid(f"{name}: no application context item")
    if user_info is None:
        raise _invalid(f"{name}: no user information item")
    if pdu_type == PDUType.A_ASSOCIATE_RQ:
        return AssociateRQ(called, calling, tuple(rq_contexts), user_info, app_context, version)
    return AssociateAC(called, calling, tuple(ac_contexts), user_info, app_context, version)


def _decode_pdata(body: memoryview) -> PDataTF:
    pdvs: list[PDV] = []
    pos = 0
    end = len(body)
    unpack = _PDV_HEADER.unpack_from
    while pos < end:
        if end - pos < 6:
            raise _invalid(f"P-DATA-TF: {end - pos} trailing byte(s), too short for a PDV")
        length, context_id, header = unpack(body, pos)
        if length < 2 or length > end - pos - 4:
            raise _invalid(
                f"P-DATA-TF: PDV item length {length} does not fit the {end - pos - 4} byte(s) left"
            )
        if header & 0xFC:
            raise _invalid(f"P-DATA-TF: reserved bits set in message control header 0x{header:02X}")
        pdvs.append(
            PDV(context_id, bool(header & 1), bool(header & 2), bytes(body[pos + 6 : pos + 4 + length]))
        )
        pos += 4 + length
    if not pdvs:
        raise _invalid("P-DATA-TF: no presentation data value item")
    return PDataTF(tuple(pdvs))


def _decode_four(pdu_type: int, body: memoryview) -> PDU:
    if len(body) != 4:
        raise _invalid(f"{PDUType(pdu_type).name}: length {len(body)}, not 4")
    if pdu_type == PDUType.A_ASSOCIATE_RJ:
        return AssociateRJ(body[1], body[2], body[3])
    if pdu_type == PDUType.A_RELEASE_RQ:
        return ReleaseRQ()
    if pdu_type == PDUType.A_RELEASE_RP:
        return ReleaseRP()
    return Abort(body[2], body[3])


def decode(pdu_type: int, body: bytes | memoryview) -> PDU:
    """Decode one PDU from its type and variable field; raise RemoteProtocolError if malformed."""
    view = memoryview(body)
    if pdu_type == PDUType.P_DATA_TF:
        return _decode_pdata(view)
    if pdu_type in (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC):
        return _decode_associate(pdu_type, view)
    if pdu_type in (PDUType.A_ASSOCIATE_RJ, PDUType.A_RELEASE_RQ, PDUType.A_RELEASE_RP, PDUType.A_ABORT):
        return _decode_four(pdu_type, view)
    raise RemoteProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", AbortReason.UNRECOGNIZED_PDU)


def decode_bytes(raw: bytes) -> PDU:
    """Decode exactly one whole PDU (header included); for tests and tools."""
    reader = PDUReader(max_pdata_length=0, max_other_length=len(raw))
    reader.feed(raw)
    pdu = reader.next_pdu()
    if pdu is None or reader.buffered:
        raise _invalid("not exactly one PDU")
    return pdu


class PDUReader:
    """Cut a byte stream into PDUs, checking each length against our limits before buffering it.

    ``max_pdata_length`` is the Maximum Length we advertised (PS3.8 D.1; 0 means no
    limit); ``max_other_length`` bounds every other PDU, which no peer needs large.
    """

    __slots__ = ("_buf", "_need", "_type", "max_other_length", "max_pdata_length")

    def __init__(self, max_pdata_length: int, max_other_length: int = 1 << 20) -> None:
        self.max_pdata_length = max_pdata_length
        self.max_other_length = max_other_length
        self._buf = bytearray()
        self._type = -1
        self._need = 6

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole PDU."""
        return len(self._buf)

    def _check_header(self, pdu_type: int, length: int) -> None:
        if pdu_type not in _KNOWN_TYPES:
            # PS3.8 9.3.1 / 9.3.8: unrecognised PDU type -> A-ABORT reason 1.
            raise RemoteProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", AbortReason.UNRECOGNIZED_PDU)
        if pdu_type == PDUType.P_DATA_TF:
            # PS3.8 D.1: a P-DATA-TF may not exceed the Maximum Length we advertised.
            # With no advertised limit (0) a hard cap still bounds what we buffer.
            limit = self.max_pdata_length or HARD_PDU_CAP
            if length > limit:
                raise _invalid(f"P-DATA-TF of {length} bytes exceeds our maximum PDU length {limit}")
        elif length > self.max_other_length:
            raise _invalid(
                f"{PDUType(pdu_type).name} of {length} bytes exceeds our limit {self.max_other_length}"
            )

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the transport."""
        self._buf += data

    def next_pdu(self) -> PDU | None:
        """Return the next whole PDU, or None until more bytes arrive; raise on bad input."""
        buf = self._buf
        if self._type < 0:
            if len(buf) < 6:
                return None
            pdu_type, _, length = _HEADER.unpack_from(buf, 0)
            self._check_header(pdu_type, length)
            self._type = pdu_type
            self._need = 6 + length
        need = self._need
        if len(buf) < need:
            return None
        pdu_type = self._type
        self._type = -1
        self._need = 6
        if pdu_type == PDUType.P_DATA_TF:
            # Each PDV value is copied once, straight out of the buffer (its values are bytes:
            # no view of the buffer outlives this block, which the del below needs).
            try:
                with memoryview(buf) as view:
                    pdata = _decode_pdata(view[6:need])
            except BaseException:
                # The error's traceback still holds views of the buffer: start a new one (the
                # association is aborted anyway; nothing after a malformed PDU is read).
                self._buf = bytearray()
                raise
            del buf[:need]
            return pdata
        body = bytes(buf[6:need])
        del buf[:need]
        return decode(pdu_type, body)


_KNOWN_TYPES = frozenset(int(t) for t in PDUType)
