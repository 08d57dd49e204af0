"""PS3.8 7.1 and PS3.7 D.3.3 association negotiation: acceptor (negotiate), requestor (build/interpret)."""

from __future__ import annotations

import dataclasses

import pytest

from pacsnode.ul.errors import RemoteProtocolError
from pacsnode.ul.negotiation import (
    AcceptorPolicy,
    NegotiatedContext,
    ProposedContext,
    SOPClassSupport,
    UserIdentityDecision,
    build_request,
    interpret_accept,
    negotiate,
)
from pacsnode.ul.pdu import (
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    AsynchronousOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_bytes,
    encode,
)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMPL_UID = "1.2.826.0.1.3680043.10.1"


def policy(**changes) -> AcceptorPolicy:
    base = AcceptorPolicy(
        ae_title="PACSNODE",
        supported={
            VERIFICATION: SOPClassSupport(VERIFICATION, (IMPLICIT, EXPLICIT)),
            CT: SOPClassSupport(CT, (IMPLICIT, EXPLICIT, JPEG_BASELINE), True, True),
            MR: SOPClassSupport(MR, (IMPLICIT, EXPLICIT)),  # requestor may be SCU only
            PATIENT_ROOT_FIND: SOPClassSupport(PATIENT_ROOT_FIND, (IMPLICIT,)),
            # N-EVENT-REPORT only from us: the requestor must be SCP, never SCU.
            STORAGE_COMMITMENT: SOPClassSupport(STORAGE_COMMITMENT, (IMPLICIT,), False, True),
        },
        implementation_class_uid=IMPL_UID,
        implementation_version_name="PACSNODE_01",
        max_pdu_length=65536,
    )
    return dataclasses.replace(base, **changes)


def request(*contexts: PresentationContextRQ, **ui_changes) -> AssociateRQ:
    ui = dataclasses.replace(
        UserInformation(max_length=16384, implementation_class_uid="1.2.276.0.7230010.3.0.3.6.7",
                        implementation_version_name="OFFIS_DCMTK_367"),
        **ui_changes,
    )  # fmt: skip
    return AssociateRQ(
        "PACSNODE",
        "MODALITY",
        contexts or (PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),),
        ui,
    )


def accepted(rq: AssociateRQ, pol: AcceptorPolicy | None = None, **kw):
    answer, agreed = negotiate(rq, pol or policy(), **kw)
    assert isinstance(answer, AssociateAC), answer
    assert agreed is not None
    # Whatever we answer must encode (and decode to the same).
    assert decode_bytes(encode(answer)) == answer
    return answer, agreed


def results(answer: AssociateAC) -> list[tuple[int, int, str]]:
    return [(pc.context_id, pc.result, pc.transfer_syntax) for pc in answer.presentation_contexts]


# ------------------------------------------------------------------ A-ASSOCIATE-RJ, each result/source/reason


@pytest.mark.parametrize(
    ("what", "rq", "pol", "kw", "expected"),
    [
        (
            "protocol version without bit 0",
            dataclasses.replace(request(), protocol_version=2),
            policy(),
            {},
            AssociateRJ(1, 2, 2),  # permanent, ACSE provider, protocol-version-not-supported
        ),
        (
            "application context not DICOM",
            dataclasses.replace(request(), application_context="1.2.3.4"),
            policy(),
            {},
            AssociateRJ(1, 1, 2),  # permanent, service-user, application-context-name-not-supported
        ),
        (
            "called AE title required and different",
            dataclasses.replace(request(), called_ae_title="SOMEONE"),
            policy(require_called_ae_title=True),
            {},
            AssociateRJ(1, 1, 7),  # permanent, service-user, called-AE-title-not-recognized
        ),
        (
            "called AE title not a valid AE",
            dataclasses.replace(request(), called_ae_title="BAD\\AE"),
            policy(),
            {},
            AssociateRJ(1, 1, 7),
        ),
        (
            "called AE title empty",
            dataclasses.replace(request(), called_ae_title=""),
            policy(),
            {},
            AssociateRJ(1, 1, 7),
        ),
        (
            "calling AE title not allowed",
            request(),
            policy(allowed_calling_ae_titles=frozenset({"CT01", "MR01"})),
            {},
            AssociateRJ(1, 1, 3),  # permanent, service-user, calling-AE-title-not-recognized
        ),
        (
            "calling AE title with a control character",
            dataclasses.replace(request(), calling_ae_title="MOD\x01"),
            policy(),
            {},
            AssociateRJ(1, 1, 3),
        ),
        (
            "temporary congestion",
            request(),
            policy(),
            {"congested": True},
            AssociateRJ(2, 3, 1),  # transient, presentation provider, temporary-congestion
        ),
        (
            "local limit exceeded",
            request(),
            policy(),
            {"at_association_limit": True},
            AssociateRJ(2, 3, 2),  # transient, presentation provider, local-limit-exceeded
        ),
        (
            "user identity refused",
            request(user_identity_rq=UserIdentityRQ(2, True, b"mallory", b"guess")),
            policy(user_identity=lambda ident, calling: UserIdentityDecision(False)),
            {},
            AssociateRJ(1, 1, 1),  # PS3.7 D.3.3.7.3: permanent, service-user, no-reason-given
        ),
    ],
)
def test_reject(what, rq, pol, kw, expected):
    answer, agreed = negotiate(rq, pol, **kw)
    assert (answer, agreed) == (expected, None), what


def test_called_ae_title_not_checked_unless_required():
    rq = dataclasses.replace(request(), called_ae_title="ANYTHING")
    answer, _ = accepted(rq)
    assert answer.called_ae_title == "ANYTHING"  # echoed (PS3.8 9.3.3)


def test_allowed_calling_ae_title_is_accepted():
    accepted(request(), policy(allowed_calling_ae_titles=frozenset({"MODALITY"})))


def test_protocol_version_with_more_bits_is_accepted():
    # PS3.8 9.3.2: only bit 0 is defined; we answer with version 1.
    answer, _ = accepted(dataclasses.replace(request(), protocol_version=3))
    assert answer.protocol_version == 1


# ------------------------------------------------------------------ presentation context results 0..4


def test_each_presentation_context_result():
    rq = request(
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),  # 0 acceptance
        PresentationContextRQ(3, STORAGE_COMMITMENT, (IMPLICIT,)),  # 1 user rejection: default role refused
        PresentationContextRQ(4, VERIFICATION, (IMPLICIT,)),  # 2 no reason: an even ID is invalid
        PresentationContextRQ(5, "1.2.3.4.5", (IMPLICIT,)),  # 3 abstract syntax not supported
        PresentationContextRQ(7, MR, (JPEG_BASELINE, BIG_ENDIAN)),  # 4 transfer syntaxes not supported
    )
    answer, agreed = accepted(rq)
    assert results(answer) == [(1, 0, IMPLICIT), (3, 1, ""), (4, 2, ""), (5, 3, ""), (7, 4, "")]
    assert set(agreed.contexts) == {1}
    assert agreed.rejected_contexts == {3: 1, 4: 2, 5: 3, 7: 4}


def test_duplicate_context_ids_are_answered_once():
    rq = request(
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(1, CT, (EXPLICIT,)),
    )
    answer, agreed = accepted(rq)
    assert results(answer) == [(1, 0, IMPLICIT)]
    assert agreed.contexts[1].abstract_syntax == VERIFICATION


def test_empty_proposal_list_is_answered_with_no_contexts():
    rq = dataclasses.replace(request(), presentation_contexts=())
    answer, agreed = accepted(rq)
    assert answer.presentation_contexts == () and agreed.contexts == {}


# ------------------------------------------------------------------ transfer syntax preference


def test_requestor_order_by_default():
    rq = request(
        PresentationContextRQ(1, CT, (BIG_ENDIAN, JPEG_BASELINE, EXPLICIT, IMPLICIT)),
        PresentationContextRQ(3, CT, (IMPLICIT, EXPLICIT)),
    )
    answer, _ = accepted(rq)
    assert results(answer) == [(1, 0, JPEG_BASELINE), (3, 0, IMPLICIT)]


def test_policy_order_when_given():
    pol = policy(transfer_syntax_preference=(EXPLICIT, IMPLICIT))
    rq = request(
        PresentationContextRQ(1, CT, (IMPLICIT, JPEG_BASELINE, EXPLICIT)),
        PresentationContextRQ(3, CT, (JPEG_BASELINE, IMPLICIT)),
        # Not in the preference list at all: back to the requestor's order.
        PresentationContextRQ(5, CT, (BIG_ENDIAN, JPEG_BASELINE)),
    )
    answer, agreed = accepted(rq, pol)
    assert results(answer) == [(1, 0, EXPLICIT), (3, 0, IMPLICIT), (5, 0, JPEG_BASELINE)]
    assert agreed.context_for(CT, IMPLICIT) == NegotiatedContext(3, CT, IMPLICIT)
    assert agreed.context_for(CT) == NegotiatedContext(1, CT, EXPLICIT)
    assert agreed.context_for(MR) is None


def test_preferred_syntax_the_class_does_not_support_is_skipped():
    pol = policy(transfer_syntax_preference=(JPEG_BASELINE, EXPLICIT))
    answer, _ = accepted(request(PresentationContextRQ(1, MR, (IMPLICIT, JPEG_BASELINE, EXPLICIT))), pol)
    assert results(answer) == [(1, 0, EXPLICIT)]


# ------------------------------------------------------------------ SCP/SCU role selection (PS3.7 D.3.3.4)


@pytest.mark.parametrize(
    ("sop", "proposed", "answered", "result", "roles"),
    [
        # CT: the requestor may be SCU and SCP.
        (CT, (True, False), (True, False), 0, (True, False)),
        (CT, (False, True), (False, True), 0, (False, True)),
        (CT, (True, True), (True, True), 0, (True, True)),
        # MR: SCU only.
        (MR, (True, True), (True, False), 0, (True, False)),
        (MR, (False, True), (False, False), 1, None),  # no role left: user rejection
        # Storage Commitment: SCP only.
        (STORAGE_COMMITMENT, (True, True), (False, True), 0, (False, True)),
        (STORAGE_COMMITMENT, (True, False), (False, False), 1, None),
        (CT, (False, False), (False, False), 1, None),  # proposing neither role leaves none
    ],
)
def test_role_selection(sop, proposed, answered, result, roles):
    rq = request(
        PresentationContextRQ(1, sop, (IMPLICIT,)),
        role_selections=(RoleSelection(sop, *proposed),),
    )
    answer, agreed = accepted(rq)
    assert results(answer)[0][:2] == (1, result)
    assert answer.user_information.role_selections == (RoleSelection(sop, *answered),)
    if roles is None:
        assert agreed.contexts == {}
    else:
        ctx = agreed.contexts[1]
        assert (ctx.requestor_is_scu, ctx.requestor_is_scp) == roles


def test_roles_answered_only_for_proposed_selections_and_supported_classes():
    rq = request(
        PresentationContextRQ(1, CT, (IMPLICIT,)),
        PresentationContextRQ(3, MR, (IMPLICIT,)),
        PresentationContextRQ(5, "1.2.3.4.5", (IMPLICIT,)),
        role_selections=(RoleSelection(CT, True, True), RoleSelection("1.2.3.4.5", True, True)),
    )
    answer, agreed = accepted(rq)
    assert answer.user_information.role_selections == (RoleSelection(CT, True, True),)
    mr = agreed.contexts[3]
    assert (mr.requestor_is_scu, mr.requestor_is_scp) == (True, False)  # default roles


def test_default_roles_refused_when_requestor_may_not_be_scu():
    answer, _ = accepted(request(PresentationContextRQ(1, STORAGE_COMMITMENT, (IMPLICIT,))))
    assert results(answer) == [(1, 1, "")]


# ---------------------------------------------------------- extended negotiation, user identity, async window


def test_sop_class_extended_negotiation_callback():
    seen = []

    def answer_ext(sop: str, info: bytes) -> bytes | None:
        seen.append((sop, info))
        return b"\x01" if sop == PATIENT_ROOT_FIND else None

    rq = request(
        PresentationContextRQ(1, PATIENT_ROOT_FIND, (IMPLICIT,)),
        PresentationContextRQ(3, CT, (IMPLICIT,)),
        extended_negotiations=(
            SOPClassExtendedNegotiation(PATIENT_ROOT_FIND, b"\x01\x01\x01"),
            SOPClassExtendedNegotiation(CT, b"\x02"),
            SOPClassExtendedNegotiation("1.2.3.4.5", b"\x03"),  # not supported: callback not asked
        ),
    )
    answer, agreed = accepted(rq, policy(extended_negotiation=answer_ext))
    assert seen == [(PATIENT_ROOT_FIND, b"\x01\x01\x01"), (CT, b"\x02")]
    assert answer.user_information.extended_negotiations == (
        SOPClassExtendedNegotiation(PATIENT_ROOT_FIND, b"\x01"),
    )
    assert agreed.extended_negotiation_accepted == {PATIENT_ROOT_FIND: b"\x01"}
    assert agreed.extended_negotiation == {
        PATIENT_ROOT_FIND: b"\x01\x01\x01",
        CT: b"\x02",
        "1.2.3.4.5": b"\x03",
    }


def test_extended_negotiation_not_answered_without_a_callback():
    rq = request(extended_negotiations=(SOPClassExtendedNegotiation(VERIFICATION, b"\x01"),))
    answer, agreed = accepted(rq)
    assert answer.user_information.extended_negotiations == ()
    assert agreed.extended_negotiation_accepted == {}


def test_common_extended_negotiation_is_passed_through():
    common = SOPClassCommonExtendedNegotiation(
        ENHANCED_SR, "1.2.840.10008.4.2", ("1.2.840.10008.5.1.4.1.1.88.11",)
    )
    answer, agreed = accepted(request(common_extended_negotiations=(common,)))
    assert agreed.common_extended_negotiation == {ENHANCED_SR: common}
    # PS3.7 D.3.3.6: the sub-item is only ever sent by the requestor.
    assert answer.user_information.common_extended_negotiations == ()


@pytest.mark.parametrize("positive_response_requested", [True, False])
def test_user_identity_accepted(positive_response_requested):
    calls = []

    def check(identity: UserIdentityRQ, calling: str) -> UserIdentityDecision:
        calls.append((identity, calling))
        return UserIdentityDecision(True, b"welcome")

    identity = UserIdentityRQ(2, positive_response_requested, b"alice", b"s3cret")
    answer, agreed = accepted(request(user_identity_rq=identity), policy(user_identity=check))
    assert calls == [(identity, "MODALITY")]
    assert agreed.user_identity == identity
    if positive_response_requested:
        assert answer.user_information.user_identity_ac == UserIdentityAC(b"welcome")
        assert agreed.user_identity_response == b"welcome"
    else:
        assert answer.user_information.user_identity_ac is None
        assert agreed.user_identity_response is None


def test_user_identity_without_a_policy_is_ignored():
    identity = UserIdentityRQ(1, True, b"alice")
    answer, agreed = accepted(request(user_identity_rq=identity))
    assert answer.user_information.user_identity_ac is None
    assert agreed.user_identity == identity


@pytest.mark.parametrize("window", [AsynchronousOperationsWindow(0, 0), AsynchronousOperationsWindow(16, 4)])
def test_async_operations_window_answered_one_by_one(window):
    answer, _ = accepted(request(async_ops_window=window))
    assert answer.user_information.async_ops_window == AsynchronousOperationsWindow(1, 1)


def test_no_async_operations_window_when_not_proposed():
    answer, _ = accepted(request())
    assert answer.user_information.async_ops_window is None


def test_accept_carries_our_identity_and_the_peer_s():
    answer, agreed = accepted(request())
    assert (answer.called_ae_title, answer.calling_ae_title) == ("PACSNODE", "MODALITY")
    ui = answer.user_information
    assert (ui.max_length, ui.implementation_class_uid, ui.implementation_version_name) == (
        65536,
        IMPL_UID,
        "PACSNODE_01",
    )
    assert (agreed.peer_max_pdu_length, agreed.our_max_pdu_length) == (16384, 65536)
    assert agreed.peer_implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    assert agreed.peer_implementation_version_name == "OFFIS_DCMTK_367"


# ------------------------------------------------------------------ requestor: build_request


def ctx(sop: str, *ts: str, scu: bool | None = None, scp: bool | None = None) -> ProposedContext:
    return ProposedContext(sop, ts or (IMPLICIT,), scu, scp)


def test_build_request_numbers_contexts_odd():
    rq = build_request("PACS", "ME", [ctx(VERIFICATION), ctx(CT, EXPLICIT, IMPLICIT), ctx(MR)],
                       implementation_class_uid=IMPL_UID)  # fmt: skip
    assert [(pc.context_id, pc.abstract_syntax) for pc in rq.presentation_contexts] == [
        (1, VERIFICATION),
        (3, CT),
        (5, MR),
    ]
    assert rq.presentation_contexts[1].transfer_syntaxes == (EXPLICIT, IMPLICIT)


def test_build_request_128_contexts_is_the_limit():
    rq = build_request(
        "PACS", "ME", [ctx(f"1.2.3.{i}") for i in range(128)], implementation_class_uid=IMPL_UID
    )
    assert [pc.context_id for pc in rq.presentation_contexts] == list(range(1, 256, 2))
    assert decode_bytes(encode(rq)) == rq
    with pytest.raises(ValueError, match="128"):
        build_request(
            "PACS", "ME", [ctx(f"1.2.3.{i}") for i in range(129)], implementation_class_uid=IMPL_UID
        )


def test_build_request_refuses_empty_proposals():
    with pytest.raises(ValueError):
        build_request("PACS", "ME", [], implementation_class_uid=IMPL_UID)
    with pytest.raises(ValueError):
        build_request("PACS", "ME", [ProposedContext(CT, ())], implementation_class_uid=IMPL_UID)


def test_build_request_user_information():
    identity = UserIdentityRQ(1, True, b"alice")
    common = SOPClassCommonExtendedNegotiation(ENHANCED_SR, "1.2.840.10008.4.2")
    rq = build_request(
        "PACS",
        "ME",
        [ctx(CT, scu=True, scp=True), ctx(STORAGE_COMMITMENT, scp=True), ctx(MR)],
        implementation_class_uid=IMPL_UID,
        implementation_version_name="PACSNODE_01",
        max_pdu_length=32768,
        extended_negotiation={PATIENT_ROOT_FIND: b"\x01"},
        common_extended_negotiation=[common],
        user_identity=identity,
        async_ops_window=AsynchronousOperationsWindow(4, 4),
    )
    ui = rq.user_information
    assert (ui.max_length, ui.implementation_class_uid, ui.implementation_version_name) == (
        32768,
        IMPL_UID,
        "PACSNODE_01",
    )
    assert ui.role_selections == (
        RoleSelection(CT, True, True),
        RoleSelection(STORAGE_COMMITMENT, False, True),
    )
    assert ui.extended_negotiations == (SOPClassExtendedNegotiation(PATIENT_ROOT_FIND, b"\x01"),)
    assert ui.common_extended_negotiations == (common,)
    assert ui.user_identity_rq == identity
    assert ui.async_ops_window == AsynchronousOperationsWindow(4, 4)
    assert decode_bytes(encode(rq)) == rq


# ------------------------------------------------------------------ requestor: interpret_accept


def answer_to(rq: AssociateRQ, *pcs: PresentationContextAC, **ui_changes) -> AssociateAC:
    ui = dataclasses.replace(
        UserInformation(max_length=16384, implementation_class_uid="1.2.3"), **ui_changes
    )
    return AssociateAC(rq.called_ae_title, rq.calling_ae_title, pcs, ui)


ROLE_RQ = build_request(
    "PACS",
    "ME",
    [ctx(CT, EXPLICIT, IMPLICIT, scu=True, scp=True), ctx(MR, scu=True, scp=True), ctx(STORAGE_COMMITMENT)],
    implementation_class_uid=IMPL_UID,
    max_pdu_length=32768,
)


def test_interpret_accept_contexts_and_rejections():
    ac = answer_to(
        ROLE_RQ,
        PresentationContextAC(1, 0, IMPLICIT),
        PresentationContextAC(3, 4, ""),
        PresentationContextAC(5, 3, ""),
        user_identity_ac=UserIdentityAC(b"hi"),
        extended_negotiations=(SOPClassExtendedNegotiation(CT, b"\x01"),),
    )
    agreed = interpret_accept(ROLE_RQ, ac)
    assert set(agreed.contexts) == {1}
    assert agreed.contexts[1].transfer_syntax == IMPLICIT
    assert agreed.rejected_contexts == {3: 4, 5: 3}
    assert (agreed.peer_max_pdu_length, agreed.our_max_pdu_length) == (16384, 32768)
    assert agreed.user_identity_response == b"hi"
    assert agreed.extended_negotiation_accepted == {CT: b"\x01"}


def test_interpret_accept_refuses_a_transfer_syntax_not_proposed():
    ac = answer_to(ROLE_RQ, PresentationContextAC(1, 0, JPEG_BASELINE))
    with pytest.raises(RemoteProtocolError, match="not proposed"):
        interpret_accept(ROLE_RQ, ac)


def test_interpret_accept_refuses_a_context_never_proposed():
    with pytest.raises(RemoteProtocolError, match="never proposed"):
        interpret_accept(ROLE_RQ, answer_to(ROLE_RQ, PresentationContextAC(9, 0, IMPLICIT)))


def test_interpret_accept_ignores_the_transfer_syntax_of_a_rejected_context():
    agreed = interpret_accept(ROLE_RQ, answer_to(ROLE_RQ, PresentationContextAC(1, 3, JPEG_BASELINE)))
    assert agreed.contexts == {} and agreed.rejected_contexts == {1: 3}


@pytest.mark.parametrize(
    ("given", "expected_ct", "expected_mr"),
    [
        ((), (True, False), (True, False)),  # no answer: default roles (PS3.7 D.3.3.4)
        ((RoleSelection(CT, False, True),), (False, True), (True, False)),
        ((RoleSelection(CT, True, True), RoleSelection(MR, True, False)), (True, True), (True, False)),
    ],
)
def test_interpret_accept_roles(given, expected_ct, expected_mr):
    ac = answer_to(
        ROLE_RQ,
        PresentationContextAC(1, 0, EXPLICIT),
        PresentationContextAC(3, 0, IMPLICIT),
        role_selections=given,
    )
    agreed = interpret_accept(ROLE_RQ, ac)
    ct, mr = agreed.contexts[1], agreed.contexts[3]
    assert (ct.requestor_is_scu, ct.requestor_is_scp) == expected_ct
    assert (mr.requestor_is_scu, mr.requestor_is_scp) == expected_mr


def test_interpret_accept_never_grants_a_role_not_proposed():
    rq = build_request(
        "PACS", "ME", [ctx(CT, scu=True, scp=False), ctx(MR)], implementation_class_uid=IMPL_UID
    )
    ac = answer_to(
        rq,
        PresentationContextAC(1, 0, IMPLICIT),
        PresentationContextAC(3, 0, IMPLICIT),
        role_selections=(RoleSelection(CT, True, True), RoleSelection(MR, True, True)),
    )
    agreed = interpret_accept(rq, ac)
    assert (agreed.contexts[1].requestor_is_scu, agreed.contexts[1].requestor_is_scp) == (True, False)
    # MR had no role selection proposed: the acceptor's answer is ignored, defaults apply.
    assert (agreed.contexts[3].requestor_is_scu, agreed.contexts[3].requestor_is_scp) == (True, False)


# ------------------------------------------------------------------ both sides agree


def test_requestor_and_acceptor_agree_on_the_same_contexts():
    rq = build_request(
        "PACSNODE",
        "MODALITY",
        [
            ctx(VERIFICATION),
            ctx(CT, JPEG_BASELINE, EXPLICIT, scu=True, scp=True),
            ctx(MR, scp=True),
            ctx("1.2.3.4.5"),
            ctx(STORAGE_COMMITMENT, scu=False, scp=True),
        ],
        implementation_class_uid=IMPL_UID,
    )
    answer, acceptor_view = accepted(rq)
    requestor_view = interpret_accept(rq, answer)
    assert requestor_view.contexts == acceptor_view.contexts
    assert requestor_view.rejected_contexts == acceptor_view.rejected_contexts
    assert set(acceptor_view.contexts) == {1, 3, 9}
    assert acceptor_view.rejected_contexts == {5: 1, 7: 3}


def test_retired_big_endian_taken_only_when_nothing_else_fits() -> None:
    # PS3.5 A.3: Explicit VR Big Endian is retired; a requestor listing it first still gets LE.
    evbe, evle, ivle = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
    policy = AcceptorPolicy(
        ae_title="ACCEPTOR",
        supported={"1.2.840.10008.1.1": SOPClassSupport("1.2.840.10008.1.1", (ivle, evle, evbe))},
        implementation_class_uid="1.2.3",
    )
    for proposed, expected in (((evbe, evle, ivle), evle), ((evbe,), evbe), ((evbe, ivle), ivle)):
        rq = build_request(
            "ACCEPTOR",
            "REQUESTOR",
            [ProposedContext("1.2.840.10008.1.1", proposed)],
            implementation_class_uid="1.2.4",
        )
        ac, negotiated = negotiate(rq, policy)
        assert isinstance(ac, AssociateAC) and negotiated is not None
        assert negotiated.contexts[1].transfer_syntax == expected
