"""PS3.8 9.2: the Upper Layer state machine, Table 9-10 as data (states, events, actions)."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """PS3.8 Table 9-1: the thirteen states of an association."""

    Sta1 = "Idle"
    Sta2 = "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)"
    Sta3 = "Awaiting local A-ASSOCIATE response primitive"
    Sta4 = "Awaiting transport connection opening to complete"
    Sta5 = "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    Sta6 = "Association established and ready for data transfer"
    Sta7 = "Awaiting A-RELEASE-RP PDU"
    Sta8 = "Awaiting local A-RELEASE response primitive"
    Sta9 = "Release collision requestor side; awaiting A-RELEASE response primitive"
    Sta10 = "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    Sta11 = "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    Sta12 = "Release collision acceptor side; awaiting A-RELEASE response primitive"
    Sta13 = "Awaiting transport connection close indication"


class Event(enum.Enum):
    """PS3.8 Table 9-2: the nineteen events."""

    Evt1 = "A-ASSOCIATE request (local user)"
    Evt2 = "Transport connection confirm (local transport service)"
    Evt3 = "A-ASSOCIATE-AC PDU received"
    Evt4 = "A-ASSOCIATE-RJ PDU received"
    Evt5 = "Transport connection indication (local transport service)"
    Evt6 = "A-ASSOCIATE-RQ PDU received"
    Evt7 = "A-ASSOCIATE response primitive (accept)"
    Evt8 = "A-ASSOCIATE response primitive (reject)"
    Evt9 = "P-DATA request primitive"
    Evt10 = "P-DATA-TF PDU received"
    Evt11 = "A-RELEASE request primitive"
    Evt12 = "A-RELEASE-RQ PDU received"
    Evt13 = "A-RELEASE-RP PDU received"
    Evt14 = "A-RELEASE response primitive"
    Evt15 = "A-ABORT request primitive"
    Evt16 = "A-ABORT PDU received"
    Evt17 = "Transport connection closed indication"
    Evt18 = "ARTIM timer expired"
    Evt19 = "Unrecognized or invalid PDU received"


# @enum.unique: two actions with the same text would silently become aliases of
# one member (AA-5 and AR-5 are both "Stop ARTIM timer" in PS3.8), merging cells.
@enum.unique
class Action(enum.Enum):
    """PS3.8 Tables 9-6 to 9-9: the actions, with the state each one leads to."""

    AE_1 = "Issue TRANSPORT CONNECT request primitive to local transport service"
    AE_2 = "Send A-ASSOCIATE-RQ PDU"
    AE_3 = "Issue A-ASSOCIATE confirmation (accept) primitive"
    AE_4 = "Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection"
    AE_5 = "Issue transport connection response primitive; start ARTIM timer"
    AE_6 = "Stop ARTIM; issue A-ASSOCIATE indication, or send A-ASSOCIATE-RJ PDU and start ARTIM"
    AE_7 = "Send A-ASSOCIATE-AC PDU"
    AE_8 = "Send A-ASSOCIATE-RJ PDU and start ARTIM timer"
    DT_1 = "Send P-DATA-TF PDU"
    DT_2 = "Send P-DATA indication primitive"
    AR_1 = "Send A-RELEASE-RQ PDU"
    AR_2 = "Issue A-RELEASE indication primitive"
    AR_3 = "Issue A-RELEASE confirmation primitive, and close transport connection"
    AR_4 = "Issue A-RELEASE-RP PDU and start ARTIM timer"
    AR_5 = "Stop ARTIM timer"
    AR_6 = "Issue P-DATA indication"
    AR_7 = "Issue P-DATA-TF PDU"
    AR_8 = "Issue A-RELEASE indication (release collision)"
    AR_9 = "Send A-RELEASE-RP PDU"
    AR_10 = "Issue A-RELEASE confirmation primitive"
    AA_1 = "Send A-ABORT PDU and start (or restart) ARTIM timer"
    AA_2 = "Stop ARTIM timer if running; close transport connection"
    AA_3 = "Issue A-ABORT or A-P-ABORT indication and close transport connection"
    AA_4 = "Issue A-P-ABORT indication primitive"
    # Same words as AR-5 in PS3.8; the suffix keeps it a distinct member (was an alias of AR_5).
    AA_5 = "Stop ARTIM timer (transport closed before A-ASSOCIATE-RQ)"
    AA_6 = "Ignore PDU"
    AA_7 = "Send A-ABORT PDU"
    AA_8 = "Send A-ABORT PDU (service-provider source), issue A-P-ABORT indication, start ARTIM"


S = State
A = Action

# PS3.8 Table 9-10, one row per event as the standard prints it: the cells that
# are filled, keyed by state.  A (event, state) pair not listed here is not a
# valid transition and is treated as an unexpected PDU / local error.
_ROWS: dict[Event, dict[State, Action]] = {
    Event.Evt1: {S.Sta1: A.AE_1},
    Event.Evt2: {S.Sta4: A.AE_2},
    Event.Evt3: {
        S.Sta2: A.AA_1, S.Sta3: A.AA_8, S.Sta5: A.AE_3, S.Sta6: A.AA_8, S.Sta7: A.AA_8,
        S.Sta8: A.AA_8, S.Sta9: A.AA_8, S.Sta10: A.AA_8, S.Sta11: A.AA_8, S.Sta12: A.AA_8,
        S.Sta13: A.AA_6,
    },
    Event.Evt4: {
        S.Sta2: A.AA_1, S.Sta3: A.AA_8, S.Sta5: A.AE_4, S.Sta6: A.AA_8, S.Sta7: A.AA_8,
        S.Sta8: A.AA_8, S.Sta9: A.AA_8, S.Sta10: A.AA_8, S.Sta11: A.AA_8, S.Sta12: A.AA_8,
        S.Sta13: A.AA_6,
    },
    Event.Evt5: {S.Sta1: A.AE_5},
    Event.Evt6: {
        S.Sta2: A.AE_6, S.Sta3: A.AA_8, S.Sta5: A.AA_8, S.Sta6: A.AA_8, S.Sta7: A.AA_8,
        S.Sta8: A.AA_8, S.Sta9: A.AA_8, S.Sta10: A.AA_8, S.Sta11: A.AA_8, S.Sta12: A.AA_8,
        S.Sta13: A.AA_7,
    },
    Event.Evt7: {S.Sta3: A.AE_7},
    Event.Evt8: {S.Sta3: A.AE_8},
    Event.Evt9: {S.Sta6: A.DT_1, S.Sta8: A.AR_7},
    Event.Evt10: {
        S.Sta2: A.AA_1, S.Sta3: A.AA_8, S.Sta5: A.AA_8, S.Sta6: A.DT_2, S.Sta7: A.AR_6,
        S.Sta8: A.AA_8, S.Sta9: A.AA_8, S.Sta10: A.AA_8, S.Sta11: A.AA_8, S.Sta12: A.AA_8,
        S.Sta13: A.AA_6,
    },
    Event.Evt11: {S.Sta6: A.AR_1},
    Event.Evt12: {
        S.Sta2: A.AA_1, S.Sta3: A.AA_8, S.Sta5: A.AA_8, S.Sta6: A.AR_2, S.Sta7: A.AR_8,
        S.Sta8: A.AA_8, S.Sta9: A.AA_8, S.Sta10: A.AA_8, S.Sta11: A.AA_8, S.Sta12: A.AA_8,
        S.Sta13: A.AA_6,
    },
    Event.Evt13: {
        S.Sta2: A.AA_1, S.Sta3: A.AA_8, S.Sta5: A.AA_8, S.Sta6: A.AA_8, S.Sta7: A.AR_3,
        S.Sta8: A.AA_8, S.Sta9: A.AA_8, S.Sta10: A.AR_10, S.Sta11: A.AR_3, S.Sta12: A.AA_8,
        S.Sta13: A.AA_6,
    },
    Event.Evt14: {S.Sta8: A.AR_4, S.Sta9: A.AR_9, S.Sta12: A.AR_4},
    Event.Evt15: {
        S.Sta3: A.AA_1, S.Sta4: A.AA_2, S.Sta5: A.AA_1, S.Sta6: A.AA_1, S.Sta7: A.AA_1,
        S.Sta8: A.AA_1, S.Sta9: A.AA_1, S.Sta10: A.AA_1, S.Sta11: A.AA_1, S.Sta12: A.AA_1,
    },
    Event.Evt16: {
        S.Sta2: A.AA_2, S.Sta3: A.AA_3, S.Sta5: A.AA_3, S.Sta6: A.AA_3, S.Sta7: A.AA_3,
        S.Sta8: A.AA_3, S.Sta9: A.AA_3, S.Sta10: A.AA_3, S.Sta11: A.AA_3, S.Sta12: A.AA_3,
        S.Sta13: A.AA_2,
    },
    Event.Evt17: {
        S.Sta2: A.AA_5, S.Sta3: A.AA_4, S.Sta4: A.AA_4, S.Sta5: A.AA_4, S.Sta6: A.AA_4,
        S.Sta7: A.AA_4, S.Sta8: A.AA_4, S.Sta9: A.AA_4, S.Sta10: A.AA_4, S.Sta11: A.AA_4,
        S.Sta12: A.AA_4, S.Sta13: A.AR_5,
    },
    Event.Evt18: {S.Sta2: A.AA_2, S.Sta13: A.AA_2},
    Event.Evt19: {
        S.Sta2: A.AA_1, S.Sta3: A.AA_8, S.Sta5: A.AA_8, S.Sta6: A.AA_8, S.Sta7: A.AA_8,
        S.Sta8: A.AA_8, S.Sta9: A.AA_8, S.Sta10: A.AA_8, S.Sta11: A.AA_8, S.Sta12: A.AA_8,
        S.Sta13: A.AA_7,
    },
}  # fmt: skip

TRANSITIONS: dict[tuple[Event, State], Action] = {
    (event, state): action for event, row in _ROWS.items() for state, action in row.items()
}

# PS3.8 Tables 9-6 to 9-9: the next state of each action.  AE-6 and AR-8 depend
# on the outcome / the side, and are resolved by the machine.
NEXT_STATE: dict[Action, State | None] = {
    A.AE_1: S.Sta4, A.AE_2: S.Sta5, A.AE_3: S.Sta6, A.AE_4: S.Sta1, A.AE_5: S.Sta2,
    A.AE_6: None, A.AE_7: S.Sta6, A.AE_8: S.Sta13,
    A.DT_1: S.Sta6, A.DT_2: S.Sta6,
    A.AR_1: S.Sta7, A.AR_2: S.Sta8, A.AR_3: S.Sta1, A.AR_4: S.Sta13, A.AR_5: S.Sta1,
    A.AR_6: S.Sta7, A.AR_7: S.Sta8, A.AR_8: None, A.AR_9: S.Sta11, A.AR_10: S.Sta12,
    A.AA_1: S.Sta13, A.AA_2: S.Sta1, A.AA_3: S.Sta1, A.AA_4: S.Sta1, A.AA_5: S.Sta1,
    A.AA_6: S.Sta13, A.AA_7: S.Sta13, A.AA_8: S.Sta13,
}  # fmt: skip


def transition(event: Event, state: State) -> Action | None:
    """The action PS3.8 Table 9-10 gives for an event in a state, or None for an empty cell."""
    return TRANSITIONS.get((event, state))
