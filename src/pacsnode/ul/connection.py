"""PS3.8 9.2 sans-IO: one transport connection's Upper Layer, bytes in -> indications out."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from pacsnode.ul import pdu as _pdu
from pacsnode.ul.errors import AbortReason, AbortSource, LocalProtocolError, RemoteProtocolError
from pacsnode.ul.state import NEXT_STATE, Action, Event, State, transition


class Role(enum.Enum):
    """Which side of the association this Upper Layer plays (PS3.8 7.1)."""

    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


# ---------------------------------------------------------------- indications


@dataclass(frozen=True, slots=True)
class AssociationRequested:
    """A-ASSOCIATE indication: the peer asks for an association (acceptor side)."""

    request: _pdu.AssociateRQ


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    """A-ASSOCIATE confirmation (accept), requestor side."""

    accept: _pdu.AssociateAC


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """A-ASSOCIATE confirmation (reject), requestor side."""

    reject: _pdu.AssociateRJ


@dataclass(frozen=True, slots=True)
class DataReceived:
    """P-DATA indication: presentation data values from the peer."""

    pdvs: tuple[_pdu.PDV, ...]


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """A-RELEASE indication; ``collision`` when both sides asked at once (PS3.8 7.2.2)."""

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """A-RELEASE confirmation."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """A-ABORT (``by_peer``) or A-P-ABORT indication; ``reason`` is PS3.8 Table 9-26's."""

    source: int
    reason: int
    by_peer: bool
    detail: str = ""


Indication = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | DataReceived
    | ReleaseRequested
    | ReleaseConfirmed
    | Aborted
)

_EVENT_OF_PDU: dict[type, Event] = {
    _pdu.AssociateAC: Event.Evt3,
    _pdu.AssociateRJ: Event.Evt4,
    _pdu.AssociateRQ: Event.Evt6,
    _pdu.PDataTF: Event.Evt10,
    _pdu.ReleaseRQ: Event.Evt12,
    _pdu.ReleaseRP: Event.Evt13,
    _pdu.Abort: Event.Evt16,
}


class UpperLayer:
    """The PS3.8 state machine of one transport connection, with no I/O of its own.

    The shell feeds it bytes (``receive_data``) and transport/timer events, calls
    its primitives, sends what ``data_to_send`` returns, runs the ARTIM timer
    while ``artim_running`` is true and closes the transport once
    ``close_requested`` is true.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_pdata_length: int = 0,
        max_other_length: int = 1 << 20,
    ) -> None:
        self.role = role
        self.state = State.Sta1
        self.reader = _pdu.PDUReader(max_pdata_length, max_other_length)
        self.artim_running = False
        self.artim_generation = 0
        self.close_requested = False
        # True once we sent an A-ABORT; the shell may close without waiting out ARTIM.
        self.sent_abort = False
        self.last_error: RemoteProtocolError | None = None
        self._out = bytearray()
        self._request: _pdu.AssociateRQ | None = None
        self._indications: list[Indication] = []
        self._abort_pdu = _pdu.Abort()
        self._broken = False

    # ------------------------------------------------------------ plumbing

    def data_to_send(self) -> bytes:
        """Bytes the shell must write to the transport now (may be empty)."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _fire(self, event: Event, arg: object = None) -> None:
        action = transition(event, self.state)
        if action is None:
            raise LocalProtocolError(f"{event.name} ({event.value}) is not valid in {self.state.name}")
        _ACTIONS[action](self, arg)
        nxt = NEXT_STATE[action]
        if nxt is not None:
            self.state = nxt

    def _take(self) -> list[Indication]:
        out = self._indications
        self._indications = []
        return out

    # ------------------------------------------------------------ transport and timer events

    def transport_connected(self) -> None:
        """Evt2 (requestor, after ``request_association``) or Evt5 (acceptor)."""
        self._fire(Event.Evt2 if self.role is Role.REQUESTOR else Event.Evt5)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Indication]:
        """Feed bytes from the transport; returns the indications they produced."""
        if self._broken or self.state in (State.Sta1, State.Sta4):
            return []
        reader = self.reader
        reader.feed(data)
        while not self._broken:
            try:
                pdu = reader.next_pdu()
            except RemoteProtocolError as exc:
                # PS3.8 9.3.1 / Evt19: unrecognised or invalid PDU.  The stream
                # cannot be re-synchronised, so nothing after it is read.
                self._broken = True
                self.last_error = exc
                self._fire(Event.Evt19, exc)
                break
            if pdu is None:
                break
            self._fire(_EVENT_OF_PDU[type(pdu)], pdu)
            if self.close_requested:
                break
        return self._take()

    def connection_lost(self) -> list[Indication]:
        """Evt17: the transport connection closed."""
        if self.state is State.Sta1:
            return []
        self._fire(Event.Evt17)
        return self._take()

    def artim_expired(self) -> list[Indication]:
        """Evt18: the ARTIM timer ran out (PS3.8 9.1.5)."""
        if not self.artim_running:
            return []
        self._fire(Event.Evt18)
        return self._take()

    # ------------------------------------------------------------ user primitives

    def request_association(self, request: _pdu.AssociateRQ) -> None:
        """Evt1: A-ASSOCIATE request; the shell then opens the transport."""
        self._request = request
        self._fire(Event.Evt1)

    def accept(self, accept: _pdu.AssociateAC) -> None:
        """Evt7: A-ASSOCIATE response (accept)."""
        self._fire(Event.Evt7, accept)

    def reject(self, reject: _pdu.AssociateRJ) -> None:
        """Evt8: A-ASSOCIATE response (reject)."""
        self._fire(Event.Evt8, reject)

    def send_pdata(self, encoded: bytes) -> None:
        """Evt9: P-DATA request, given already-encoded P-DATA-TF PDUs."""
        state = self.state
        if state is State.Sta6 or state is State.Sta8:  # DT-1 / AR-7, hot path
            self._out += encoded
            return
        self._fire(Event.Evt9, encoded)

    def release(self) -> None:
        """Evt11: A-RELEASE request."""
        self._fire(Event.Evt11)

    def release_response(self) -> None:
        """Evt14: A-RELEASE response."""
        self._fire(Event.Evt14)

    def abort(self, source: int = AbortSource.SERVICE_USER, reason: int = AbortReason.NOT_SPECIFIED) -> None:
        """Evt15: A-ABORT request; a no-op once the association is already going away."""
        if self.state in (State.Sta1, State.Sta13, State.Sta2):
            self.close_requested = True
            return
        self._abort_pdu = _pdu.Abort(source, reason)
        self._fire(Event.Evt15)

    @property
    def is_established(self) -> bool:
        """True in Sta6, when DIMSE messages may flow both ways."""
        return self.state is State.Sta6

    # ------------------------------------------------------------ actions (PS3.8 Tables 9-6..9-9)

    def _abort_for(self, arg: object) -> _pdu.Abort:
        if isinstance(arg, RemoteProtocolError):
            return _pdu.Abort(AbortSource.SERVICE_PROVIDER, arg.reason)
        if arg is None:  # Evt15, the user's own A-ABORT request
            return self._abort_pdu
        # PS3.8 Table 9-26: a well-formed PDU that this state does not allow.
        return _pdu.Abort(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)

    def _start_artim(self) -> None:
        # PS3.8 9.1.5: start, or restart if already running (AA-1): a new generation
        # tells the shell to arm a fresh deadline.
        self.artim_running = True
        self.artim_generation += 1

    def _send(self, pdu: _pdu.PDU) -> None:
        if isinstance(pdu, _pdu.Abort):
            self.sent_abort = True
        self._out += _pdu.encode(pdu)

    def _ae1(self, _: object) -> None:
        pass  # the shell issues the TRANSPORT CONNECT request

    def _ae2(self, _: object) -> None:
        assert self._request is not None
        self._send(self._request)

    def _ae3(self, pdu: object) -> None:
        assert isinstance(pdu, _pdu.AssociateAC)
        self._indications.append(AssociationAccepted(pdu))

    def _ae4(self, pdu: object) -> None:
        assert isinstance(pdu, _pdu.AssociateRJ)
        self._indications.append(AssociationRejected(pdu))
        self.close_requested = True

    def _ae5(self, _: object) -> None:
        self._start_artim()

    def _ae6(self, pdu: object) -> None:
        assert isinstance(pdu, _pdu.AssociateRQ)
        # Whether to accept is the service user's decision (negotiation), so the
        # provider always issues the indication and goes to Sta3.
        self.artim_running = False
        self.state = State.Sta3
        self._indications.append(AssociationRequested(pdu))

    def _ae7(self, pdu: object) -> None:
        assert isinstance(pdu, _pdu.AssociateAC)
        self._send(pdu)

    def _ae8(self, pdu: object) -> None:
        assert isinstance(pdu, _pdu.AssociateRJ)
        self._send(pdu)
        self._start_artim()

    def _dt1(self, encoded: object) -> None:
        assert isinstance(encoded, bytes)
        self._out += encoded

    def _dt2(self, pdu: object) -> None:
        assert isinstance(pdu, _pdu.PDataTF)
        self._indications.append(DataReceived(pdu.pdvs))

    def _ar1(self, _: object) -> None:
        self._send(_pdu.ReleaseRQ())

    def _ar2(self, _: object) -> None:
        self._indications.append(ReleaseRequested())

    def _ar3(self, _: object) -> None:
        self._indications.append(ReleaseConfirmed())
        self.close_requested = True

    def _ar4(self, _: object) -> None:
        self._send(_pdu.ReleaseRP())
        self._start_artim()

    def _ar5(self, _: object) -> None:
        self.artim_running = False

    def _ar6(self, pdu: object) -> None:
        self._dt2(pdu)

    def _ar7(self, encoded: object) -> None:
        self._dt1(encoded)

    def _ar8(self, _: object) -> None:
        self._indications.append(ReleaseRequested(collision=True))
        self.state = State.Sta9 if self.role is Role.REQUESTOR else State.Sta10

    def _ar9(self, _: object) -> None:
        self._send(_pdu.ReleaseRP())

    def _ar10(self, _: object) -> None:
        self._indications.append(ReleaseConfirmed())

    def _aa1(self, arg: object) -> None:
        # PS3.8 9.2 AA-1: the table names the service-user as source; when the
        # provider itself found the fault (Sta2, bad first PDU) we say so, with
        # the reason, which tells the peer more than "service-user, 0".
        self._send(self._abort_for(arg))
        self._start_artim()

    def _aa2(self, _: object) -> None:
        self.artim_running = False
        self.close_requested = True

    def _aa3(self, pdu: object) -> None:
        assert isinstance(pdu, _pdu.Abort)
        self._indications.append(Aborted(pdu.source, pdu.reason, by_peer=True))
        self.close_requested = True

    def _aa4(self, _: object) -> None:
        self._indications.append(
            Aborted(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED, by_peer=False,
                    detail="transport connection closed")
        )  # fmt: skip
        self.artim_running = False
        self.close_requested = True

    def _aa5(self, _: object) -> None:
        self.artim_running = False
        self.close_requested = True

    def _aa6(self, _: object) -> None:
        pass  # PS3.8 AA-6: ignore the PDU

    def _aa7(self, arg: object) -> None:
        self._send(self._abort_for(arg))

    def _aa8(self, arg: object) -> None:
        abort = self._abort_for(arg)
        self._send(abort)
        detail = str(arg) if isinstance(arg, RemoteProtocolError) else "unexpected PDU"
        self._indications.append(Aborted(abort.source, abort.reason, by_peer=False, detail=detail))
        self._start_artim()


# Action -> the method performing it (AE_1 -> UpperLayer._ae1), built once for the class.
_ACTIONS: dict[Action, Callable[[UpperLayer, object], None]] = {
    action: getattr(UpperLayer, "_" + action.name.replace("_", "").lower()) for action in Action
}
