"""PS3.4 service class plumbing: the ports a DIMSE service handler sees, and the registry of services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Protocol, TypeVar, runtime_checkable

from pacsnode.dimse.commands import Command
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext, ProposedContext, SOPClassSupport


class Responder(Protocol):
    """Sends DIMSE responses (and, for C-GET, sub-operation requests) on the association."""

    def send(self, command: Command, dataset: bytes | None = None) -> None:
        """Queue a DIMSE message on the request's presentation context."""

    @property
    def cancelled(self) -> bool:
        """True once the peer sent C-CANCEL-RQ for this request (PS3.7 9.3.2.3)."""

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) when a C-CANCEL-RQ for this request arrives."""

    async def drain(self) -> None:
        """Wait until the transport can take more (flow control for long answers)."""

    async def sub_request(
        self, context_id: int, command: Command, dataset: bytes | Iterable[bytes] | None = None
    ) -> tuple[Command, bytes | None]:
        """Send a request of ours on this association (C-GET's C-STORE) and await its response."""

    def next_message_id(self) -> int:
        """A Message ID for a sub-operation request, unique on this association."""

    @property
    def is_open(self) -> bool:
        """True while the association can still carry messages (not released or aborted)."""


class DataSetSink(Protocol):
    """Where the fragments of an incoming data set go while they arrive (bounded memory)."""

    def write(self, fragment: bytes) -> None:
        """Append one P-DATA fragment of the data set."""

    def finish(self) -> bytes | None:
        """The data set is complete; return it in memory, or None when the sink kept it itself."""

    def discard(self) -> None:
        """The association ended before the data set was complete; drop what was written."""


@dataclass(frozen=True, slots=True)
class DimseRequest:
    """One DIMSE request as a service handler receives it."""

    command: Command
    context: NegotiatedContext
    association: Negotiated
    dataset: bytes | None = None
    sink: DataSetSink | None = None


class ServiceHandler(Protocol):
    """A PS3.4 service class provider (SCP) for some SOP classes."""

    def handle(self, request: DimseRequest, responder: Responder) -> Awaitable[None] | None:
        """Answer one request: return None when done at once, or an awaitable for slow work."""

    def sink_for(
        self, command: Command, context: NegotiatedContext, association: Negotiated
    ) -> DataSetSink | None:
        """A sink for the request's data set, or None to receive it in memory."""


@runtime_checkable
class AssociationListener(Protocol):
    """A handler that is told when an association it served has ended (released, aborted, lost)."""

    def association_ended(self, association: Negotiated) -> None:
        """The association is over; never raises."""


AssociationT_co = TypeVar("AssociationT_co", covariant=True)


class AssociationOpener(Protocol[AssociationT_co]):
    """Opens an association to a peer (the net layer's ``open_association``, injected)."""

    def __call__(
        self,
        host: str,
        port: int,
        *,
        called_ae_title: str,
        calling_ae_title: str,
        contexts: Sequence[ProposedContext],
        connect_timeout: float,
        acse_timeout: float,
        dimse_timeout: float | None,
        ssl: SSLContext | None = None,
    ) -> Awaitable[AssociationT_co]:
        """Connect and negotiate (over TLS with ``ssl``, PS3.15 B.9)."""


class InMemoryDataSets:
    """A service whose request data sets (identifiers) are small: received in memory."""

    def sink_for(
        self, command: Command, context: NegotiatedContext, association: Negotiated
    ) -> DataSetSink | None:
        """None: the request's data set is collected in memory."""
        return None


class MemorySink:
    """Collects a (small) data set in memory, refusing more than ``limit`` bytes."""

    __slots__ = ("_parts", "_size", "limit")

    def __init__(self, limit: int) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.limit = limit

    def write(self, fragment: bytes) -> None:
        """Append a fragment; raise MemoryError past the limit."""
        self._size += len(fragment)
        if self._size > self.limit:
            raise MemoryError(f"data set larger than {self.limit} bytes")
        self._parts.append(fragment)

    def finish(self) -> bytes:
        """Return the whole data set."""
        data = b"".join(self._parts)
        self._parts = []
        return data

    def discard(self) -> None:
        """Forget what was written."""
        self._parts = []


@dataclass(frozen=True, slots=True)
class SOPClass:
    """A SOP class a service offers, with its name as PS3.4 / PS3.6 give it."""

    uid: str
    name: str


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    """One service class of the node, as negotiation and the conformance statement see it."""

    name: str
    standard: str  # e.g. "PS3.4 Annex A"
    sop_classes: tuple[SOPClass, ...]
    transfer_syntaxes: tuple[str, ...]
    scp: bool = True
    scu: bool = False
    handler: ServiceHandler | None = None
    requestor_may_be_scp: bool = False
    notes: str = ""
    extended_negotiation: str = ""
    # PS3.7 D.3.3.5: answers a SOP Class Extended Negotiation sub-item (None: no answer).
    negotiate_extended: Callable[[str, bytes], bytes | None] | None = None
    # PS3.2 A.4.2.1: how the service initiates associations, when the generic sentence
    # (one context per SOP class, no role selection) is not the whole truth.
    scu_notes: str = ""
    # PS3.2 A.4.2: the status codes the SCP returns, each with when it returns it.
    status_codes: tuple[tuple[int, str], ...] = ()


@dataclass
class ServiceRegistry:
    """Every service of the node: negotiation's supported SOP classes and the DIMSE dispatch table."""

    registrations: list[ServiceRegistration] = field(default_factory=list)

    def register(self, registration: ServiceRegistration) -> None:
        """Add a service; a SOP class may belong to one service only."""
        known = {sop.uid for reg in self.registrations for sop in reg.sop_classes}
        clash = known.intersection(sop.uid for sop in registration.sop_classes)
        if clash:
            raise ValueError(f"SOP classes already registered: {sorted(clash)}")
        self.registrations.append(registration)

    def extend(self, registrations: Iterable[ServiceRegistration]) -> None:
        """Register several services."""
        for registration in registrations:
            self.register(registration)

    def supported(self) -> Mapping[str, SOPClassSupport]:
        """What an acceptor offers: SOP classes we provide as SCP, with their transfer syntaxes."""
        out: dict[str, SOPClassSupport] = {}
        for reg in self.registrations:
            if not reg.scp:
                continue
            for sop in reg.sop_classes:
                out[sop.uid] = SOPClassSupport(
                    sop.uid,
                    reg.transfer_syntaxes,
                    requestor_may_be_scu=True,
                    requestor_may_be_scp=reg.requestor_may_be_scp,
                )
        return out

    def extended_negotiation(self, sop_class_uid: str, information: bytes) -> bytes | None:
        """PS3.7 D.3.3.5: let the service of a SOP class answer its extended negotiation item."""
        for reg in self.registrations:
            if reg.negotiate_extended is not None and any(s.uid == sop_class_uid for s in reg.sop_classes):
                return reg.negotiate_extended(sop_class_uid, information)
        return None

    def handlers(self) -> dict[str, ServiceHandler]:
        """SOP class UID -> the handler that serves it."""
        return {
            sop.uid: reg.handler
            for reg in self.registrations
            if reg.handler is not None
            for sop in reg.sop_classes
        }
