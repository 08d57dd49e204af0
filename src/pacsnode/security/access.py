"""PS3.15 B.1 / PS3.8 7.1.1: which remote AEs may associate, from where, over what, and for which services."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from pacsnode.config.settings import Service, Settings
from pacsnode.data.uids import VERIFICATION_SOP_CLASS
from pacsnode.dimse.commands import CommandField
from pacsnode.security.credentials import Authenticator, CredentialError, Principal
from pacsnode.security.events import AuditEvent, EventKind, Outcome, Participant, ParticipantObject
from pacsnode.ul.pdu import RejectReason, UserIdentityType

log = logging.getLogger("pacsnode.security")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# PS3.6 Annex A: the SOP classes whose services are not told apart by their command alone.
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"

_ALL_SERVICES: frozenset[Service] = frozenset(
    ("echo", "store", "find", "move", "get", "worklist", "mpps", "commit")
)

# PS3.16 CID 401 (Security Alert Type) and CID 402 (User Authentication Type) codes.
NODE_AUTHENTICATION = ("110126", "DCM", "Node Authentication")
USE_OF_RESTRICTED_FUNCTION = ("110132", "DCM", "Use of Restricted Function")
LOGIN = ("110122", "DCM", "Login")
# RFC 3881 / PS3.15 A.5.1 ParticipantObjectIDTypeCode.
_URI = ("12", "RFC-3881", "URI")
_SOP_CLASS_UID = ("110181", "DCM", "SOP Class UID")
_NODE_ID = ("110182", "DCM", "Node ID")


# ---------------------------------------------------------------- services


def service_of(sop_class: str, command_field: int) -> Service | None:
    """The ``[peers.X] allow`` service a DIMSE request uses (None: none of them).

    PS3.4: C-ECHO is Verification (Annex A); every C-STORE is Storage (Annex B), whatever its SOP
    class; C-FIND on the Modality Worklist model is the Worklist (Annex K), on any other model
    Query (Annex C); C-MOVE and C-GET are Retrieve; N-CREATE/N-SET of MPPS (Annex F); N-ACTION
    and N-EVENT-REPORT of Storage Commitment Push Model (Annex J).
    """
    if command_field == CommandField.C_ECHO_RQ:
        return "echo" if sop_class == VERIFICATION_SOP_CLASS else None
    if command_field == CommandField.C_STORE_RQ:
        return "store"
    if command_field == CommandField.C_FIND_RQ:
        return "worklist" if sop_class == MODALITY_WORKLIST_FIND else "find"
    if command_field == CommandField.C_MOVE_RQ:
        return "move"
    if command_field == CommandField.C_GET_RQ:
        return "get"
    if sop_class == MPPS_SOP_CLASS and command_field in (CommandField.N_CREATE_RQ, CommandField.N_SET_RQ):
        return "mpps"
    if sop_class == STORAGE_COMMITMENT_PUSH and command_field in (
        CommandField.N_ACTION_RQ,
        CommandField.N_EVENT_REPORT_RQ,
    ):
        return "commit"
    return None


# ---------------------------------------------------------------- addresses


def parse_address(text: str) -> IPAddress | None:
    """An IP address as a socket gives it; IPv4-mapped IPv6 (::ffff:a.b.c.d) as IPv4; None if not one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: drop the zone
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve_host(host: str) -> tuple[IPNetwork, ...]:
    """The networks a ``[peers.X] host`` stands for: a network, an address, or a name's addresses.

    A host name is resolved here, once, when the node starts (DNS changes need a restart);
    a name that does not resolve gives no network, so the AE is refused from everywhere.
    """
    if "/" in host:
        return (ipaddress.ip_network(host, strict=False),)
    address = parse_address(host)
    if address is not None:
        return (ipaddress.ip_network(address),)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        log.warning("[peers] host %s does not resolve (%s): that AE is refused until a restart", host, exc)
        return ()
    found: dict[IPNetwork, None] = {}
    for info in infos:
        resolved = parse_address(str(info[4][0]))
        if resolved is not None:
            found[ipaddress.ip_network(resolved)] = None
    return tuple(found)


# ---------------------------------------------------------------- association rules


@dataclass(frozen=True, slots=True)
class KnownAE:
    """A remote AE the node knows: from where it may call, whether over TLS, and what it may use."""

    title: str
    host: str  # as configured ("" for a title of [network] allowed_calling_aets only)
    networks: tuple[IPNetwork, ...] | None  # None: from any address
    tls: bool
    services: frozenset[Service]

    def comes_from(self, address: IPAddress | None) -> bool:
        """Whether ``address`` is one of the AE's (any address when it has no host)."""
        if self.networks is None:
            return True
        return address is not None and any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an association is refused: A-ASSOCIATE-RJ rejected-permanent, service-user, ``reason``."""

    reason: RejectReason
    description: str


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The DIMSE access rules of one node (PS3.15 B.1), from its settings; pure and immutable."""

    ae_title: str
    accept_unknown: bool  # calling AE titles without a [peers.X] table are accepted
    check_called: bool  # the Called AE Title must be ours
    known: Mapping[str, KnownAE]
    identity_mode: Literal["off", "optional", "required"] = "off"

    @classmethod
    def from_settings(
        cls, settings: Settings, resolve: Callable[[str], tuple[IPNetwork, ...]] = resolve_host
    ) -> AccessPolicy:
        """The rules of ``settings``; host names of ``[peers]`` are resolved now (``resolve``)."""
        known: dict[str, KnownAE] = {}
        for title, peer in settings.peers.items():
            known[title] = KnownAE(title, peer.host, resolve(peer.host), peer.tls, frozenset(peer.allow))
        # The older [network] allowed_calling_aets: its titles without a [peers] table are known
        # AEs too, from any address, with every service (it still filters in negotiation).
        for title in settings.network.allowed_calling_aets or ():
            known.setdefault(title, KnownAE(title, "", None, False, _ALL_SERVICES))
        accept_unknown = settings.node.accepts_unknown_peers()
        return cls(
            ae_title=settings.node.aet,
            accept_unknown=accept_unknown,
            check_called=not accept_unknown or settings.network.require_called_aet,
            known=known,
            identity_mode=settings.auth.dimse_user_identity,
        )

    def admit(self, calling: str, called: str, address: str, tls: bool) -> Refusal | None:
        """None when an A-ASSOCIATE-RQ from ``address`` may go on to negotiation, else why not."""
        if self.check_called and called != self.ae_title:
            # PS3.8 Table 9-21: reason 7, called-AE-title-not-recognized.
            return Refusal(
                RejectReason.CALLED_AE_NOT_RECOGNIZED,
                f"called AE title {called!r} is not ours ({self.ae_title})",
            )
        peer = self.known.get(calling)
        if peer is None:
            if self.accept_unknown:
                return None
            # PS3.8 Table 9-21: reason 3, calling-AE-title-not-recognized (PS3.15 B.1).
            return Refusal(
                RejectReason.CALLING_AE_NOT_RECOGNIZED, f"calling AE title {calling!r} is not a known peer"
            )
        if not peer.comes_from(parse_address(address)):
            where = (
                f"not from its [peers.{calling}] host {peer.host}"
                if peer.networks
                else f"and its [peers.{calling}] host {peer.host} did not resolve at start-up"
            )
            return Refusal(
                RejectReason.CALLING_AE_NOT_RECOGNIZED,
                f"calling AE title {calling!r} from {address}, {where}",
            )
        if peer.tls and not tls:
            return Refusal(
                RejectReason.CALLING_AE_NOT_RECOGNIZED,
                f"calling AE title {calling!r} came over plain TCP; [peers.{calling}] tls = true",
            )
        return None

    def allows(self, calling: str, sop_class: str, command_field: int) -> bool:
        """Whether the AE may make this DIMSE request (unknown AEs, once accepted, may make any)."""
        peer = self.known.get(calling)
        if peer is None:
            return True
        service = service_of(sop_class, command_field)
        return service is not None and service in peer.services


# ---------------------------------------------------------------- user identity (PS3.7 D.3.3.7)


@dataclass(frozen=True, slots=True)
class IdentityVerdict:
    """What becomes of a User Identity sub-item: accept or reject; whether credentials were checked."""

    accepted: bool
    user: str = ""
    detail: str = ""
    checked: bool = False  # credentials were checked: audit a User Authentication event
    respond: bool = False  # PS3.7 D.3.3.7.2: a (zero-length) positive response may be given


def check_user_identity(
    mode: Literal["off", "optional", "required"],
    authenticator: Authenticator,
    identity_type: int | None,
    primary: bytes = b"",
    secondary: bytes = b"",
) -> IdentityVerdict:
    """Decide on the user identity of an A-ASSOCIATE-RQ (None: it had none). Blocking (scrypt, JWKS).

    ``required``: a user name with a passcode (type 2) or a JWT (type 5) that checks out;
    ``optional``: an identity sent must check out (type 1: a configured user name), none is fine;
    types this node cannot check (Kerberos, SAML) are ignored when optional, refused when required.
    """
    if mode == "off":
        return IdentityVerdict(True)
    if identity_type is None:
        if mode == "required":
            return IdentityVerdict(
                False, detail="no user identity, and [auth] dimse_user_identity is required"
            )
        return IdentityVerdict(True)
    name = primary.decode("utf-8", "replace")
    principal: Principal
    try:
        if identity_type == UserIdentityType.USERNAME:
            principal = authenticator.username(name)
            if mode == "required":
                return IdentityVerdict(
                    False, name, "a user name without a passcode proves nothing; required needs one", True
                )
        elif identity_type == UserIdentityType.USERNAME_AND_PASSCODE:
            principal = authenticator.password(name, secondary.decode("utf-8", "replace"))
        elif identity_type == UserIdentityType.JWT:
            principal = authenticator.jwt(primary.decode("ascii", "replace"))
        else:
            if mode == "required":
                return IdentityVerdict(False, detail=f"user identity type {identity_type} is not supported")
            return IdentityVerdict(True)  # not understood: as if not sent (PS3.7 D.3.3.7)
    except CredentialError as exc:
        return IdentityVerdict(False, name if identity_type != UserIdentityType.JWT else "", str(exc), True)
    return IdentityVerdict(True, principal.name, principal.method, True, True)


# ---------------------------------------------------------------- audit events (PS3.15 A.5.3)


def _participants(
    who: str, address: str, node_aet: str, *, ae_title: bool, user_name: str = ""
) -> tuple[Participant, ...]:
    return (
        Participant(
            user_id=who,
            requestor=True,
            alternative_user_id=f"AETITLES={who}" if ae_title else "",
            user_name=user_name,
            network_access_point=address,
        ),
        Participant(user_id=node_aet, requestor=False, alternative_user_id=f"AETITLES={node_aet}"),
    )


def association_refused(
    calling: str, called: str, address: str, node_aet: str, description: str
) -> AuditEvent:
    """PS3.15 A.5.3.11 Security Alert, Node Authentication: an association refused by access control."""
    return AuditEvent(
        kind=EventKind.SECURITY_ALERT,
        action="E",
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=description,
        type_codes=(NODE_AUTHENTICATION,),
        participants=_participants(calling, address, node_aet, ae_title=True),
        objects=(
            ParticipantObject(
                type_code=2, id_type=_NODE_ID, object_id=called, description=f"A-ASSOCIATE-RQ to {called}"
            ),
        ),
    )


def restricted_function(
    who: str,
    address: str,
    node_aet: str,
    description: str,
    *,
    sop_class: str = "",
    url: str = "",
    ae_title: bool = True,
) -> AuditEvent:
    """PS3.15 A.5.3.11 Security Alert, Use of Restricted Function: a service or route refused."""
    target = (
        ParticipantObject(type_code=2, id_type=_SOP_CLASS_UID, object_id=sop_class)
        if sop_class
        else ParticipantObject(type_code=2, id_type=_URI, object_id=url)
    )
    return AuditEvent(
        kind=EventKind.SECURITY_ALERT,
        action="E",
        outcome=Outcome.MINOR_FAILURE,
        outcome_description=description,
        type_codes=(USE_OF_RESTRICTED_FUNCTION,),
        participants=_participants(who, address, node_aet, ae_title=ae_title),
        objects=(target,),
    )


def user_authentication(
    user: str, address: str, node_aet: str, *, success: bool, description: str = "", calling: str = ""
) -> AuditEvent:
    """PS3.15 A.5.3.12 User Authentication, Login: a credential check, successful (0) or not (4)."""
    who = user or calling or "?"
    participants = (
        Participant(
            user_id=who,
            requestor=True,
            alternative_user_id=f"AETITLES={calling}" if calling else "",
            user_name=user,
            network_access_point=address,
        ),
        Participant(user_id=node_aet, requestor=False, alternative_user_id=f"AETITLES={node_aet}"),
    )
    return AuditEvent(
        kind=EventKind.USER_AUTHENTICATION,
        action="E",
        outcome=Outcome.SUCCESS if success else Outcome.MINOR_FAILURE,
        outcome_description=description,
        type_codes=(LOGIN,),
        participants=participants,
    )
