"""`pacsnode deid`: PS3.15 Annex E de-identification of files and folders, mirroring the folder tree."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pacsnode.deid import DeidConfig, Deidentifier, FileResult, Refused

NOT_DICOM = "not a DICOM file"


@dataclass(slots=True)
class DeidSummary:
    """What became of the files of one run."""

    written: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    pixels_cleaned: int = 0


def plan(source: Path, target: Path) -> Iterator[tuple[Path, Path]]:
    """(input file, output file) pairs: one file, or a folder's tree mirrored under ``target``."""
    if source.is_file():
        yield source, (target / source.name if target.is_dir() else target)
        return
    for folder, dirs, files in os.walk(source):
        dirs.sort()
        base = Path(folder)
        for name in sorted(files):
            path = base / name
            yield path, target / path.relative_to(source)


_WORKER: Deidentifier | None = None  # one per worker process, built by _start


def _start(config: DeidConfig) -> None:
    global _WORKER  # a worker process's own de-identifier
    _WORKER = Deidentifier(config)


def _one(pair: tuple[Path, Path]) -> FileResult | str | OSError:
    """De-identify one file in a worker: its result, the reason it was refused, or the OSError."""
    assert _WORKER is not None
    try:
        return _WORKER.deidentify_file(*pair)
    except Refused as exc:
        return str(exc)
    except OSError as exc:
        return exc


def results(
    pairs: Sequence[tuple[Path, Path]], config: DeidConfig, jobs: int
) -> Iterable[FileResult | str | OSError]:
    """One outcome per pair, in order; ``jobs`` > 1 spreads the files over that many processes."""
    if jobs <= 1 or len(pairs) < 2 * jobs:
        _start(config)
        yield from (_one(pair) for pair in pairs)
        return
    with ProcessPoolExecutor(jobs, initializer=_start, initargs=(config,)) as pool:
        yield from pool.map(_one, pairs, chunksize=max(1, min(32, len(pairs) // (jobs * 8))))


def run_deid(
    sources: Sequence[Path],
    target: Path,
    config: DeidConfig,
    *,
    console: Console,
    verbose: int = 0,
    limit: int = 50,
    jobs: int = 1,
) -> DeidSummary:
    """De-identify every file; returns the summary (the caller turns refusals into exit status 1)."""
    summary = DeidSummary()
    pairs: list[tuple[Path, Path]] = []
    for source in sources:
        out = target / source.name if len(sources) > 1 else target
        pairs.extend(plan(source, out))
    if any(src.resolve() == dst.resolve() for src, dst in pairs if dst.exists()):
        raise OSError("the output would overwrite an input file: choose another OUT")
    printed = 0
    with Progress(
        TextColumn("de-identifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("deid", total=len(pairs))
        for (source, destination), result in zip(pairs, results(pairs, config, jobs), strict=True):
            if isinstance(result, str):
                if result.startswith(NOT_DICOM):
                    summary.skipped.append((source, result))
                else:
                    summary.refused.append((source, result))
                    if printed < limit or verbose:
                        printed += 1
                        console.print(
                            f"[red]Refused[/]: {escape(str(source))} ({escape(result)})", highlight=False
                        )
            elif isinstance(result, OSError):
                summary.refused.append((source, f"{result.strerror or result}"))
                console.print(
                    f"[red]Failed[/]: {escape(str(source))} ({escape(str(result))})", highlight=False
                )
            else:
                summary.written += 1
                summary.pixels_cleaned += result.pixels_cleaned
                if verbose:
                    console.print(
                        f"[green]De-identified[/]: {escape(str(source))} -> {escape(str(destination))}"
                    )
            progress.advance(task)
    if len(summary.refused) > printed:
        console.print(f"... and {len(summary.refused) - printed} more refused (-v lists every file)")
    if verbose > 1:
        for path, reason in summary.skipped:
            console.print(f"[yellow]Skipped[/]: {escape(str(path))} ({escape(reason)})", highlight=False)
    console.print(
        f"{summary.written} de-identified ({summary.pixels_cleaned} with pixels cleaned), "
        f"{len(summary.refused)} refused, {len(summary.skipped)} skipped (not DICOM)",
        highlight=False,
    )
    return summary
