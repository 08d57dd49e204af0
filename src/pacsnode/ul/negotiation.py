"""PS3.8 7.1 and PS3.7 Annex D.3: association negotiation as pure functions, acceptor and requestor."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pacsnode.ul.errors import RemoteProtocolError
from pacsnode.ul.pdu import (
    DICOM_APPLICATION_CONTEXT,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    AsynchronousOperationsWindow,
    ContextResult,
    PresentationContextAC,
    PresentationContextRQ,
    RejectReason,
    RejectResult,
    RejectSource,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)

# ---------------------------------------------------------------- shared results


@dataclass(frozen=True, slots=True)
class NegotiatedContext:
    """An accepted presentation context; the roles are those of the association requestor."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    requestor_is_scu: bool = True
    requestor_is_scp: bool = False


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What both sides agreed: contexts, PDU lengths, identities, extended negotiation."""

    called_ae_title: str
    calling_ae_title: str
    contexts: Mapping[int, NegotiatedContext]
    peer_max_pdu_length: int
    our_max_pdu_length: int
    peer_implementation_class_uid: str = ""
    peer_implementation_version_name: str = ""
    user_identity: UserIdentityRQ | None = None
    user_identity_response: bytes | None = None
    # SOP Class UID -> service-class-application-information (requestor's, PS3.7 D.3.3.5)
    extended_negotiation: Mapping[str, bytes] = field(default_factory=dict)
    # SOP Class UID -> the acceptor's answer (PS3.7 D.3.3.5), when it gave one
    extended_negotiation_accepted: Mapping[str, bytes] = field(default_factory=dict)
    common_extended_negotiation: Mapping[str, SOPClassCommonExtendedNegotiation] = field(default_factory=dict)
    rejected_contexts: Mapping[int, int] = field(default_factory=dict)
    # PS3.8 7.1.1.8 Calling Presentation Address: the requestor's "host:port" as the acceptor's
    # shell saw the connection ("" when not known); the audit trail names it (PS3.15 A.5).
    calling_presentation_address: str = ""

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None
    ) -> NegotiatedContext | None:
        """The first accepted context for a SOP class (and transfer syntax, if given)."""
        for ctx in self.contexts.values():
            if ctx.abstract_syntax == abstract_syntax and (
                transfer_syntax is None or ctx.transfer_syntax == transfer_syntax
            ):
                return ctx
        return None


# ---------------------------------------------------------------- acceptor

_EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"


@dataclass(frozen=True, slots=True)
class SOPClassSupport:
    """What the acceptor offers for one abstract syntax (SOP class)."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    # PS3.7 D.3.3.4: roles the association requestor may take for this SOP class.
    requestor_may_be_scu: bool = True
    requestor_may_be_scp: bool = False


@dataclass(frozen=True, slots=True)
class UserIdentityDecision:
    """A policy's answer to a PS3.7 D.3.3.7 user identity."""

    accepted: bool
    server_response: bytes = b""


UserIdentityPolicy = Callable[[UserIdentityRQ, str], UserIdentityDecision]
ExtendedNegotiationPolicy = Callable[[str, bytes], bytes | None]


@dataclass(frozen=True, slots=True)
class AcceptorPolicy:
    """Everything the acceptor needs to answer an A-ASSOCIATE-RQ."""

    ae_title: str
    supported: Mapping[str, SOPClassSupport]
    implementation_class_uid: str
    implementation_version_name: str = ""
    max_pdu_length: int = 262_144
    # Global preference order; empty keeps the requestor's order of proposal.
    transfer_syntax_preference: tuple[str, ...] = ()
    require_called_ae_title: bool = False
    allowed_calling_ae_titles: frozenset[str] | None = None
    user_identity: UserIdentityPolicy | None = None
    extended_negotiation: ExtendedNegotiationPolicy | None = None


def _reject(result: RejectResult, source: RejectSource, reason: RejectReason) -> AssociateRJ:
    return AssociateRJ(int(result), int(source), int(reason))


def _choose_transfer_syntax(
    proposed: Sequence[str], supported: Sequence[str], preference: Sequence[str]
) -> str | None:
    acceptable = [ts for ts in proposed if ts in supported]
    if not acceptable:
        return None
    for ts in preference:
        if ts in acceptable:
            return ts
    # PS3.5 A.3: Explicit VR Big Endian is retired; take it only when nothing else fits.
    for ts in acceptable:
        if ts != _EXPLICIT_VR_BIG_ENDIAN:
            return ts
    return acceptable[0]


def _valid_ae_title(title: str) -> bool:
    # PS3.5 Table 6.2-1 AE: no backslash, no control characters, 1-16 characters.
    return 0 < len(title) <= 16 and all(" " <= c <= "~" and c != "\\" for c in title)


def negotiate(
    rq: AssociateRQ,
    policy: AcceptorPolicy,
    *,
    at_association_limit: bool = False,
    congested: bool = False,
    admit: Callable[[AssociateRQ], AssociateRJ | None] | None = None,
) -> tuple[AssociateAC | AssociateRJ, Negotiated | None]:
    """Answer an A-ASSOCIATE-RQ: an A-ASSOCIATE-AC with what was agreed, or an A-ASSOCIATE-RJ.

    ``admit`` is the caller's access control (PS3.15 B.1: it knows the peer's address and
    transport), consulted after the AE title checks: an A-ASSOCIATE-RJ it returns is the answer.
    """
    if not rq.protocol_version & 1:
        # PS3.8 9.3.2: bit 0 of the protocol version must be set.
        return _reject(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_PROVIDER_ACSE,
            RejectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
        ), None
    if rq.application_context != DICOM_APPLICATION_CONTEXT:
        # PS3.7 A.2.1: the only DICOM application context name.
        return _reject(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED,
        ), None
    if not _valid_ae_title(rq.called_ae_title) or (
        policy.require_called_ae_title and rq.called_ae_title != policy.ae_title
    ):
        return _reject(
            RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.CALLED_AE_NOT_RECOGNIZED
        ), None
    if not _valid_ae_title(rq.calling_ae_title) or (
        policy.allowed_calling_ae_titles is not None
        and rq.calling_ae_title not in policy.allowed_calling_ae_titles
    ):
        return _reject(
            RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.CALLING_AE_NOT_RECOGNIZED
        ), None
    if admit is not None:
        refused = admit(rq)
        if refused is not None:
            return refused, None
    if congested:
        return _reject(
            RejectResult.TRANSIENT,
            RejectSource.SERVICE_PROVIDER_PRESENTATION,
            RejectReason.TEMPORARY_CONGESTION,
        ), None
    if at_association_limit:
        return _reject(
            RejectResult.TRANSIENT,
            RejectSource.SERVICE_PROVIDER_PRESENTATION,
            RejectReason.LOCAL_LIMIT_EXCEEDED,
        ), None

    ui = rq.user_information
    identity_response: bytes | None = None
    if ui.user_identity_rq is not None and policy.user_identity is not None:
        decision = policy.user_identity(ui.user_identity_rq, rq.calling_ae_title)
        if not decision.accepted:
            # PS3.7 D.3.3.7.3: a refused identity rejects the association.
            return _reject(
                RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.NO_REASON_GIVEN
            ), None
        if ui.user_identity_rq.positive_response_requested:
            identity_response = decision.server_response

    proposed_roles = {r.sop_class_uid: r for r in ui.role_selections}
    answered_roles: dict[str, RoleSelection] = {}
    results: list[PresentationContextAC] = []
    accepted: dict[int, NegotiatedContext] = {}
    rejected: dict[int, int] = {}
    seen_ids: set[int] = set()
    for pc in rq.presentation_contexts:
        if pc.context_id in seen_ids:
            continue  # PS3.8 9.3.2.2: IDs are unique; answer the first only
        seen_ids.add(pc.context_id)
        result, ts = _negotiate_context(pc, policy, proposed_roles, answered_roles)
        results.append(PresentationContextAC(pc.context_id, result, ts or ""))
        if result == ContextResult.ACCEPTANCE and ts is not None:
            role = answered_roles.get(pc.abstract_syntax)
            accepted[pc.context_id] = NegotiatedContext(
                pc.context_id,
                pc.abstract_syntax,
                ts,
                requestor_is_scu=role.scu_role if role else True,
                requestor_is_scp=role.scp_role if role else False,
            )
        else:
            rejected[pc.context_id] = result

    requested_ext = {e.sop_class_uid: e.information for e in ui.extended_negotiations}
    answered_ext: dict[str, bytes] = {}
    if policy.extended_negotiation is not None:
        for sop, info in requested_ext.items():
            if sop in policy.supported:
                answer = policy.extended_negotiation(sop, info)
                if answer is not None:
                    answered_ext[sop] = answer

    ac_ui = UserInformation(
        max_length=policy.max_pdu_length,
        implementation_class_uid=policy.implementation_class_uid,
        implementation_version_name=policy.implementation_version_name,
        # PS3.7 D.3.3.3: we perform operations one at a time.
        async_ops_window=AsynchronousOperationsWindow(1, 1) if ui.async_ops_window else None,
        role_selections=tuple(answered_roles.values()),
        extended_negotiations=tuple(
            SOPClassExtendedNegotiation(sop, info) for sop, info in answered_ext.items()
        ),
        user_identity_ac=UserIdentityAC(identity_response) if identity_response is not None else None,
    )
    ac = AssociateAC(
        rq.called_ae_title,
        rq.calling_ae_title,
        tuple(results),
        ac_ui,
        DICOM_APPLICATION_CONTEXT,
        1,
    )
    negotiated = Negotiated(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        contexts=accepted,
        peer_max_pdu_length=ui.max_length,
        our_max_pdu_length=policy.max_pdu_length,
        peer_implementation_class_uid=ui.implementation_class_uid,
        peer_implementation_version_name=ui.implementation_version_name,
        user_identity=ui.user_identity_rq,
        user_identity_response=identity_response,
        extended_negotiation=requested_ext,
        extended_negotiation_accepted=answered_ext,
        common_extended_negotiation={c.sop_class_uid: c for c in ui.common_extended_negotiations},
        rejected_contexts=rejected,
    )
    return ac, negotiated


def _negotiate_context(
    pc: PresentationContextRQ,
    policy: AcceptorPolicy,
    proposed_roles: Mapping[str, RoleSelection],
    answered_roles: dict[str, RoleSelection],
) -> tuple[int, str | None]:
    if not pc.context_id & 1:
        # PS3.8 9.3.2.2: presentation context IDs are odd.
        return ContextResult.NO_REASON, None
    support = policy.supported.get(pc.abstract_syntax)
    if support is None:
        return ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, None
    ts = _choose_transfer_syntax(
        pc.transfer_syntaxes, support.transfer_syntaxes, policy.transfer_syntax_preference
    )
    if ts is None:
        return ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, None
    proposed = proposed_roles.get(pc.abstract_syntax)
    if proposed is not None:
        # PS3.7 D.3.3.4: the acceptor may only agree to roles that were proposed.
        answer = RoleSelection(
            pc.abstract_syntax,
            proposed.scu_role and support.requestor_may_be_scu,
            proposed.scp_role and support.requestor_may_be_scp,
        )
        answered_roles[pc.abstract_syntax] = answer
        if not (answer.scu_role or answer.scp_role):
            return ContextResult.USER_REJECTION, None
    elif not support.requestor_may_be_scu:
        # Default roles (requestor SCU, acceptor SCP) are not offered for this class.
        return ContextResult.USER_REJECTION, None
    return ContextResult.ACCEPTANCE, ts


# ---------------------------------------------------------------- requestor


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """One presentation context the requestor will propose, with optional role selection."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    scu_role: bool | None = None
    scp_role: bool | None = None


def build_request(
    called_ae_title: str,
    calling_ae_title: str,
    contexts: Iterable[ProposedContext],
    *,
    implementation_class_uid: str,
    implementation_version_name: str = "",
    max_pdu_length: int = 262_144,
    extended_negotiation: Mapping[str, bytes] | None = None,
    common_extended_negotiation: Iterable[SOPClassCommonExtendedNegotiation] = (),
    user_identity: UserIdentityRQ | None = None,
    async_ops_window: AsynchronousOperationsWindow | None = None,
) -> AssociateRQ:
    """Build an A-ASSOCIATE-RQ, numbering the presentation contexts 1, 3, 5, ... (PS3.8 9.3.2.2)."""
    pcs: list[PresentationContextRQ] = []
    roles: dict[str, RoleSelection] = {}
    for i, ctx in enumerate(contexts):
        context_id = 2 * i + 1
        if context_id > 255:
            raise ValueError("at most 128 presentation contexts can be proposed (PS3.8 9.3.2.2)")
        if not ctx.transfer_syntaxes:
            raise ValueError(f"no transfer syntax proposed for {ctx.abstract_syntax}")
        pcs.append(PresentationContextRQ(context_id, ctx.abstract_syntax, ctx.transfer_syntaxes))
        if ctx.scu_role is not None or ctx.scp_role is not None:
            roles[ctx.abstract_syntax] = RoleSelection(
                ctx.abstract_syntax, bool(ctx.scu_role), bool(ctx.scp_role)
            )
    if not pcs:
        raise ValueError("at least one presentation context must be proposed")
    ui = UserInformation(
        max_length=max_pdu_length,
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
        async_ops_window=async_ops_window,
        role_selections=tuple(roles.values()),
        extended_negotiations=tuple(
            SOPClassExtendedNegotiation(sop, info) for sop, info in (extended_negotiation or {}).items()
        ),
        common_extended_negotiations=tuple(common_extended_negotiation),
        user_identity_rq=user_identity,
    )
    return AssociateRQ(called_ae_title, calling_ae_title, tuple(pcs), ui)


def interpret_accept(rq: AssociateRQ, ac: AssociateAC) -> Negotiated:
    """What an A-ASSOCIATE-AC granted to our A-ASSOCIATE-RQ; checks the acceptor kept the rules."""
    proposed = {pc.context_id: pc for pc in rq.presentation_contexts}
    asked_roles = {r.sop_class_uid: r for r in rq.user_information.role_selections}
    given_roles = {r.sop_class_uid: r for r in ac.user_information.role_selections}
    contexts: dict[int, NegotiatedContext] = {}
    rejected: dict[int, int] = {}
    for pc in ac.presentation_contexts:
        mine = proposed.get(pc.context_id)
        if mine is None:
            raise RemoteProtocolError(f"A-ASSOCIATE-AC answers context {pc.context_id}, never proposed")
        if pc.result != ContextResult.ACCEPTANCE:
            rejected[pc.context_id] = pc.result
            continue
        if pc.transfer_syntax not in mine.transfer_syntaxes:
            # PS3.8 9.3.3.2: the acceptor must pick one of the proposed syntaxes.
            raise RemoteProtocolError(
                f"A-ASSOCIATE-AC accepted context {pc.context_id} with transfer syntax "
                f"{pc.transfer_syntax}, which was not proposed"
            )
        scu, scp = True, False
        if mine.abstract_syntax in asked_roles:
            asked = asked_roles[mine.abstract_syntax]
            given = given_roles.get(mine.abstract_syntax)
            if given is not None:
                # PS3.7 D.3.3.4: a role not proposed cannot be granted.
                scu, scp = given.scu_role and asked.scu_role, given.scp_role and asked.scp_role
        contexts[pc.context_id] = NegotiatedContext(
            pc.context_id, mine.abstract_syntax, pc.transfer_syntax, scu, scp
        )
    ui = ac.user_information
    rq_ui = rq.user_information
    return Negotiated(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        contexts=contexts,
        peer_max_pdu_length=ui.max_length,
        our_max_pdu_length=rq_ui.max_length,
        peer_implementation_class_uid=ui.implementation_class_uid,
        peer_implementation_version_name=ui.implementation_version_name,
        user_identity=rq_ui.user_identity_rq,
        user_identity_response=(
            ui.user_identity_ac.server_response if ui.user_identity_ac is not None else None
        ),
        extended_negotiation={e.sop_class_uid: e.information for e in rq_ui.extended_negotiations},
        extended_negotiation_accepted={e.sop_class_uid: e.information for e in ui.extended_negotiations},
        common_extended_negotiation={c.sop_class_uid: c for c in rq_ui.common_extended_negotiations},
        rejected_contexts=rejected,
    )
