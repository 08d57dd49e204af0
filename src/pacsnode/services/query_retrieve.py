"""PS3.4 Annex C: the Query/Retrieve service class as SCP: C-FIND, C-MOVE and C-GET over one engine."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset

from pacsnode.archive.ingest import Archive
from pacsnode.archive.qr_model import (
    FAILED_SOP_INSTANCE_UID_LIST,
    MODELS,
    SPECIFIC_CHARACTER_SET,
    QueryOptions,
    model_sop_classes,
)
from pacsnode.archive.query import (
    Answer,
    Element,
    InstanceRef,
    PreparedQuery,
    QueryEngine,
    QueryError,
    elements_of,
    prepare,
)
from pacsnode.audit.builders import (
    Actor,
    Initiator,
    StudyRef,
    StudyTally,
    association_peer,
    begin_transferring,
    instances_transferred,
    node_actor,
    query,
)
from pacsnode.config.settings import Settings
from pacsnode.data.elements import MalformedDataSet, codec_of, decode_flat, encode_elements, text_value
from pacsnode.data.header import truncation
from pacsnode.data.part10 import dataset_offset
from pacsnode.data.transcode import decode, encode, transcode
from pacsnode.data.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    uid_name,
)
from pacsnode.dimse.commands import Command, CommandField, Priority
from pacsnode.dimse.messages import c_store_rq, response_to
from pacsnode.dimse.status import Status, StatusCategory, category
from pacsnode.security.events import AuditSink, NullAuditSink, Outcome
from pacsnode.services.base import (
    AssociationOpener,
    DimseRequest,
    InMemoryDataSets,
    Responder,
    ServiceRegistration,
    SOPClass,
)
from pacsnode.ul.negotiation import Negotiated, NegotiatedContext, ProposedContext

log = logging.getLogger("pacsnode.qr")

_UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
_OPAQUE = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1..255
_READ_CHUNK = 1 << 20
_BATCH = 32
_BATCH_SECONDS = 0.002
_INLINE_SECONDS = 0.001


# ---------------------------------------------------------------- ports (injected by the net layer)


class StoreOutcome(Protocol):
    """What a C-STORE sub-operation answered."""

    @property
    def status(self) -> int:
        """The C-STORE-RSP status."""


class StoreAssociation(Protocol):
    """An association to a C-MOVE destination, as the net layer's client offers it."""

    @property
    def negotiated(self) -> Negotiated:
        """The accepted presentation contexts."""

    def store(
        self,
        dataset: bytes | Iterable[bytes],
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        *,
        move_originator: tuple[str, int] | None = None,
        priority: int = Priority.MEDIUM,
    ) -> Awaitable[StoreOutcome]:
        """C-STORE one data set."""

    def release(self, timeout: float | None = 30.0) -> Awaitable[None]:
        """A-RELEASE."""

    def abort(self) -> None:
        """A-ABORT."""


# Opens C-MOVE sub-associations.
Connector: TypeAlias = AssociationOpener[StoreAssociation]


# ---------------------------------------------------------------- identifiers


def decode_identifier(data: bytes | None, transfer_syntax: str) -> list[Element]:
    """The request's Identifier as elements; raise QueryError (A900) when it cannot be parsed.

    A flat identifier in a single-byte or UTF-8 character set (nearly every query)
    is read directly; anything else (sequences, ISO 2022 code extensions) by pydicom.
    """
    if not data:
        raise QueryError(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "the request carries no Identifier")
    unreadable = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    if transfer_syntax in _UNCOMPRESSED:
        try:
            flat = decode_flat(data, implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN)
        except MalformedDataSet as exc:
            raise QueryError(unreadable, f"the Identifier cannot be parsed: {exc}") from None
        if flat is not None:
            charset = next((raw for tag, _, raw in flat if tag == SPECIFIC_CHARACTER_SET), b"")
            terms = [t.strip() for t in charset.decode("latin-1").rstrip("\0 ").split("\\")]
            codec = codec_of(terms if any(terms) else [])
            if codec is not None:
                try:
                    return [
                        (tag, vr, text_value(vr, raw, codec) if vr not in _OPAQUE else raw)
                        for tag, vr, raw in flat
                    ]
                except (UnicodeError, LookupError):
                    pass  # pydicom decides, with its own replacement rules
    # PS3.4 C.4.1.1.4: a data set cut short is refused, not read as far as it goes.
    cut = truncation(data, 0, transfer_syntax)
    if cut is not None:
        raise QueryError(unreadable, f"the Identifier cannot be parsed: {cut}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return elements_of(decode(data, transfer_syntax))
    except Exception as exc:
        raise QueryError(unreadable, f"the Identifier cannot be parsed: {exc}") from None


def _encodable(texts: list[str], charset: Sequence[str]) -> bool:
    encodings = convert_encodings(list(charset))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for text in texts:
                encode_string(text, encodings)
    except Exception:
        return False
    return True


def choose_charset(texts: list[str], requested: Sequence[str]) -> list[str] | None:
    """PS3.4 C.4.1.1.3.1: answer in the request's character set when it can carry every value, else UTF-8."""
    if all(t.isascii() for t in texts):
        return list(requested) if requested and any(requested) else None
    if requested and any(requested) and _encodable(texts, requested):
        return list(requested)
    return ["ISO_IR 192"]


def encode_answer(answer: Answer, transfer_syntax: str, requested: Sequence[str]) -> bytes:
    """A response identifier in the context's transfer syntax and a character set that holds it."""
    charset = choose_charset(list(answer.texts()), requested)
    elements = answer.elements
    if charset is None:
        elements.pop(SPECIFIC_CHARACTER_SET, None)
    else:
        elements[SPECIFIC_CHARACTER_SET] = ("CS", charset if len(charset) > 1 else charset[0])
    codec = codec_of(charset or [])
    if codec is not None and transfer_syntax in _UNCOMPRESSED:
        # The fast path: plain elements encoded directly (no pydicom objects).
        data = encode_elements(
            answer.items(), implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, codec=codec
        )
        if data is not None:
            return data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encode(answer.dataset(), transfer_syntax)


def _requested_charset(identifier: list[Element]) -> list[str]:
    value = next((v for tag, _, v in identifier if tag == SPECIFIC_CHARACTER_SET), None)
    if not value:
        return []
    return [t.strip() for t in str(value).split("\\")]


# ---------------------------------------------------------------- extended negotiation


def find_extended_negotiation(_sop_class_uid: str, information: bytes) -> bytes:
    """PS3.4 C.5.1.1: relational queries, combined date-time and fuzzy names yes; timezone no."""
    supported = (1, 1, 1, 0)
    return bytes(min(b, supported[i]) if i < len(supported) else 0 for i, b in enumerate(information[:4]))


def retrieve_extended_negotiation(_sop_class_uid: str, information: bytes) -> bytes:
    """PS3.4 C.5.2.1 / C.5.3.1: relational retrieval yes (a retrieve uses its level's unique key)."""
    return bytes(min(b, 1) if i == 0 else 0 for i, b in enumerate(information[:2]))


def options_of(association: Negotiated, sop_class_uid: str, case_insensitive_names: bool) -> QueryOptions:
    """What this association agreed for a Q/R SOP class (the acceptor's answer holds)."""
    info = association.extended_negotiation_accepted.get(sop_class_uid, b"")

    def bit(i: int) -> bool:
        return len(info) > i and info[i] == 1

    return QueryOptions(
        relational=bit(0),
        combined_datetime=bit(1),
        fuzzy_names=bit(2),
        case_insensitive_names=case_insensitive_names,
    )


# ---------------------------------------------------------------- retrieval


@dataclass
class Counts:
    """Sub-operation counts of a C-MOVE or C-GET (PS3.4 C.4.2.1.4)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    # Each instance tried: None when it went, else why not (the audit trail's outcome).
    outcomes: dict[str, str | None] = field(default_factory=dict)

    def fail(self, uid: str, why: str = "not sent") -> None:
        """One sub-operation failed."""
        self.remaining -= 1
        self.failed += 1
        self.failed_uids.append(uid)
        self.outcomes[uid] = why

    def record(self, status: int, uid: str) -> None:
        """A C-STORE-RSP came back."""
        kind = category(status)
        if kind is StatusCategory.SUCCESS:
            self.remaining -= 1
            self.completed += 1
            self.outcomes[uid] = None
        elif kind is StatusCategory.WARNING:
            self.remaining -= 1
            self.warning += 1
            self.outcomes[uid] = None
        else:
            self.fail(uid, f"C-STORE status 0x{status:04X}")

    def fields(self, final: bool) -> dict[str, Any]:
        """The count fields of a C-MOVE/C-GET-RSP; the final one has no Remaining (PS3.7 9.3.4.2)."""
        out: dict[str, Any] = {
            "number_of_completed_suboperations": self.completed,
            "number_of_failed_suboperations": self.failed,
            "number_of_warning_suboperations": self.warning,
        }
        if not final:
            out["number_of_remaining_suboperations"] = self.remaining
        return out


def load_payload(path: Path, ref: InstanceRef, transfer_syntax: str) -> bytes | Iterator[bytes]:
    """The data set of a stored instance in ``transfer_syntax``: as stored, or converted.

    Up to 1 MiB comes in memory; a larger one as stored is read while it is sent.
    Raises OSError, ValueError or TranscodeError.
    """
    if transfer_syntax == ref.transfer_syntax_uid and ref.size > _READ_CHUNK:
        with path.open("rb") as fh:
            head = fh.read(4096)
        return _chunks(path, dataset_offset(head, path))
    data = path.read_bytes()
    dataset = data[dataset_offset(data, path) :]
    if transfer_syntax == ref.transfer_syntax_uid:
        return dataset
    return transcode(dataset, ref.transfer_syntax_uid, transfer_syntax)


def _chunks(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(_READ_CHUNK):
            yield chunk


def plan_contexts(refs: Sequence[InstanceRef]) -> list[list[ProposedContext]]:
    """Presentation contexts for a C-MOVE sub-association: each stored syntax, and uncompressed.

    More than 128 contexts are split over several associations (PS3.8 9.3.2.2), never
    the contexts of one SOP class: its instances go on one association, which has both
    their stored syntaxes and the uncompressed fallback.
    """
    by_class: dict[str, dict[tuple[str, ...], None]] = {}
    for ref in refs:
        syntaxes = by_class.setdefault(ref.sop_class_uid, {})
        if ref.transfer_syntax_uid not in _UNCOMPRESSED:
            syntaxes[(ref.transfer_syntax_uid,)] = None
        # PS3.4 C.4.2.3.1: the SCP may convert; uncompressed is what every SCP accepts.
        syntaxes[_UNCOMPRESSED] = None
    plans: list[list[ProposedContext]] = [[]]
    for sop, syntaxes in by_class.items():
        group = [ProposedContext(sop, ts) for ts in syntaxes]
        if len(plans[-1]) + len(group) > _MAX_CONTEXTS:
            plans.append([])
        plans[-1].extend(group)
    return plans


def choose_context(
    contexts: Iterable[NegotiatedContext], ref: InstanceRef, *, requestor_scp: bool = False
) -> NegotiatedContext | None:
    """The accepted context to send an instance on: its own syntax first, else an uncompressed one."""
    usable = [
        c
        for c in contexts
        if c.abstract_syntax == ref.sop_class_uid and (not requestor_scp or c.requestor_is_scp)
    ]
    for ctx in usable:
        if ctx.transfer_syntax == ref.transfer_syntax_uid:
            return ctx
    for ts in _UNCOMPRESSED:
        for ctx in usable:
            if ctx.transfer_syntax == ts:
                return ctx
    return None


# ---------------------------------------------------------------- the SCP


def failure_response(cmd: Command, exc: QueryError) -> Command:
    """The final response of a refused query: its status, Error Comment, Offending Element."""
    fields: dict[str, Any] = {"error_comment": exc.comment[:1024]}
    if exc.offending:
        fields["offending_element"] = exc.offending[:16]
    return response_to(cmd, exc.status, **fields)


class QueryRetrieveSCP(InMemoryDataSets):
    """C-FIND, C-MOVE and C-GET SCP for the Patient Root and Study Root models (PS3.4 C.4)."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        connector: Connector | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.archive = archive
        self.settings = settings
        self.connector = connector
        self.audit: AuditSink = audit if audit is not None else NullAuditSink()
        self.me = node_actor(settings.node.aet, settings.node.host)
        self.engine = QueryEngine(archive.index, archive.store.absolute, settings.node.aet)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pacsnode-query")

    def handle(self, request: DimseRequest, responder: Responder) -> Awaitable[None] | None:
        """Dispatch on the command and the model of the context."""
        cmd = request.command
        sop = request.context.abstract_syntax
        model = MODELS.get(sop)
        expected = {
            "find": CommandField.C_FIND_RQ,
            "move": CommandField.C_MOVE_RQ,
            "get": CommandField.C_GET_RQ,
        }
        if model is None or cmd.command_field != expected[model[1]]:
            # PS3.7 Annex C (0211H): not a command of this SOP class.
            responder.send(response_to(cmd, Status.UNRECOGNIZED_OPERATION))
            return None
        root, operation = model
        options = options_of(request.association, sop, self.settings.query.case_insensitive_names)
        try:
            identifier = decode_identifier(request.dataset, request.context.transfer_syntax)
            query = prepare(identifier, root, options, retrieve=operation != "find")
        except QueryError as exc:
            log.info(
                "%s: %s refused (0x%04X): %s",
                request.association.calling_ae_title,
                cmd.command_field.name if hasattr(cmd.command_field, "name") else cmd.command_field,
                exc.status,
                exc.comment,
            )
            responder.send(failure_response(cmd, exc))
            self._audit_refusal(request, operation, f"0x{exc.status:04X} {exc.comment}")
            return None
        if operation == "find":
            return self._find(request, responder, query, _requested_charset(identifier))
        if operation == "move":
            return self._move(request, responder, query)
        return self._get(request, responder, query)

    # ------------------------------------------------------------ C-FIND

    async def _find(
        self, request: DimseRequest, responder: Responder, query: PreparedQuery, charset: list[str]
    ) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        cancelled: asyncio.Future[None] = loop.create_future()
        ts = request.context.transfer_syntax

        def cancel() -> None:
            stop.set()
            if not cancelled.done():
                cancelled.set_result(None)

        responder.on_cancel(cancel)
        selective = self.engine.is_selective(query)
        rows = self.engine.find(query, stop, self.settings.query.max_results, stream=not selective)

        def next_batch(seconds: float) -> tuple[list[bytes], bool]:
            # What the database yields within a few milliseconds (or 32 answers), and whether
            # that was all: one batch per thread hop, and a worker never waits for the network.
            batch: list[bytes] = []
            started = time.monotonic()
            for answer in rows:
                batch.append(encode_answer(answer, ts, charset))
                if len(batch) >= _BATCH or time.monotonic() - started > seconds:
                    return batch, False
            return batch, True

        cmd = request.command
        matches = 0
        fetch: asyncio.Future[tuple[list[bytes], bool]] | None = None
        failure = ""
        try:
            if selective:
                # An index lookup of a few rows: answered on the loop, without a thread hop.
                batch, done = next_batch(_INLINE_SECONDS)
            else:
                batch, done = [], False
            while True:
                if not done:
                    # The next batch is read while this one is sent.
                    fetch = loop.run_in_executor(self._pool, next_batch, _BATCH_SECONDS)
                for data in batch:
                    if responder.cancelled:
                        break
                    responder.send(response_to(cmd, Status.PENDING, has_dataset=True), data)
                    matches += 1
                await responder.drain()
                if fetch is not None and not responder.cancelled:
                    await asyncio.wait((fetch, cancelled), return_when=asyncio.FIRST_COMPLETED)
                if responder.cancelled:
                    # PS3.4 C.4.1.2.3: a C-CANCEL ends the matches with status Cancel.
                    responder.send(response_to(cmd, Status.CANCEL))
                    log.info("C-FIND cancelled after %d matches", matches)
                    return
                if fetch is None:
                    break
                batch, done = fetch.result()
                fetch = None
            responder.send(response_to(cmd, Status.SUCCESS))
            log.debug(
                "C-FIND %d from %s: %s level, %d matches",
                cmd.message_id,
                request.association.calling_ae_title,
                query.level,
                matches,
            )
        except asyncio.CancelledError:
            failure = "the association ended before the last answer"
            raise
        except Exception as exc:
            log.error("C-FIND failed: %s", exc, exc_info=exc)
            failure = f"query failed: {exc}"[:1024]
            responder.send(response_to(cmd, 0xC001, error_comment=failure))
        finally:
            # PS3.15 A.5.3.10: Query, with the identifier as received.
            self._audit_query(request, failure)
            stop.set()
            if fetch is not None and not fetch.done():
                # A worker is in the rows: close them once its batch is done (one user at a time).
                fetch.add_done_callback(lambda _f: self._pool.submit(rows.close))
            else:
                rows.close()

    # ------------------------------------------------------------ C-MOVE

    async def _instances(self, query: PreparedQuery, responder: Responder) -> list[InstanceRef]:
        stop = threading.Event()
        responder.on_cancel(stop.set)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.engine.instances, query, stop)

    def _final(self, cmd: Command, responder: Responder, counts: Counts, cancelled: bool, ts: str) -> None:
        # PS3.4 C.4.2.1.5 / C.4.3.1.4: Success, B000 with failures or warnings, A702 when none
        # could be done, FE00 when cancelled; a Failed SOP Instance UID List with failures.
        if cancelled:
            status = Status.CANCEL
        elif counts.failed and not counts.completed and not counts.warning:
            status = Status.OUT_OF_RESOURCES_SUBOPERATIONS
        elif counts.failed or counts.warning:
            status = Status.SUBOPERATIONS_COMPLETE_WITH_FAILURES
        else:
            status = Status.SUCCESS
        fields = counts.fields(final=not cancelled)
        if counts.failed_uids:
            ident = Dataset()
            ident.add_new(FAILED_SOP_INSTANCE_UID_LIST, "UI", counts.failed_uids)
            responder.send(response_to(cmd, status, has_dataset=True, **fields), encode(ident, ts))
        else:
            responder.send(response_to(cmd, status, **fields))

    async def _move(self, request: DimseRequest, responder: Responder, query: PreparedQuery) -> None:
        cmd = request.command
        destination = (cmd.move_destination or "").strip()
        peer = self.settings.peers.get(destination)
        endpoint = peer.endpoint() if peer is not None else None
        if endpoint is None or self.connector is None:
            # PS3.4 C.4.2.1.5: A801, the destination is not one we know.
            log.info("C-MOVE to unknown destination %r refused", destination)
            responder.send(
                response_to(
                    cmd,
                    Status.MOVE_DESTINATION_UNKNOWN,
                    error_comment=f"unknown move destination {destination!r} (no [peers.{destination}])",
                )
            )
            self._audit_refusal(request, "move", f"unknown move destination {destination!r}")
            return
        refs = await self._instances(query, responder)
        counts = Counts(len(refs))
        ts = request.context.transfer_syntax
        if not refs:
            self._final(cmd, responder, counts, responder.cancelled, ts)
            return
        # PS3.15 A.5.3.3 / A.5.3.7: to the destination, at the request of the C-MOVE's requestor.
        target, requestor = (
            Actor(destination, endpoint[0], ae_title=destination),
            association_peer(request.association),
        )
        self._audit_begin(refs, target, requestor)
        try:
            originator = (request.association.calling_ae_title, cmd.message_id or 0)
            timeout = self.settings.query.move_timeout
            queue = list(refs)
            for contexts in plan_contexts(refs):
                sops = {c.abstract_syntax for c in contexts}
                batch = [r for r in queue if r.sop_class_uid in sops]
                queue = [r for r in queue if r.sop_class_uid not in sops]
                if responder.cancelled:
                    break
                try:
                    assoc = await self.connector(
                        *endpoint,
                        called_ae_title=destination,
                        calling_ae_title=self.settings.node.aet,
                        contexts=contexts,
                        connect_timeout=timeout,
                        acse_timeout=timeout,
                        dimse_timeout=timeout,
                    )
                except Exception as exc:
                    log.warning("C-MOVE: cannot associate with %s at %s:%d: %s", destination, *endpoint, exc)
                    for ref in batch:
                        counts.fail(ref.sop_instance_uid)
                    continue
                contexts_of = list(assoc.negotiated.contexts.values())
                sent = 0
                try:
                    async for ref, ctx, data in self._loaded(
                        batch, functools.partial(choose_context, contexts_of)
                    ):
                        if responder.cancelled:
                            break
                        if ctx is None or data is None:
                            counts.fail(ref.sop_instance_uid)
                        else:
                            try:
                                outcome = await assoc.store(
                                    data,
                                    ref.sop_class_uid,
                                    ref.sop_instance_uid,
                                    ctx.transfer_syntax,
                                    move_originator=originator,
                                )
                            except Exception as exc:  # the destination went away: the rest fail
                                log.warning("C-MOVE to %s: sub-operation failed: %s", destination, exc)
                                for rest in batch[sent:]:
                                    counts.fail(rest.sop_instance_uid)
                                break
                            counts.record(outcome.status, ref.sop_instance_uid)
                        sent += 1
                        responder.send(response_to(cmd, Status.PENDING, **counts.fields(final=False)))
                        await responder.drain()
                finally:
                    try:
                        await assoc.release(timeout)
                    except Exception:
                        assoc.abort()
        finally:
            # PS3.15 A.5.3.7: what went, also when the association ended half way.
            self._audit_sent(refs, counts, target, requestor)
        self._final(cmd, responder, counts, responder.cancelled, ts)

    async def _loaded(
        self, refs: Sequence[InstanceRef], context_for: Callable[[InstanceRef], NegotiatedContext | None]
    ) -> AsyncIterator[tuple[InstanceRef, NegotiatedContext | None, bytes | Iterator[bytes] | None]]:
        """Each instance with its context and data set, the next one read while this one is sent."""
        loop = asyncio.get_running_loop()

        def start(ref: InstanceRef) -> tuple[InstanceRef, NegotiatedContext | None, Any]:
            ctx = context_for(ref)
            if ctx is None:
                log.info("no accepted presentation context for %s", ref.sop_class_uid)
                return ref, None, None
            path = self.archive.store.absolute(ref.path)
            future = loop.run_in_executor(self._pool, load_payload, path, ref, ctx.transfer_syntax)
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            return ref, ctx, future

        ahead = start(refs[0]) if refs else None
        for i in range(len(refs)):
            assert ahead is not None
            ref, ctx, future = ahead
            ahead = start(refs[i + 1]) if i + 1 < len(refs) else None
            data = None
            if future is not None:
                try:
                    data = await future
                except Exception as exc:
                    # A missing, damaged or unconvertible file fails its own sub-operation only.
                    log.error("cannot send %s (%s): %s", ref.sop_instance_uid, ref.path, exc)
            yield ref, ctx, data

    # ------------------------------------------------------------ C-GET

    async def _get(self, request: DimseRequest, responder: Responder, query: PreparedQuery) -> None:
        cmd = request.command
        refs = await self._instances(query, responder)
        counts = Counts(len(refs))
        contexts = list(request.association.contexts.values())
        requestor = association_peer(request.association)  # PS3.15 A.5.3.7: the destination asked
        self._audit_begin(refs, requestor, "destination")
        try:
            # PS3.4 C.4.3.3.1: sub-operations go on contexts where the SCU took the SCP role.
            async for ref, ctx, data in self._loaded(
                refs, lambda r: choose_context(contexts, r, requestor_scp=True)
            ):
                if responder.cancelled:
                    break
                if ctx is None or data is None:
                    counts.fail(ref.sop_instance_uid)
                else:
                    store = c_store_rq(
                        responder.next_message_id(),
                        ref.sop_class_uid,
                        ref.sop_instance_uid,
                        cmd.priority or 0,
                    )
                    rsp, _ = await responder.sub_request(ctx.context_id, store, data)
                    counts.record(rsp.status if rsp.status is not None else 0xC000, ref.sop_instance_uid)
                responder.send(response_to(cmd, Status.PENDING, **counts.fields(final=False)))
                await responder.drain()
        finally:
            self._audit_sent(refs, counts, requestor, "destination")  # PS3.15 A.5.3.7
        self._final(cmd, responder, counts, responder.cancelled, request.context.transfer_syntax)

    # ------------------------------------------------------------ audit (PS3.15 A.5.3)

    def _audit_query(self, request: DimseRequest, failure: str) -> None:
        outcome = Outcome.MINOR_FAILURE if failure else Outcome.SUCCESS
        self.audit.emit(
            query(
                association_peer(request.association),
                self.me,
                request.context.abstract_syntax,
                request.dataset or b"",
                request.context.transfer_syntax,
                outcome=outcome,
                description=failure,
            )
        )

    def _audit_refusal(self, request: DimseRequest, operation: str, why: str) -> None:
        if operation == "find":
            self._audit_query(request, why)
            return
        # A retrieve refused before it began: DICOM Instances Transferred that failed, no study.
        peer = association_peer(request.association)
        nothing = StudyRef("")
        failed = Outcome.MINOR_FAILURE
        self.audit.emit(
            instances_transferred(
                "R", self.me, peer, nothing, initiator=peer, outcome=failed, description=why
            )
        )

    def _audit_begin(self, refs: Sequence[InstanceRef], destination: Actor, initiator: Initiator) -> None:
        for study in StudyTally().add_refs(refs).studies():
            self.audit.emit(begin_transferring(self.me, destination, study, initiator=initiator))

    def _audit_sent(
        self, refs: Sequence[InstanceRef], counts: Counts, destination: Actor, initiator: Initiator
    ) -> None:
        tally = StudyTally()
        for ref in refs:
            if ref.sop_instance_uid in counts.outcomes:  # not those a C-CANCEL left unsent
                tally.add_ref(ref, counts.outcomes[ref.sop_instance_uid])
        for study in tally.studies():
            self.audit.emit(instances_transferred("R", self.me, destination, study, initiator=initiator))


# ---------------------------------------------------------------- registrations


def _sop_classes(operation: str) -> tuple[SOPClass, ...]:
    return tuple(SOPClass(uid, uid_name(uid)) for uid in model_sop_classes(operation))


def query_retrieve_services(
    archive: Archive | None,
    settings: Settings,
    connector: Connector | None = None,
    audit: AuditSink | None = None,
) -> list[ServiceRegistration]:
    """The Query/Retrieve SOP classes, SCP: FIND, MOVE and GET of both roots."""
    handler = QueryRetrieveSCP(archive, settings, connector, audit) if archive is not None else None
    common = {"transfer_syntaxes": _UNCOMPRESSED, "scp": True, "scu": True, "handler": handler}
    return [
        ServiceRegistration(
            name="Query/Retrieve - FIND",
            standard="PS3.4 Annex C",
            sop_classes=_sop_classes("find"),
            negotiate_extended=find_extended_negotiation,
            extended_negotiation=(
                "Relational queries, combined date and time range matching and fuzzy semantic "
                "matching of person names are accepted when proposed; timezone adjustment is not."
            ),
            notes=(
                "Patient Root and Study Root, every level. Matching per PS3.4 C.2.2.2: single value, "
                "universal, wildcard (* and ?), date/time/datetime ranges, lists of UIDs, sequence "
                "matching. Person names match any component group and, by default, ignore case and "
                "accents ([query] case_insensitive_names). Keys the index holds are matched in SQL; "
                "any other key is matched and returned from one stored instance of each entity. "
                "Pending responses stream as the database yields rows; C-CANCEL stops at once."
            ),
            status_codes=(
                (Status.PENDING, "One match, with its identifier."),
                (Status.SUCCESS, "All matches were sent."),
                (Status.CANCEL, "A C-CANCEL-RQ stopped the matches."),
                (
                    Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                    "No or an invalid Query/Retrieve Level, a key below the level (hierarchical), "
                    "or an Identifier that cannot be parsed.",
                ),
                (0xC000, "A key value no matching rule accepts (too long, not a date, ...)."),
                (0xC001, "The index failed while answering."),
            ),
            **common,  # type: ignore[arg-type]
        ),
        ServiceRegistration(
            name="Query/Retrieve - MOVE",
            standard="PS3.4 Annex C",
            sop_classes=_sop_classes("move"),
            negotiate_extended=retrieve_extended_negotiation,
            extended_negotiation="Relational retrieval is accepted when proposed.",
            notes=(
                "Destinations come from [peers.AETITLE] in the configuration. One sub-association per "
                "128 presentation contexts, proposing each stored transfer syntax and the uncompressed "
                "ones; an instance the destination accepts in neither is converted (decompressed) when "
                "pydicom can decode it. Pending responses carry the sub-operation counts."
            ),
            status_codes=(
                (Status.PENDING, "After each sub-operation, with the counts."),
                (Status.SUCCESS, "Every sub-operation succeeded (or there was nothing to move)."),
                (Status.SUBOPERATIONS_COMPLETE_WITH_FAILURES, "Some sub-operations failed or warned."),
                (Status.OUT_OF_RESOURCES_SUBOPERATIONS, "No sub-operation succeeded (destination down)."),
                (Status.MOVE_DESTINATION_UNKNOWN, "The Move Destination is not a configured peer."),
                (Status.CANCEL, "A C-CANCEL-RQ stopped the sub-operations."),
                (Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "No unique key of the retrieve level."),
            ),
            **common,  # type: ignore[arg-type]
        ),
        ServiceRegistration(
            name="Query/Retrieve - GET",
            standard="PS3.4 Annex C",
            sop_classes=_sop_classes("get"),
            negotiate_extended=retrieve_extended_negotiation,
            extended_negotiation="Relational retrieval is accepted when proposed.",
            notes=(
                "C-STORE sub-operations go on the same association, on the Storage contexts for which "
                "the SCU took the SCP role (SCP/SCU Role Selection, PS3.7 D.3.3.4); an instance is sent "
                "in its stored transfer syntax or converted to an accepted uncompressed one."
            ),
            status_codes=(
                (Status.PENDING, "After each sub-operation, with the counts."),
                (Status.SUCCESS, "Every sub-operation succeeded (or there was nothing to get)."),
                (Status.SUBOPERATIONS_COMPLETE_WITH_FAILURES, "Some sub-operations failed or warned."),
                (Status.OUT_OF_RESOURCES_SUBOPERATIONS, "No sub-operation succeeded."),
                (Status.CANCEL, "A C-CANCEL-RQ stopped the sub-operations."),
                (Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "No unique key of the retrieve level."),
            ),
            **common,  # type: ignore[arg-type]
        ),
    ]
