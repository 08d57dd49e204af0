"""`pacsnode find`, `move` and `get`: the Query/Retrieve SCU (PS3.4 Annex C) from the command line."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.archive.qr_model import model_sop_class
from pacsnode.cli.files import quiet_pydicom
from pacsnode.config.settings import NetworkSettings
from pacsnode.data.identifier import IdentifierError, build_identifier, set_key
from pacsnode.data.transcode import TranscodeError, first_line
from pacsnode.data.uids import all_transfer_syntaxes, uid_name
from pacsnode.dimse.status import StatusCategory, category, describe
from pacsnode.net.client import (
    Association,
    AssociationClosed,
    AssociationError,
    NoAcceptedContext,
    RetrieveProgress,
    get_contexts,
    open_association,
    query_contexts,
)
from pacsnode.net.loop import run_loop
from pacsnode.net.receive import COMMON_STORAGE_SOP_CLASSES, InstanceWriter, StoredFile
from pacsnode.net.server import DicomServer
from pacsnode.services.base import ServiceRegistration, ServiceRegistry
from pacsnode.services.storage import storage_sop_classes
from pacsnode.services.verification import verification_service
from pacsnode.ul.negotiation import ProposedContext

# Return keys asked for when the user gives none (PS3.4 C.6.1.1, C.6.2.1: keys of each level).
DEFAULT_KEYS = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": (
        "PatientName",
        "PatientID",
        "StudyDate",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "StudyInstanceUID",
    ),
    "SERIES": ("Modality", "SeriesNumber", "SeriesDescription", "SeriesInstanceUID"),
    "IMAGE": ("InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}
T = TypeVar("T")
_NOT_SHOWN = frozenset((0x00080005, 0x00080052))  # Specific Character Set, Query/Retrieve Level


class UsageError(Exception):
    """Bad command line input (exit code 2)."""


@dataclass
class QROptions:
    """How to reach the peer, and which information model to use."""

    host: str
    port: int
    calling: str = "PACSNODE"
    called: str = "ANY-SCP"
    model: str = "study"
    connect_timeout: float = 30.0
    acse_timeout: float = 30.0
    dimse_timeout: float | None = None
    max_pdu: int = 262_144
    tls: SSLContext | None = None  # DICOM over TLS (PS3.15 B.9) with this client context

    def sop_class(self, operation: str) -> str:
        """The SOP class UID of `operation` ("find", "move", "get") in the chosen model."""
        return model_sop_class(self.model.upper(), operation)

    async def connect(
        self, contexts: Sequence[ProposedContext], handlers: dict[str, InstanceWriter] | None = None
    ) -> Association:
        """Open the association (raises AssociationError)."""
        return await open_association(
            self.host,
            self.port,
            called_ae_title=self.called,
            calling_ae_title=self.calling,
            contexts=contexts,
            max_pdu_length=self.max_pdu,
            connect_timeout=self.connect_timeout,
            acse_timeout=self.acse_timeout,
            dimse_timeout=self.dimse_timeout,
            handlers=dict(handlers or {}),
            ssl=self.tls,
        )


# ---------------------------------------------------------------- identifiers


def read_query_file(path: Path) -> Dataset:
    """A query file (a DICOM data set, with or without File Meta Information), as DCMTK reads one."""
    try:
        with quiet_pydicom():
            # The data set only: the File Meta Information is not part of a query.
            plain = Dataset(dcmread(path, force=True))
            for _ in plain.iterall():  # read every value now, so a broken file fails here
                pass
    except Exception as exc:
        raise UsageError(f"cannot read query file {path}: {first_line(exc)}") from None
    return plain


def identifiers(
    keys: Sequence[str], query_files: Sequence[Path], model: str, *, default_keys: bool = False
) -> list[Dataset]:
    """One Identifier per query file (or one without), with the `-k` keys applied over it.

    PS3.4 C.4.1.1.3: Query/Retrieve Level is always there (the model's top level
    when not given); with `default_keys` and no key but the level, the level's
    usual return keys are asked for.
    """
    bases: list[Dataset | None] = [read_query_file(p) for p in query_files] or [None]
    out = []
    for base in bases:
        try:
            ds = build_identifier(keys, base)
        except IdentifierError as exc:
            raise UsageError(f"bad key {exc}") from None
        if not ds.get("QueryRetrieveLevel"):
            ds.QueryRetrieveLevel = "PATIENT" if model == "patient" else "STUDY"
        level = str(ds.QueryRetrieveLevel).strip().upper()
        if default_keys and base is None and len(ds) == 1:
            for keyword in DEFAULT_KEYS.get(level, ()):
                set_key(ds, keyword)
        out.append(ds)
    return out


# ---------------------------------------------------------------- showing identifiers


def _text(elem: DataElement) -> str:
    value = elem.value
    if elem.VR == "SQ":
        return f"({len(value)} item{'s' if len(value) != 1 else ''})"
    if value is None or value == "":
        return ""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def results_table(title: str, request: Dataset, results: Sequence[Dataset]) -> Table:
    """One row per match, one column per attribute (those asked for first, in tag order)."""
    tags = [e.tag for e in request if e.tag not in _NOT_SHOWN]
    extra = sorted({e.tag for ds in results for e in ds if e.tag not in _NOT_SHOWN} - set(tags))
    columns = sorted(tags) + extra
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for tag in columns:
        name = request[tag].keyword if tag in request else ""
        if not name:
            name = next((ds[tag].keyword for ds in results if tag in ds), "") or str(tag)
        table.add_column(name or str(tag), overflow="fold")
    for ds in results:
        table.add_row(*(escape(_text(ds[tag])) if tag in ds else "" for tag in columns))
    return table


def to_json(results: Sequence[Dataset]) -> str:
    """The matches as one DICOM JSON array (PS3.18 Annex F)."""
    return json.dumps([ds.to_json_dict() for ds in results], indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- find


@dataclass
class FindOutcome:
    """What one or more C-FINDs returned."""

    results: list[Dataset] = field(default_factory=list)
    final_statuses: list[int] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """Every C-FIND ended in Success, Cancel (asked for) or a Warning."""
        return all(
            category(s) in (StatusCategory.SUCCESS, StatusCategory.CANCEL, StatusCategory.WARNING)
            for s in self.final_statuses
        )


async def _find(
    options: QROptions,
    requests: Sequence[Dataset],
    cancel_after: int | None,
    on_result: Callable[[Dataset], None],
) -> FindOutcome:
    outcome = FindOutcome()
    sop_class = options.sop_class("find")
    assoc = await options.connect(query_contexts([sop_class]))
    try:
        for request in requests:
            count = 0
            async for rsp in assoc.find(request, sop_class):
                if rsp.pending:
                    if rsp.identifier is not None:
                        count += 1
                        outcome.results.append(rsp.identifier)
                        on_result(rsp.identifier)
                    if cancel_after is not None and count == cancel_after:
                        # PS3.7 9.3.2.3: enough; the peer ends with Cancel (or its last answer).
                        assoc.cancel(rsp.message_id)
                        outcome.cancelled = True
                    continue
                outcome.final_statuses.append(rsp.status)
                outcome.comments.append(rsp.error_comment)
    except BaseException:
        assoc.abort()
        raise
    await assoc.release(options.acse_timeout)
    return outcome


def run_find(
    options: QROptions,
    requests: Sequence[Dataset],
    *,
    as_json: bool,
    cancel_after: int | None,
    out: Console,
    console: Console,
    verbose: int = 0,
) -> bool:
    """`pacsnode find`: print the matches; True when every C-FIND succeeded (or was cancelled)."""
    started = time.perf_counter()
    with Progress(
        TextColumn("C-FIND"),
        TextColumn("{task.completed} matches"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("find", total=None)

        def seen(_ds: Dataset) -> None:
            progress.advance(task)

        with quiet_pydicom():
            outcome = _run_operation(console, lambda: _find(options, requests, cancel_after, seen))
            if outcome is None:
                return False
            try:
                if as_json:
                    out.file.write(to_json(outcome.results) + "\n")  # plain text: no Rich markup or emoji
                else:
                    level = str(requests[0].get("QueryRetrieveLevel", "")).strip()
                    title = f"C-FIND {level} at {options.called} ({options.host}:{options.port})"
                    out.print(results_table(title, requests[0], outcome.results))
            except Exception as exc:
                console.print(f"[bold red]error:[/] cannot show the matches: {escape(first_line(exc))}")
                return False
    elapsed = time.perf_counter() - started
    for status, comment in zip(outcome.final_statuses, outcome.comments, strict=True):
        cat = category(status)
        if cat is StatusCategory.SUCCESS and not verbose:
            continue
        text = f"C-FIND: {describe(status)}" + (f" ({comment})" if comment else "")
        style = "red" if cat is StatusCategory.FAILURE else "yellow"
        console.print(f"[{style}]{escape(text)}[/]", highlight=False)
    note = f" (cancelled after {cancel_after})" if outcome.cancelled else ""
    console.print(f"{len(outcome.results)} matches{note} in {elapsed:.2f} s", highlight=False)
    return outcome.ok


# ---------------------------------------------------------------- move and get


class RetrieveDisplay:
    """A progress bar over the sub-operations (remaining/completed/failed/warning), on stderr."""

    def __init__(self, console: Console, label: str) -> None:
        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            TextColumn(
                "{task.fields[completed_]} completed, {task.fields[failed]} failed, "
                "{task.fields[warning]} warning, {task.fields[remaining]} remaining"
            ),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(
            label, total=None, completed_=0, failed=0, warning=0, remaining="?"
        )

    def __enter__(self) -> RetrieveDisplay:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def update(self, p: RetrieveProgress) -> None:
        """Show one response's counts."""
        done = (p.completed or 0) + (p.failed or 0) + (p.warning or 0)
        total = done + p.remaining if p.remaining is not None else None
        self.progress.update(
            self.task,
            total=total,
            completed=done,
            completed_=p.completed or 0,
            failed=p.failed or 0,
            warning=p.warning or 0,
            remaining="?" if p.remaining is None else p.remaining,
        )


async def _retrieve(
    assoc: Association,
    operations: Callable[[Dataset], AsyncIterator[RetrieveProgress]],
    requests: Sequence[Dataset],
    on_progress: Callable[[RetrieveProgress], None],
    acse_timeout: float,
) -> list[RetrieveProgress]:
    finals: list[RetrieveProgress] = []
    try:
        for request in requests:
            async for p in operations(request):
                on_progress(p)
                if p.final:
                    finals.append(p)
    except BaseException:
        assoc.abort()
        raise
    await assoc.release(acse_timeout)
    return finals


def _summarise(console: Console, verb: str, finals: Sequence[RetrieveProgress], elapsed: float) -> bool:
    ok = bool(finals)
    for p in finals:
        counts = (
            f"{p.completed if p.completed is not None else '?'} completed, "
            f"{p.failed if p.failed is not None else '?'} failed, "
            f"{p.warning if p.warning is not None else '?'} warning"
        )
        comment = f" ({p.error_comment})" if p.error_comment else ""
        style = (
            "green" if p.ok else "red" if not p.ok and p.category is not StatusCategory.WARNING else "yellow"
        )
        console.print(
            f"[{style}]{verb}: {escape(describe(p.status))}{escape(comment)}[/]; {counts} in {elapsed:.2f} s",
            highlight=False,
            soft_wrap=True,
        )
        if p.failed_sop_instance_uids:
            console.print("failed SOP instances (0008,0058):", highlight=False)
            for uid in p.failed_sop_instance_uids:
                console.print(f"  {escape(uid)}", highlight=False)
        ok = ok and p.ok
    return ok


@dataclass
class _Received:
    """The instances a retrieve wrote: each said as it comes (with -v), then their sum."""

    console: Console
    verbose: int
    files: list[StoredFile] = field(default_factory=list)

    def __call__(self, item: StoredFile) -> None:
        self.files.append(item)
        if self.verbose:
            self.console.print(f"received {escape(str(item.path))} ({escape(uid_name(item.sop_class_uid))})")

    def summary(self, verb: str, folder: Path) -> None:
        size = sum(f.size for f in self.files)
        self.console.print(
            f"{len(self.files)} files {verb} {escape(str(folder))} ({size / 1e6:.1f} MB)", highlight=False
        )


def receiver_registry(output: Path, on_stored: Callable[[StoredFile], None]) -> ServiceRegistry:
    """Verification and every Storage SOP class, each instance written into ``output``."""
    writer = InstanceWriter(output, on_stored)
    registry = ServiceRegistry()
    registry.register(verification_service())
    registry.register(
        ServiceRegistration(
            name="Storage (C-MOVE receiver)",
            standard="PS3.4 Annex B",
            sop_classes=storage_sop_classes(),
            transfer_syntaxes=all_transfer_syntaxes(),
            handler=writer,
        )
    )
    return registry


def run_move(
    options: QROptions,
    requests: Sequence[Dataset],
    destination: str,
    *,
    console: Console,
    store_port: int | None = None,
    output: Path | None = None,
    verbose: int = 0,
) -> bool:
    """`pacsnode move`: True when every C-MOVE ended in Success with no failed sub-operation.

    With ``store_port``, the command is also the destination, as DCMTK's movescu with
    ``--port``: a Storage SCP (AE title = our calling AE title) listens on that port for
    the C-MOVE sub-operations and writes each instance into ``output``.
    """
    started = time.perf_counter()
    sop_class = options.sop_class("move")
    received = _Received(console, verbose)

    async def main() -> list[RetrieveProgress]:
        server: DicomServer | None = None
        if store_port is not None:
            server = DicomServer(
                ae_title=options.calling,
                registry=receiver_registry(output or Path("."), received),
                network=NetworkSettings(),
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            )
            await server.start("0.0.0.0", store_port)  # the peer connects back from anywhere
        try:
            assoc = await options.connect(query_contexts([sop_class]))
            with RetrieveDisplay(console, f"C-MOVE to {destination}") as display:
                return await _retrieve(
                    assoc,
                    lambda ds: assoc.move(ds, sop_class, destination),
                    requests,
                    display.update,
                    options.acse_timeout,
                )
        finally:
            if server is not None:
                # The sub-associations end before the final C-MOVE-RSP (PS3.4 C.4.2.3.1); any
                # still open gets the usual drain time.
                await server.close()

    with quiet_pydicom():
        try:
            finals = _run_operation(console, main)
        except OSError as exc:
            console.print(
                f"[bold red]error:[/] cannot listen on port {store_port}: {exc.strerror}", highlight=False
            )
            return False
    if finals is None:
        return False
    ok = _summarise(console, "C-MOVE", finals, time.perf_counter() - started)
    if store_port is not None:
        received.summary("received into", output or Path("."))
    return ok


def run_get(
    options: QROptions,
    requests: Sequence[Dataset],
    output: Path,
    *,
    extra_transfer_syntaxes: Sequence[str] = (),
    console: Console,
    verbose: int = 0,
) -> bool:
    """`pacsnode get`: write the instances into `output`; True when every C-GET fully succeeded."""
    started = time.perf_counter()
    sop_class = options.sop_class("get")
    received = _Received(console, verbose)

    writer = InstanceWriter(output, received)
    contexts = get_contexts([sop_class], COMMON_STORAGE_SOP_CLASSES, extra_transfer_syntaxes)
    handlers = {ctx.abstract_syntax: writer for ctx in contexts if ctx.scp_role}

    async def main() -> list[RetrieveProgress]:
        assoc = await options.connect(contexts, handlers)
        with RetrieveDisplay(console, "C-GET") as display:
            return await _retrieve(
                assoc, lambda ds: assoc.get(ds, sop_class), requests, display.update, options.acse_timeout
            )

    with quiet_pydicom():
        finals = _run_operation(console, main)
    if finals is None:
        return False
    ok = _summarise(console, "C-GET", finals, time.perf_counter() - started)
    received.summary("written to", output)
    return ok


def _run_operation(console: Console, make: Callable[[], Coroutine[Any, Any, T]]) -> T | None:
    """Run one network operation; on failure say why (one line) and return None."""
    try:
        return run_loop(make())
    except NoAcceptedContext as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    except (AssociationError, AssociationClosed) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    except TranscodeError as exc:
        console.print(
            f"[bold red]error:[/] cannot encode the identifier: {escape(str(exc))}", highlight=False
        )
    return None
