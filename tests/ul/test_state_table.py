"""PS3.8 Table 9-10, all 19 x 13 cells, against pynetdicom's table and against the pure UpperLayer machine.

For every filled cell an UpperLayer is built, forced into the cell's state (for the
role that can be in it) and given the cell's event; the test then checks the next
state, the PDU written, the indication returned, the ARTIM timer and whether the
transport is to be closed, all from the oracle ``EFFECTS`` below, written from
PS3.8 Tables 9-6 to 9-9 independently of the implementation.

Deliberate differences from the letter of PS3.8, pinned here so they stay deliberate:

* AA-1 for a PDU received in Sta2 (a bad or unexpected first PDU) sends an A-ABORT with
  source service-provider (2) and a reason (2 unexpected PDU, or the decoder's reason
  for Evt19), where Table 9-7 says "service-user source" (pynetdicom sends 0/0).  The
  user's own A-ABORT request (Evt15) is sent as asked.
* Empty cells of the A-ABORT request primitive (Evt15 in Sta1, Sta2, Sta13) are a no-op
  that asks the shell to close the transport, not a LocalProtocolError: aborting an
  association that is already going away is harmless.
* PDU events in Sta1/Sta4 (no transport connection) cannot happen; bytes handed to the
  machine then are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pynetdicom.fsm import ACTIONS as PYNETDICOM_ACTIONS
from pynetdicom.fsm import TRANSITION_TABLE as PYNETDICOM_TABLE

from pacsnode.ul.connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    UpperLayer,
)
from pacsnode.ul.errors import LocalProtocolError
from pacsnode.ul.pdu import (
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PresentationContextAC,
    PresentationContextRQ,
    ReleaseRP,
    ReleaseRQ,
    UserInformation,
    decode_bytes,
    encode,
    encode_pdata,
)
from pacsnode.ul.state import NEXT_STATE, TRANSITIONS, Action, Event, State, transition

REQ, ACC = Role.REQUESTOR, Role.ACCEPTOR
S = State
E = Event

RQ = AssociateRQ(
    "ANY-SCP",
    "ECHOSCU",
    (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
    UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"),
)
AC = AssociateAC(
    "ANY-SCP",
    "ECHOSCU",
    (PresentationContextAC(1, 0, "1.2.840.10008.1.2"),),
    UserInformation(max_length=16384, implementation_class_uid="1.2.3.5"),
)
RJ = AssociateRJ(1, 1, 7)
PDV_IN = PDV(1, True, True, b"\x00\x01\x02\x03")
PDATA_IN = encode_pdata(1, True, True, b"\x00\x01\x02\x03")
PDATA_OUT = encode_pdata(1, False, False, b"outgoing")
PEER_ABORT = Abort(2, 1)
# Evt19: an unrecognised PDU type (reason 1) and an invalid parameter value (reason 6).
MALFORMED = [
    (bytes.fromhex("08 00 00000004 00000000"), 1),
    (bytes.fromhex("05 00 00000005 00000000 00"), 6),
]

PDU_EVENTS = {E.Evt3, E.Evt4, E.Evt6, E.Evt10, E.Evt12, E.Evt13, E.Evt16, E.Evt19}
USER_PRIMITIVES = {E.Evt1, E.Evt7, E.Evt8, E.Evt9, E.Evt11, E.Evt14, E.Evt15}
TRANSPORT_EVENTS = {E.Evt2, E.Evt5, E.Evt17, E.Evt18}
assert set(Event) == PDU_EVENTS | USER_PRIMITIVES | TRANSPORT_EVENTS

# Which side of the association can be in each state (PS3.8 9.2: Sta2/3 acceptor
# awaiting/answering the RQ, Sta4/5 requestor, Sta9/11 release collision requestor
# side, Sta10/12 acceptor side).
ROLES_OF_STATE = {
    S.Sta1: (REQ, ACC), S.Sta2: (ACC,), S.Sta3: (ACC,), S.Sta4: (REQ,), S.Sta5: (REQ,),
    S.Sta6: (REQ, ACC), S.Sta7: (REQ, ACC), S.Sta8: (REQ, ACC), S.Sta9: (REQ,), S.Sta10: (ACC,),
    S.Sta11: (REQ,), S.Sta12: (ACC,), S.Sta13: (REQ, ACC),
}  # fmt: skip


def roles_for(event: Event, state: State) -> tuple[Role, ...]:
    if event in (E.Evt1, E.Evt2):
        return (REQ,)
    if event is E.Evt5:
        return (ACC,)
    return ROLES_OF_STATE[state]


@dataclass(frozen=True)
class Effect:
    """What one action of PS3.8 Tables 9-6..9-9 does."""

    next_state: State | dict[Role, State]
    sends: str | None = None  # "RQ", "AC", "RJ", "PDATA", "RELEASE_RQ", "RELEASE_RP", "ABORT"
    indication: str | None = None
    artim: str | None = None  # "start", "stop" or None (unchanged)
    close: bool | None = False  # None: not checked (the transport is already gone)


# The oracle, keyed by the standard's action names (as pynetdicom spells them).
EFFECTS: dict[str, Effect] = {
    "AE-1": Effect(S.Sta4),
    "AE-2": Effect(S.Sta5, sends="RQ"),
    "AE-3": Effect(S.Sta6, indication="accepted"),
    "AE-4": Effect(S.Sta1, indication="rejected", close=True),
    "AE-5": Effect(S.Sta2, artim="start"),
    "AE-6": Effect(S.Sta3, indication="requested", artim="stop"),  # acceptance is the user's call
    "AE-7": Effect(S.Sta6, sends="AC"),
    "AE-8": Effect(S.Sta13, sends="RJ", artim="start"),
    "DT-1": Effect(S.Sta6, sends="PDATA"),
    "DT-2": Effect(S.Sta6, indication="data"),
    "AR-1": Effect(S.Sta7, sends="RELEASE_RQ"),
    "AR-2": Effect(S.Sta8, indication="release"),
    "AR-3": Effect(S.Sta1, indication="released", close=True),
    "AR-4": Effect(S.Sta13, sends="RELEASE_RP", artim="start"),
    "AR-5": Effect(S.Sta1, artim="stop", close=None),
    "AR-6": Effect(S.Sta7, indication="data"),
    "AR-7": Effect(S.Sta8, sends="PDATA"),
    "AR-8": Effect({REQ: S.Sta9, ACC: S.Sta10}, indication="release-collision"),
    "AR-9": Effect(S.Sta11, sends="RELEASE_RP"),
    "AR-10": Effect(S.Sta12, indication="released"),
    "AA-1": Effect(S.Sta13, sends="ABORT", artim="start"),
    "AA-2": Effect(S.Sta1, artim="stop", close=True),
    "AA-3": Effect(S.Sta1, indication="peer-abort", close=True),
    "AA-4": Effect(S.Sta1, indication="provider-abort", artim="stop", close=True),
    "AA-5": Effect(S.Sta1, artim="stop", close=None),
    "AA-6": Effect(S.Sta13),
    "AA-7": Effect(S.Sta13, sends="ABORT"),
    "AA-8": Effect(S.Sta13, sends="ABORT", indication="provider-abort", artim="start"),
}

ALL_CELLS = [pytest.param(e, s, id=f"{e.name}-{s.name}") for e in Event for s in State]


def std_name(action: Action | None) -> str | None:
    return None if action is None else action.name.replace("_", "-")


# ------------------------------------------------------------------ the table itself


def test_table_has_19_events_13_states_and_123_filled_cells():
    assert (len(Event), len(State), len(Action)) == (19, 13, 28)
    assert len(ALL_CELLS) == 247
    assert len(TRANSITIONS) == 123


@pytest.mark.parametrize(("event", "state"), ALL_CELLS)
def test_cell_agrees_with_pynetdicom(event, state):
    assert std_name(transition(event, state)) == PYNETDICOM_TABLE.get((event.name, state.name))


def test_every_action_is_its_own_member():
    # Regression: AA_5 and AR_5 once shared their text and so were one enum member.
    assert len({a.name for a in Action}) == 28
    assert TRANSITIONS[(E.Evt17, S.Sta2)] is Action.AA_5
    assert TRANSITIONS[(E.Evt17, S.Sta13)] is Action.AR_5


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.name)
def test_next_state_agrees_with_the_standard_and_pynetdicom(action):
    name = std_name(action)
    expected = EFFECTS[name].next_state
    theirs = PYNETDICOM_ACTIONS[name][2]
    if isinstance(expected, dict) or action is Action.AE_6:
        # Resolved by the machine: AE-6 by the outcome, AR-8 by the side.
        assert NEXT_STATE[action] is None
        assert isinstance(theirs, tuple)
    else:
        assert NEXT_STATE[action] is expected
        assert theirs == expected.name


# ------------------------------------------------------------------ driving the machine


def machine(state: State, role: Role, *, requested: bool = True) -> UpperLayer:
    ul = UpperLayer(role, max_pdata_length=1 << 16)
    if role is REQ and requested:
        ul.request_association(RQ)  # the pending request AE-2 will send
    ul.state = state
    # ARTIM runs in exactly the states one reaches by starting it.
    ul.artim_running = state in (S.Sta2, S.Sta13)
    ul.close_requested = False
    assert ul.data_to_send() == b""
    return ul


def stimulate(ul: UpperLayer, event: Event, malformed: bytes = b""):
    """Apply one event; returns the indications for PDU/transport events, None for primitives."""
    received = {
        E.Evt3: encode(AC),
        E.Evt4: encode(RJ),
        E.Evt6: encode(RQ),
        E.Evt10: PDATA_IN,
        E.Evt12: encode(ReleaseRQ()),
        E.Evt13: encode(ReleaseRP()),
        E.Evt16: encode(PEER_ABORT),
        E.Evt19: malformed,
    }
    if event in received:
        return ul.receive_data(received[event])
    primitives = {
        E.Evt1: lambda: ul.request_association(RQ),
        E.Evt2: ul.transport_connected,
        E.Evt5: ul.transport_connected,
        E.Evt7: lambda: ul.accept(AC),
        E.Evt8: lambda: ul.reject(RJ),
        E.Evt9: lambda: ul.send_pdata(PDATA_OUT),
        E.Evt11: ul.release,
        E.Evt14: ul.release_response,
        E.Evt15: ul.abort,
    }
    if event in primitives:
        assert primitives[event]() is None
        return None
    if event is E.Evt17:
        return ul.connection_lost()
    assert event is E.Evt18
    return ul.artim_expired()


def expected_abort(event: Event, malformed_reason: int) -> Abort:
    if event is E.Evt15:
        return Abort(0, 0)  # the user's A-ABORT request, as asked
    if event is E.Evt19:
        return Abort(2, malformed_reason)  # the decoder's reason
    return Abort(2, 2)  # service-provider, unexpected-PDU (PS3.8 Table 9-26)


def expected_sent(kind: str | None, event: Event, malformed_reason: int):
    return {
        None: None,
        "RQ": RQ,
        "AC": AC,
        "RJ": RJ,
        "PDATA": PDATA_OUT,
        "RELEASE_RQ": ReleaseRQ(),
        "RELEASE_RP": ReleaseRP(),
        "ABORT": expected_abort(event, malformed_reason) if kind == "ABORT" else None,
    }[kind]


def summarise(indication) -> tuple:
    if isinstance(indication, Aborted):  # the free-text detail is not part of the protocol
        return ("Aborted", indication.source, indication.reason, indication.by_peer)
    return (indication,)


def expected_indication(kind: str | None, event: Event, malformed_reason: int) -> list[tuple]:
    if kind is None:
        return []
    if kind == "provider-abort":
        if event is E.Evt17:
            return [("Aborted", 2, 0, False)]  # A-P-ABORT: the transport went away
        abort = expected_abort(event, malformed_reason)
        return [("Aborted", abort.source, abort.reason, False)]
    return [
        {
            "accepted": (AssociationAccepted(AC),),
            "rejected": (AssociationRejected(RJ),),
            "requested": (AssociationRequested(RQ),),
            "data": (DataReceived((PDV_IN,)),),
            "release": (ReleaseRequested(collision=False),),
            "release-collision": (ReleaseRequested(collision=True),),
            "released": (ReleaseConfirmed(),),
            "peer-abort": ("Aborted", PEER_ABORT.source, PEER_ABORT.reason, True),
        }[kind]
    ]


def check_filled_cell(event: Event, state: State, role: Role, malformed: bytes, malformed_reason: int):
    action = std_name(transition(event, state))
    effect = EFFECTS[action]
    ul = machine(state, role, requested=event is not E.Evt1)
    artim_before = ul.artim_running
    result = stimulate(ul, event, malformed)

    # next state
    nxt = effect.next_state
    assert ul.state is (nxt[role] if isinstance(nxt, dict) else nxt)
    # the PDU written
    sent = ul.data_to_send()
    want = expected_sent(effect.sends, event, malformed_reason)
    if want is None:
        assert sent == b""
    elif isinstance(want, bytes):
        assert sent == want
    else:
        assert decode_bytes(sent) == want
    # the indication
    if event in USER_PRIMITIVES or event in (E.Evt2, E.Evt5):
        assert result is None
        assert effect.indication is None  # no user primitive's action issues one
    else:
        assert [summarise(i) for i in result] == expected_indication(
            effect.indication, event, malformed_reason
        )
    # ARTIM and transport close
    assert ul.artim_running is {"start": True, "stop": False, None: artim_before}[effect.artim]
    if effect.close is not None:
        assert ul.close_requested is effect.close


def check_empty_cell(event: Event, state: State, role: Role, malformed: bytes):
    ul = machine(state, role, requested=event is not E.Evt1)
    before = (ul.state, ul.artim_running)
    if event in PDU_EVENTS:
        # Sta1/Sta4: no transport connection, so no PDU can arrive; bytes are ignored.
        assert state in (S.Sta1, S.Sta4)
        assert stimulate(ul, event, malformed) == []
    elif event is E.Evt15:
        # Documented no-op (module docstring): asks the shell to close, sends nothing.
        assert state in (S.Sta1, S.Sta2, S.Sta13)
        stimulate(ul, event)
        assert ul.close_requested
    elif event is E.Evt17:
        assert state is S.Sta1
        assert ul.connection_lost() == []
    elif event is E.Evt18:
        # Not running: nothing to expire.  Forced running: the machine refuses.
        assert not ul.artim_running
        assert ul.artim_expired() == []
        ul.artim_running = True
        with pytest.raises(LocalProtocolError):
            ul.artim_expired()
        ul.artim_running = False
    else:
        assert event in USER_PRIMITIVES or event in (E.Evt2, E.Evt5)
        with pytest.raises(LocalProtocolError):
            stimulate(ul, event)
    assert (ul.state, ul.artim_running) == before
    assert ul.data_to_send() == b""


@pytest.mark.parametrize(("event", "state"), ALL_CELLS)
def test_cell_drives_the_machine(event, state):
    malformations = MALFORMED if event is E.Evt19 else [(b"", 0)]
    for role in roles_for(event, state):
        for malformed, reason in malformations:
            if transition(event, state) is None:
                check_empty_cell(event, state, role, malformed)
            else:
                check_filled_cell(event, state, role, malformed, reason)
