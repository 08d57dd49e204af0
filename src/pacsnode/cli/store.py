"""`pacsnode store`: the Storage SCU (PS3.4 Annex B) for files and folders, converting when the peer must."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from ssl import SSLContext
from typing import BinaryIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from pacsnode.cli.files import (
    DicomDir,
    DicomFile,
    Inspected,
    NotSendable,
    convert,
    inspect_all,
    quiet_pydicom,
)
from pacsnode.data.transcode import TranscodeError
from pacsnode.data.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    uid_name,
)
from pacsnode.dimse.status import StatusCategory, category, describe
from pacsnode.net.client import (
    Association,
    AssociationClosed,
    AssociationError,
    NoAcceptedContext,
    StoreResponse,
    open_association,
)
from pacsnode.net.loop import run_loop
from pacsnode.ul.negotiation import Negotiated, ProposedContext

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1..255
_CONVERSION_TARGETS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)  # in order of preference
_READ_CHUNK = 1 << 20  # a bigger data set is read while it is sent, this much at a time
_CONTEXT_RESULT = {  # PS3.8 Table 9-18
    1: "user rejection",
    2: "no reason",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one file."""

    path: Path
    result: str  # the summary line it counts in, e.g. "Success" or "Failure 0xA700: ..."
    failed: bool
    comment: str = ""
    status: int | None = None
    sop_instance_uid: str = ""
    transfer_syntax: str = ""  # the one it was sent in
    converted: bool = False
    size: int = 0


def result_of_status(status: int) -> tuple[str, bool]:
    """The summary line of a C-STORE status, and whether it is a failure (PS3.4 B.2.3)."""
    cat = category(status)
    if cat is StatusCategory.SUCCESS:
        return "Success", False
    return describe(status), cat is not StatusCategory.WARNING


def not_sent(item: NotSendable, verb: str = "Not sent") -> FileResult:
    """The result for a path that holds nothing to send."""
    label = "Skipped: not DICOM" if not item.failure else f"{verb}: {item.reason}"
    return FileResult(item.path, label, item.failure, item.detail, size=item.size)


def dicomdir_result(item: DicomDir, done: str = "sent") -> FileResult:
    """A DICOMDIR is read for its references, never sent (PS3.10 8.6: it is not a composite instance)."""
    label = f"Skipped: DICOMDIR (its referenced files are {done})"
    return FileResult(item.path, label, False, f"{len(item.referenced)} files")


@dataclass
class Summary:
    """Counts per result line, the first comment and file of each, and totals."""

    results: list[FileResult] = field(default_factory=list)

    def add(self, result: FileResult) -> None:
        """Count one file."""
        self.results.append(result)

    @property
    def failed(self) -> int:
        """Files that failed, were refused or could not be sent."""
        return sum(1 for r in self.results if r.failed)

    def table(self, title: str) -> Table:
        """One row per result: count, and the first file with its comment."""
        groups: dict[str, list[FileResult]] = {}
        for r in self.results:
            groups.setdefault(r.result, []).append(r)
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("result")
        table.add_column("files", justify="right")
        table.add_column("first file and comment", overflow="fold")

        def order(item: tuple[str, list[FileResult]]) -> tuple[int, str]:
            label, members = item
            rank = 0 if label == "Success" else 2 if members[0].failed else 1
            return rank, label

        for label, members in sorted(groups.items(), key=order):
            first = members[0]
            note = str(first.path) + (f": {first.comment}" if first.comment else "")
            style = "red" if first.failed else "green" if label == "Success" else "yellow"
            table.add_row(f"[{style}]{escape(label)}[/]", str(len(members)), escape(note))
        return table

    def write_report(self, path: Path) -> None:
        """One tab-separated line per file (for scripts and tests)."""
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh, delimiter="\t", lineterminator="\n")
            out.writerow(
                ["path", "result", "status", "sop_instance_uid", "transfer_syntax", "converted", "comment"]
            )
            for r in self.results:
                out.writerow(
                    [
                        str(r.path),
                        r.result,
                        "" if r.status is None else f"0x{r.status:04X}",
                        r.sop_instance_uid,
                        r.transfer_syntax,
                        "yes" if r.converted else "",
                        r.comment.replace("\t", " ").replace("\n", " "),
                    ]
                )


# ---------------------------------------------------------------- planning associations


@dataclass
class AssociationPlan:
    """The presentation contexts of one association and the files it carries."""

    contexts: list[ProposedContext] = field(default_factory=list)
    files: list[DicomFile] = field(default_factory=list)


def contexts_for(sop_class_uid: str, transfer_syntaxes: Sequence[str]) -> list[ProposedContext]:
    """One context per transfer syntax of the files, plus one to fall back on uncompressed.

    PS3.8 9.3.3.2: the acceptor picks one transfer syntax per context, so each syntax
    the files are in gets its own (the files then go untouched); the last context
    offers Explicit and Implicit VR Little Endian, which every peer supports
    (PS3.5 10.1), for the files the peer will not take as they are.
    """
    contexts = [ProposedContext(sop_class_uid, (ts,)) for ts in transfer_syntaxes]
    if not set(_CONVERSION_TARGETS) <= set(transfer_syntaxes):
        contexts.append(ProposedContext(sop_class_uid, _CONVERSION_TARGETS))
    return contexts


def plan_associations(files: Sequence[DicomFile], max_contexts: int = MAX_CONTEXTS) -> list[AssociationPlan]:
    """Group files by SOP class and pack the classes' contexts into as few associations as fit."""
    by_class: dict[str, list[DicomFile]] = {}
    for f in files:
        by_class.setdefault(f.sop_class_uid, []).append(f)
    plans: list[AssociationPlan] = []
    current = AssociationPlan()
    for sop_class, members in by_class.items():
        syntaxes = list(dict.fromkeys(f.transfer_syntax for f in members if not f.must_convert))
        contexts = contexts_for(sop_class, syntaxes)[:max_contexts]
        if current.contexts and len(current.contexts) + len(contexts) > max_contexts:
            plans.append(current)
            current = AssociationPlan()
        current.contexts.extend(contexts)
        current.files.extend(members)
    if current.contexts:
        plans.append(current)
    return plans


def _refusal(negotiated: Negotiated, proposed: Sequence[ProposedContext], item: DicomFile) -> str:
    """Why no accepted context fits this file, in the words of PS3.8 Table 9-18."""
    reasons = {
        _CONTEXT_RESULT.get(result, f"result {result}")
        for i, ctx in enumerate(proposed)
        if ctx.abstract_syntax == item.sop_class_uid
        and (result := negotiated.rejected_contexts.get(2 * i + 1)) is not None
    }
    name = uid_name(item.sop_class_uid)
    if reasons == {"abstract syntax not supported"}:
        return f"the peer does not support {name}"
    return f"the peer accepted neither {uid_name(item.transfer_syntax)} nor uncompressed for {name}"


# ---------------------------------------------------------------- sending


@dataclass
class StoreOptions:
    """How to reach the peer and how to send."""

    host: str
    port: int
    calling: str = "PACSNODE"
    called: str = "ANY-SCP"
    connect_timeout: float = 30.0
    acse_timeout: float = 30.0
    dimse_timeout: float | None = None
    max_pdu: int = 262_144
    convert: bool = True
    tls: SSLContext | None = None  # DICOM over TLS (PS3.15 B.9) with this client context


class _AssociationLost(Exception):
    """The association ended while a file was on its way."""


ByteCounter = Callable[[int], None]


def _chunks(fh: BinaryIO, on_bytes: ByteCounter | None, size: int = _READ_CHUNK) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk
        if on_bytes is not None:
            on_bytes(len(chunk))


async def _store_untouched(
    assoc: Association, item: DicomFile, on_bytes: ByteCounter | None
) -> StoreResponse:
    """Send the file's data set bytes as they are on disk (PS3.10 7.1: everything after the meta)."""
    with item.path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(item.offset)
        deflated = item.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
        if size - item.offset <= _READ_CHUNK or deflated:
            data = fh.read()
            if deflated and len(data) % 2:
                data += b"\0"  # PS3.5 A.5: an odd-length deflated stream is padded with one NUL
            return await assoc.store(data, item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax)
        # A big data set is read while it is sent: memory stays at a few chunks for any size.
        chunks = _chunks(fh, on_bytes)
        return await assoc.store(chunks, item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax)


async def send_file(
    assoc: Association,
    proposed: Sequence[ProposedContext],
    item: DicomFile,
    *,
    allow_conversion: bool = True,
    on_bytes: ByteCounter | None = None,
) -> FileResult:
    """C-STORE one file: untouched on its own transfer syntax's context, else converted to uncompressed.

    Raises `_AssociationLost` when the association ends under it.
    """
    negotiated = assoc.negotiated
    base = FileResult(item.path, "", True, sop_instance_uid=item.sop_instance_uid, size=item.size)
    target, converted = item.transfer_syntax, False
    if item.must_convert or negotiated.context_for(item.sop_class_uid, target) is None:
        choices = [ts for ts in _CONVERSION_TARGETS if negotiated.context_for(item.sop_class_uid, ts)]
        if not choices:
            return replace(
                base,
                result="Not sent: no accepted presentation context",
                comment=_refusal(negotiated, proposed, item),
            )
        if not allow_conversion:
            return replace(
                base,
                result="Not sent: transfer syntax refused (--no-convert)",
                comment=f"the peer refused {uid_name(item.transfer_syntax)}",
            )
        target, converted = choices[0], True
    try:
        if converted:
            # Decoding can take a while (a long cine): off the event loop.
            data = await asyncio.to_thread(convert, item, target)
            response = await assoc.store(data, item.sop_class_uid, item.sop_instance_uid, target)
        else:
            response = await _store_untouched(assoc, item, on_bytes)
    except TranscodeError as exc:
        return replace(base, result=f"Not sent: cannot convert to {uid_name(target)}", comment=str(exc))
    except OSError as exc:
        return replace(base, result="Not sent: cannot read file", comment=exc.strerror or str(exc))
    except NoAcceptedContext as exc:  # pragma: no cover - context_for was asked above
        return replace(base, result="Not sent: no accepted presentation context", comment=str(exc))
    except (AssociationError, AssociationClosed) as exc:
        raise _AssociationLost(str(exc)) from exc
    label, failed = result_of_status(response.status)
    return replace(
        base,
        result=label,
        failed=failed,
        comment=response.error_comment,
        status=response.status,
        transfer_syntax=target,
        converted=converted,
    )


async def send_all(
    plans: Sequence[AssociationPlan],
    options: StoreOptions,
    on_result: Callable[[FileResult], None],
    on_associated: Callable[[int, AssociationPlan, Negotiated], None] | None = None,
    on_bytes: ByteCounter | None = None,
) -> None:
    """Send every plan's files, one association per plan, reopening it when a file costs the association."""
    fatal: str | None = None
    for number, plan in enumerate(plans, 1):
        pending = list(reversed(plan.files))
        assoc: Association | None = None
        while pending:
            if fatal is not None:
                while pending:
                    item = pending.pop()
                    on_result(
                        FileResult(
                            item.path,
                            "Not sent: no association",
                            True,
                            fatal,
                            sop_instance_uid=item.sop_instance_uid,
                            size=item.size,
                        )
                    )
                break
            if assoc is not None and not assoc.is_established:
                # The peer released or aborted between two files: not a file's fault.
                assoc.abort()
                await assoc.protocol.closed
                assoc = None
            if assoc is None:
                try:
                    assoc = await open_association(
                        options.host,
                        options.port,
                        called_ae_title=options.called,
                        calling_ae_title=options.calling,
                        contexts=plan.contexts,
                        max_pdu_length=options.max_pdu,
                        connect_timeout=options.connect_timeout,
                        acse_timeout=options.acse_timeout,
                        dimse_timeout=options.dimse_timeout,
                        ssl=options.tls,
                    )
                except AssociationError as exc:
                    fatal = str(exc)  # the peer will not have us: the rest cannot go either
                    continue
                if on_associated is not None:
                    on_associated(number, plan, assoc.negotiated)
            item = pending.pop()
            try:
                result = await send_file(
                    assoc, plan.contexts, item, allow_conversion=options.convert, on_bytes=on_bytes
                )
            except _AssociationLost as exc:
                # PEERS.md: a peer may abort on one file; the others get a new association.
                result = FileResult(
                    item.path,
                    "Failure: association lost while sending",
                    True,
                    str(exc),
                    sop_instance_uid=item.sop_instance_uid,
                    size=item.size,
                )
                assoc.abort()
                await assoc.protocol.closed
                assoc = None
            on_result(result)
        if assoc is not None:
            with contextlib.suppress(AssociationError):
                await assoc.release(options.acse_timeout)


# ---------------------------------------------------------------- the command


class FileProgress:
    """A Rich progress bar over files and bytes, on stderr, drawn only on a terminal."""

    def __init__(self, console: Console, label: str, files: int, total_bytes: int) -> None:
        self.files = files
        self.done = 0
        self._partial = 0  # bytes of the file in progress already counted
        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            TextColumn("{task.fields[count]} files"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(label, total=total_bytes, count=f"0/{files}")

    def __enter__(self) -> FileProgress:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def add_bytes(self, n: int) -> None:
        """Part of a big file went out."""
        self._partial += n
        self.progress.update(self.task, advance=n)

    def file_done(self, size: int) -> None:
        """A file is finished (whatever its result)."""
        self.done += 1
        self.progress.update(
            self.task, advance=max(size - self._partial, 0), count=f"{self.done}/{self.files}"
        )
        self._partial = 0


class Reporter:
    """Prints per-file lines (failures always, all with -v), feeds the progress bar and the summary."""

    def __init__(self, console: Console, verbose: int, summary: Summary, limit: int = 50) -> None:
        self.console = console
        self.verbose = verbose
        self.summary = summary
        self.limit = limit
        self.printed = 0
        self.hidden = 0

    def __call__(self, result: FileResult) -> None:
        self.summary.add(result)
        if not (result.failed or self.verbose):
            return
        if self.printed >= self.limit and not self.verbose:
            self.hidden += 1
            return
        self.printed += 1
        extra = f" ({result.comment})" if result.comment else ""
        how = f" [sent as {uid_name(result.transfer_syntax)}]" if result.converted else ""
        style = "red" if result.failed else "green" if result.result == "Success" else "yellow"
        self.console.print(
            f"[{style}]{escape(result.result)}[/]: {escape(str(result.path))}{escape(how)}{escape(extra)}",
            highlight=False,
            soft_wrap=True,
        )

    def finish(self) -> None:
        """Say how many failure lines were left out."""
        if self.hidden:
            self.console.print(f"... and {self.hidden} more failures (see the summary; -v lists every file)")


def collect(
    paths: Iterable[Path], recursive: bool, console: Console, verb: str = "Not sent"
) -> tuple[list[DicomFile], list[FileResult]]:
    """Inspect every file; returns what can be sent, and the results of what cannot."""
    files: list[DicomFile] = []
    others: list[FileResult] = []
    with Progress(
        TextColumn("reading headers"),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("scan", total=None)

        def seen(_item: Inspected) -> None:
            progress.advance(task)

        for item in inspect_all(paths, recursive=recursive, on_file=seen):
            if isinstance(item, DicomFile):
                files.append(item)
            elif isinstance(item, DicomDir):
                others.append(dicomdir_result(item, "sent" if verb == "Not sent" else "imported"))
            else:
                others.append(not_sent(item, verb))
    return files, others


def run_store(
    paths: Sequence[Path],
    options: StoreOptions,
    *,
    recursive: bool,
    verbose: int,
    console: Console,
    report: Path | None = None,
) -> bool:
    """`pacsnode store`: True when every DICOM file found was stored (Success or Warning)."""
    with quiet_pydicom():
        return _run_store(
            paths, options, recursive=recursive, verbose=verbose, console=console, report=report
        )


def _run_store(
    paths: Sequence[Path],
    options: StoreOptions,
    *,
    recursive: bool,
    verbose: int,
    console: Console,
    report: Path | None,
) -> bool:
    started = time.perf_counter()
    files, others = collect(paths, recursive, console)
    summary = Summary()
    reporter = Reporter(console, verbose, summary)
    for result in others:
        reporter(result)
    plans = plan_associations(files)
    total = sum(f.size for f in files)

    def associated(number: int, plan: AssociationPlan, negotiated: Negotiated) -> None:
        if verbose:
            console.print(
                f"association {number}/{len(plans)}: {len(negotiated.contexts)} of {len(plan.contexts)} "
                f"presentation contexts accepted, {len(plan.files)} files; peer "
                f"{negotiated.peer_implementation_class_uid} {negotiated.peer_implementation_version_name}, "
                f"max PDU {negotiated.peer_max_pdu_length}",
                highlight=False,
                markup=False,
            )

    if files:
        with FileProgress(console, "C-STORE", len(files), total) as progress:

            def on_result(result: FileResult) -> None:
                reporter(result)
                progress.file_done(result.size)

            run_loop(send_all(plans, options, on_result, associated, progress.add_bytes))
    reporter.finish()
    elapsed = time.perf_counter() - started
    stored = [r for r in summary.results if r.status is not None and not r.failed]
    converted = sum(1 for r in stored if r.converted)
    sent_bytes = sum(r.size for r in stored)
    console.print(summary.table(f"pacsnode store to {options.called} at {options.host}:{options.port}"))
    console.print(
        f"{len(stored)} of {len(files) + sum(r.failed for r in others)} DICOM files stored "
        f"({sent_bytes / 1e6:.1f} MB, {converted} converted) in {elapsed:.2f} s, "
        f"{len(plans)} association(s); {summary.failed} failed",
        highlight=False,
    )
    if report is not None:
        summary.write_report(report)
    if not files:
        console.print("[bold red]error:[/] no DICOM files to send", highlight=False)
        return False
    return summary.failed == 0
