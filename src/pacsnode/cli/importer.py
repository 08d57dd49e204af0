"""`pacsnode import`: local files into the archive through the one ingest pipeline (as C-STORE would)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from pacsnode.archive.index import Outcome
from pacsnode.archive.ingest import Archive, StoreResult
from pacsnode.audit.builders import StudyTally, imported, local_user
from pacsnode.audit.trail import AuditTrail
from pacsnode.cli.files import DicomFile, convert, quiet_pydicom
from pacsnode.cli.store import FileProgress, FileResult, Reporter, Summary, collect, result_of_status
from pacsnode.config.settings import Settings
from pacsnode.data.part10 import file_meta
from pacsnode.data.transcode import TranscodeError
from pacsnode.data.uids import EXPLICIT_VR_LITTLE_ENDIAN
from pacsnode.net.loop import run_loop

_BATCH_BYTES = 256 << 20  # a progress step at least every this many bytes


@dataclass(frozen=True, slots=True)
class _Job:
    item: DicomFile
    source: Path  # the file itself, or a Part 10 copy we wrote for it


def _wrap(item: DicomFile, folder: Path, number: int) -> Path:
    """A Part 10 file for a data set without (usable) File Meta Information (PS3.10 7.1).

    The archive reads the meta for the transfer syntax and UIDs; a bare data set, a
    file starting with "DICM" and one whose meta lacks them get new meta in front of
    their untouched data set bytes (or of a converted data set, when the meta's
    transfer syntax did not describe the bytes).
    """
    target = folder / f"{number}.dcm"
    ts = item.transfer_syntax
    if item.must_convert:
        dataset = convert(item, EXPLICIT_VR_LITTLE_ENDIAN)
        ts = EXPLICIT_VR_LITTLE_ENDIAN
    else:
        with item.path.open("rb") as fh:
            fh.seek(item.offset)
            dataset = fh.read()
    with target.open("wb") as out:
        out.write(file_meta(item.sop_class_uid, item.sop_instance_uid, ts))
        out.write(dataset)
    return target


def _root(path: Path, roots: Sequence[Path]) -> Path:
    """The path given on the command line that a file was found under (the audit's source media)."""
    for root in roots:
        if path == root or root in path.parents:
            return root
    return path.parent


def _label(result: StoreResult) -> tuple[str, bool]:
    label, failed = result_of_status(result.status)
    if not failed and result.outcome in (Outcome.IDENTICAL_DUPLICATE, Outcome.KEPT_FIRST):
        label = "Success (already in the archive)"
    elif not failed and result.outcome is Outcome.REPLACED:
        label = "Success (replaced the stored instance)"
    return label, failed


def run_import(
    paths: Sequence[Path],
    settings: Settings,
    *,
    recursive: bool,
    verbose: int,
    console: Console,
    report: Path | None = None,
) -> bool:
    """`pacsnode import`: True when every DICOM file found is in the archive."""
    with quiet_pydicom():
        return _run_import(
            paths, settings, recursive=recursive, verbose=verbose, console=console, report=report
        )


def _run_import(
    paths: Sequence[Path],
    settings: Settings,
    *,
    recursive: bool,
    verbose: int,
    console: Console,
    report: Path | None,
) -> bool:
    started = time.perf_counter()
    files, others = collect(paths, recursive, console, "Not imported")
    summary = Summary()
    reporter = Reporter(console, verbose, summary)
    for result in others:
        reporter(result)
    settings.node.data.mkdir(parents=True, exist_ok=True)
    archive = Archive(settings)
    archive.open()
    # PS3.15 A.5.3.5: Import, per source and study; kept in the index, sent by the serving node.
    trail = AuditTrail(settings, send=False) if settings.audit.enabled else None
    if trail is not None:
        trail.start()
    imported_from: dict[Path, StudyTally] = {}
    batch_size = settings.storage.max_batch
    try:
        with (
            tempfile.TemporaryDirectory(prefix="pacsnode-import-") as scratch,
            FileProgress(console, "import", len(files), sum(f.size for f in files)) as progress,
        ):
            start = 0
            while start < len(files):
                # One commit group of the archive per call (its durability step is per group).
                end, size = start, 0
                while end < len(files) and end - start < batch_size and (size < _BATCH_BYTES or end == start):
                    size += files[end].size
                    end += 1
                jobs: list[_Job] = []
                for n, item in enumerate(files[start:end]):
                    if item.meta_complete:
                        jobs.append(_Job(item, item.path))
                        continue
                    try:
                        jobs.append(_Job(item, _wrap(item, Path(scratch), start + n)))
                    except (TranscodeError, OSError) as exc:
                        reporter(
                            FileResult(item.path, "Not imported: cannot rewrite its meta", True, str(exc))
                        )
                        progress.file_done(item.size)
                sources = [job.source for job in jobs]
                for job, res in zip(jobs, archive.import_files(sources), strict=True):
                    label, failed = _label(res)
                    tally = imported_from.setdefault(_root(job.item.path, paths), StudyTally())
                    tally.add_record(
                        res.record, job.item.sop_class_uid, f"{label}: {res.comment}" if failed else None
                    )
                    reporter(
                        FileResult(
                            job.item.path,
                            label,
                            failed,
                            res.comment.removeprefix(f"{job.source}: "),
                            status=res.status,
                            sop_instance_uid=job.item.sop_instance_uid,
                            transfer_syntax=job.item.transfer_syntax
                            if not job.item.must_convert
                            else EXPLICIT_VR_LITTLE_ENDIAN,
                            converted=job.item.must_convert,
                            size=job.item.size,
                        )
                    )
                    progress.file_done(job.item.size)
                    if job.source != job.item.path:
                        job.source.unlink(missing_ok=True)
                start = end
    finally:
        if trail is not None:
            user = local_user()
            for root, tally in imported_from.items():
                for study in tally.studies():
                    trail.emit(imported(user, root.resolve().as_uri(), study))
            trail.close()
        run_loop(archive.close())
    reporter.finish()
    elapsed = time.perf_counter() - started
    stored = [r for r in summary.results if r.status is not None and not r.failed]
    console.print(summary.table(f"pacsnode import into {settings.node.data}"))
    console.print(
        f"{len(stored)} of {len(files) + sum(r.failed for r in others)} DICOM files in the archive "
        f"({sum(r.size for r in stored) / 1e6:.1f} MB) after {elapsed:.2f} s; {summary.failed} failed",
        highlight=False,
    )
    if report is not None:
        summary.write_report(report)
    if not files:
        console.print("[bold red]error:[/] no DICOM files to import", highlight=False)
        return False
    return summary.failed == 0


__all__ = ["run_import"]
