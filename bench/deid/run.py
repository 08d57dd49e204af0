"""De-identification benchmark (PS3.15 Annex E Basic Profile), files in and out: pacsnode, deid, dicognito."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.commitment.data import generate
from bench.common import columns, remove_cache, report_streams, run_main, write_json
from pacsnode.deid import DeidConfig, Deidentifier

DEFAULT_CACHE = Path(__file__).resolve().parent / ".data"
TOOLS = ("pacsnode", "pacsnode-j2", "dicognito", "dicognito-j2", "deid")
PARALLEL = "-j2"  # the suffix of a tool run in two processes
MISSING = "not installed: .venv/bin/pip install {name} (bench only, not a pacsnode dependency)"

Runner = Callable[[list[Path], Path], None]


def _pacsnode(files: list[Path], out: Path) -> None:
    deidentifier = Deidentifier(DeidConfig(key=bytes(32)))  # the Basic Profile, no option
    for path in files:
        deidentifier.deidentify_file(path, out / path.name)


def _pacsnode_pydicom(files: list[Path], out: Path) -> None:
    """The pydicom path alone (pydicom's reader and writer): what the byte-level path replaced."""
    deidentifier = Deidentifier(DeidConfig(key=bytes(32)))
    for path in files:
        data, _result = deidentifier.deidentify_bytes_pydicom(path.read_bytes(), str(path))
        (out / path.name).write_bytes(data)


def _dicognito(files: list[Path], out: Path) -> None:
    from dicognito.anonymizer import Anonymizer  # type: ignore[import-not-found,unused-ignore]
    from pydicom import dcmread

    anonymizer = Anonymizer(seed="bench")
    for path in files:
        ds = dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / path.name)


def _dicognito_chunk(job: tuple[list[Path], Path]) -> int:
    _dicognito(*job)
    return len(job[0])


def _dicognito_2p(files: list[Path], out: Path) -> None:
    """dicognito in two processes, files handed out as `pacsnode deid -j 2` does (chunks of up to 32)."""
    size = max(1, min(32, len(files) // 16))
    jobs = [(files[i : i + size], out) for i in range(0, len(files), size)]
    with ProcessPoolExecutor(2) as pool:
        if sum(pool.map(_dicognito_chunk, jobs)) != len(files):
            raise RuntimeError("dicognito-j2 lost files")


def _deid(files: list[Path], out: Path) -> None:
    from deid.dicom import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        get_identifiers,  # pydicom-deid's two steps
        replace_identifiers,
    )

    names = [str(p) for p in files]
    items = get_identifiers(names)
    replace_identifiers(dicom_files=names, ids=items, save=True, output_folder=str(out), overwrite=True)


def _pacsnode_2p(files: list[Path], out: Path) -> None:
    from pacsnode.cli.deid import results

    pairs = [(path, out / path.name) for path in files]
    for outcome in results(pairs, DeidConfig(key=bytes(32)), 2):  # `pacsnode deid -j 2`
        if isinstance(outcome, str | OSError):
            raise RuntimeError(str(outcome))


RUNNERS: dict[str, Runner] = {
    "pacsnode": _pacsnode,
    "pacsnode-j2": _pacsnode_2p,
    "pacsnode-pydicom": _pacsnode_pydicom,  # not in TOOLS: only when named with -s
    "dicognito": _dicognito,
    "dicognito-j2": _dicognito_2p,
    "deid": _deid,
}


def available(name: str) -> bool:
    """Whether a tool's package is importable (pacsnode always is)."""
    return name.startswith("pacsnode") or importlib.util.find_spec(name.removesuffix(PARALLEL)) is not None


def _cpu() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended (the pools')."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(name: str, files: list[Path], rounds: int, scratch: Path) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) per round for one tool over all files (a fresh output folder each round).

    The machine may be shared: CPU time (process time, pool workers included) is what the tool
    itself spent, while wall time also holds the waits for a busy CPU or disk.
    """
    times, cpu = [], []
    for round_ in range(rounds):
        out = scratch / f"{name}-{round_}"
        out.mkdir(parents=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c0, t0 = _cpu(), time.perf_counter()
            RUNNERS[name](files, out)
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu() - c0)
        written = sum(1 for _ in out.iterdir())
        if written != len(files):
            raise RuntimeError(f"{name} wrote {written} of {len(files)} files")
        shutil.rmtree(out)
    return times, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--instances", type=int, default=500, help="CT slices in the study (512x512)")
    parser.add_argument("-r", "--rounds", type=int, default=3, help="timed rounds per tool")
    parser.add_argument(
        "-s",
        "--tools",
        default=",".join(TOOLS),
        help="comma-separated subset of " + ", ".join(TOOLS) + " (and pacsnode-pydicom, the pydicom path)",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the generated study is kept")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement as JSON ('-': stdout)")
    parser.add_argument("--clean", action="store_true", help="delete the cache and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    out, say = report_streams(args.json, args.quiet)
    if args.clean:
        return remove_cache(args.cache, out)
    study = generate(args.instances, args.cache, say)
    files = study.files()
    for path in files:  # into the page cache, for every tool alike
        path.read_bytes()
    chosen = [t.strip() for t in args.tools.split(",") if t.strip()]
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pacsnode-bench-deid-") as tmp:
        for name in chosen:
            if name not in RUNNERS:
                print(f"unknown tool {name!r}", file=sys.stderr)
                return 2
            if not available(name):
                print(f"{name}: {MISSING.format(name=name)}", file=out)
                continue
            say(f"{name}: {args.rounds} rounds of {len(files)} files")
            RUNNERS[name](files[:5], Path(tmp))  # warm-up: imports, caches
            for leftover in Path(tmp).iterdir():
                leftover.unlink()
            results[name], cpu[name] = measure(name, files, args.rounds, Path(tmp))
    rows = [["tool", "instances/s (median)", "best", "MB/s", "s/round", "CPU ms/instance (median)"]]
    rate: dict[str, float] = {}
    cost: dict[str, float] = {}
    for name, times in results.items():
        median = statistics.median(times)
        rate[name] = len(files) / median
        cost[name] = statistics.median(cpu[name]) / len(files) * 1e3
        rows.append(
            [
                name,
                f"{rate[name]:,.0f}",
                f"{len(files) / min(times):,.0f}",
                f"{study.bytes / median / 1e6:,.0f}",
                f"{median:.2f}",
                f"{cost[name]:.2f}",
            ]
        )
    size = f"{study.bytes / 1e6:,.0f} MB"
    print(f"Basic Profile, {len(files)} CT instances of 512x512 ({size}), files in -> files out", file=out)
    for line in columns(rows):
        print(line, file=out)
    for line in _ratios(rate, cost):
        print(line, file=out)
    if args.json:
        write_json(
            args.json,
            {"instances": len(files), "bytes": study.bytes, "seconds": results, "cpu_seconds": cpu},
        )
    return 0


def _ratios(rate: dict[str, float], cost: dict[str, float]) -> list[str]:
    """pacsnode against the faster other tool with as many processes (else against one process, said so).

    Two ratios: of instances/s (wall time) and of CPU time per instance (less noisy on a shared machine).
    """
    lines = []
    for ours in (n for n in rate if n.startswith("pacsnode")):
        parallel = ours.endswith(PARALLEL)
        others = {
            n: r for n, r in rate.items() if not n.startswith("pacsnode") and n.endswith(PARALLEL) == parallel
        }
        note = "" if others or not parallel else " (2 processes against 1)"
        others = others or {n: r for n, r in rate.items() if not n.startswith("pacsnode")}
        if not others:
            continue
        fastest = max(others, key=lambda n: others[n])
        lines.append(
            f"{ours} / {fastest} (the faster other){note}: {rate[ours] / others[fastest]:.1f}x instances/s, "
            f"{cost[fastest] / cost[ours]:.1f}x less CPU per instance"
        )
    return lines


if __name__ == "__main__":
    run_main(main)
