"""Instructions per stored instance (PS3.4 Annex B C-STORE) under valgrind's callgrind: a repeatable
figure for comparing two versions of pacsnode's ingest path, where rates swing by 10-30 % run to run.

Each source tree (a checkout's folder; default: this one) runs `pacsnode serve` (its own `src` first
on PYTHONPATH, this checkout's .venv) under `valgrind --tool=callgrind`; one DCMTK `storescu`
association sends a warm-up, the counters are zeroed (`callgrind_control -z`), the measured
instances are sent and the counters dumped. Every thread of the process is counted, user space
only: kernel time (syscalls, page cache, fsync) is not in the figure. ~2 minutes per tree for
1,000 small instances.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import LOOPBACK, VENV_BIN, client_env, free_port, run_main
from bench.ingest.data import DEFAULT_CACHE, ct_spec, generate, small_spec

START_TIMEOUT = 300.0  # python under valgrind takes ~20 s to import and bind
_RUN = "import sys; sys.argv[0] = 'pacsnode'; from pacsnode.cli.main import run; sys.exit(run())"
_TOTALS = re.compile(rb"^(?:totals|summary):\s*(\d+)", re.MULTILINE)


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (apt install valgrind dcmtk)")


def _send(port: int, files: Sequence[Path]) -> None:
    argv = ["storescu", "-aec", "PACSNODE", "-to", "60", "-ta", "120", "-td", "600"]
    done = subprocess.run(
        [*argv, LOOPBACK, str(port), *map(str, files)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=client_env(True),
        timeout=3600,
        check=False,
    )
    if done.returncode != 0 or b"E: " in done.stderr:
        raise RuntimeError(f"storescu exit {done.returncode}: {done.stderr.decode(errors='replace')[-800:]}")


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            pass
        try:  # wait on the process itself between probes: it may have exited instead
            proc.wait(0.5)
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"pacsnode exited ({proc.returncode}): {log.read_text(errors='replace')[-800:]}")
    raise RuntimeError(f"pacsnode did not listen within {START_TIMEOUT:.0f} s")


def measure(src: Path, warmup: Sequence[Path], files: Sequence[Path], work: Path, keep: Path | None) -> int:
    """Instructions of the whole `pacsnode serve` process while it stores ``files``."""
    port = free_port()
    out = work / "callgrind.out"
    log = work / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "PACSNODE_HTTP_PORT": "0", "COLUMNS": "250"}
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        str(VENV_BIN / "python"),
        "-c",
        _RUN,
        "serve",
        "--dicom-port",
        str(port),
        "--host",
        LOOPBACK,
        "--data",
        str(work / "data"),
        "-q",
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, log)
        _send(port, warmup)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        _send(port, files)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    dumps = sorted(work.glob("callgrind.out.*"))  # the explicit dump (-d); the final one is callgrind.out
    if not dumps:
        raise RuntimeError(f"no callgrind dump: {log.read_text(errors='replace')[-800:]}")
    match = _TOTALS.search(dumps[0].read_bytes())
    if match is None:
        raise RuntimeError(f"no totals in {dumps[0]}")
    if keep is not None:
        shutil.copy(dumps[0], keep)
    return int(match[1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="*", type=Path, help="source trees to compare (default: this checkout)")
    p.add_argument("--set", choices=("small", "ct"), default="small", help="data set (small)")
    p.add_argument("-n", "--count", type=int, default=1000, help="instances measured (1000; ct: 450 at most)")
    p.add_argument("--warmup", type=int, default=50, help="instances sent before counting (50)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data set cache folder")
    p.add_argument("--keep", type=Path, help="copy each dump to KEEP.<i> (for callgrind_annotate)")
    args = p.parse_args(argv)
    _need("valgrind", "callgrind_control", "storescu")
    sources = [s.resolve() for s in args.sources] or [Path(__file__).resolve().parents[2]]
    for src in sources:
        if not (src / "src" / "pacsnode").is_dir():
            p.error(f"{src} is not a pacsnode source tree (no src/pacsnode)")
    # The sets of bench/ingest/run.py (500 CT slices, 5,000 small instances), generated once.
    spec = ct_spec() if args.set == "ct" else small_spec()
    if args.warmup + args.count > spec.count:
        p.error(f"--warmup + --count is more than the {spec.count} instances of the {args.set} set")
    dataset = generate(spec, args.cache, lambda m: print(m, file=sys.stderr))
    every = list(dataset.files())
    warmup, files = every[: args.warmup], every[args.warmup : args.warmup + args.count]
    results: list[tuple[Path, int]] = []
    for i, src in enumerate(sources):
        print(f"{src}: {len(files)} {args.set} instances under callgrind...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="instructions-", dir=args.cache) as work:
            keep = Path(f"{args.keep}.{i}") if args.keep else None
            results.append((src, measure(src, warmup, files, Path(work), keep)))
    base = results[0][1]
    print(f"{'source':<40} {'instructions/instance':>22} {'vs first':>9}")
    for src, total in results:
        print(f"{src!s:<40} {total / len(files):>22,.0f} {total / base:>8.3f}x")
    return 0


if __name__ == "__main__":
    run_main(main)
