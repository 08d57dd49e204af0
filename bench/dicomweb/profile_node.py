"""Where `pacsnode serve` spends its time answering one DICOMweb request kind: py-spy on the live server.

Loads the benchmark's data into a pacsnode (SQLite index) as run.py does, then sends one kind of
request over and over on one kept-alive connection while ``py-spy record`` samples the server
process (every thread, native frames off), and prints the functions that took the most samples:
by own time (the innermost frame) and by total time (anywhere on the stack), per thread group.
The raw samples (collapsed stacks: flamegraph.pl and speedscope read them) stay in --out.

Needs py-spy in the venv (``.venv/bin/pip install py-spy``) and the right to ptrace the server
(root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import VENV_BIN, client_env, columns, cpu_seconds, run_main, terminate_as_exit
from bench.dicomweb.client import MULTIPART_DICOM, Client, Failed
from bench.dicomweb.data import DEFAULT_CACHE, ct_study, small_set
from bench.dicomweb.run import BULK, KINDS, Source, make_requests
from bench.ingest.run import scratch

PY_SPY = VENV_BIN / "py-spy"
# A frame of py-spy's raw output: "function (file:line)"; the line is dropped to merge a function's samples.
_FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    found = _FRAME.match(frame.strip())
    if found is None:
        return frame.strip()
    function, path = found.groups()
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{function} ({path})"


def _thread_group(frame: str) -> str:
    """py-spy --threads puts 'thread (0x...)' or 'process ... thread ...' first; group by its name."""
    name = frame.strip()
    if "pacsnode-web" in name:
        return "web pool"
    if "MainThread" in name or "0x" not in name:
        return "event loop"
    return "other threads"


def summarize(raw: Path, top: int) -> list[str]:
    """The top functions by own and total samples, per thread group, from py-spy's raw output."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    samples: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        group = _thread_group(frames[0])
        names = [_frame_name(f) for f in frames[1:]]
        if not names:
            continue
        samples[group] += count
        own[group][names[-1]] += count
        for name in set(names):
            total[group][name] += count
    out: list[str] = []
    everything = sum(samples.values()) or 1
    for group, n in samples.most_common():
        out += ["", f"{group}: {n} samples ({n / everything:.0%} of all non-idle samples)", ""]
        rows = [["own %", "total %", "function (file)"]]
        for name, k in own[group].most_common(top):
            rows.append([f"{k / n:.1%}", f"{total[group][name] / n:.1%}", name])
        out += columns(rows)
        out += ["", f"{group}: by total (inclusive) samples", ""]
        rows = [["total %", "own %", "function (file)"]]
        for name, k in total[group].most_common(top):
            rows.append([f"{k / n:.1%}", f"{own[group][name] / n:.1%}", name])
        out += columns(rows)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=[*KINDS, *BULK], help="the request to repeat")
    p.add_argument("-d", "--duration", type=int, default=20, help="seconds of sampling (20)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second (250)")
    p.add_argument("--top", type=int, default=25, help="functions listed per table (25)")
    p.add_argument(
        "--gil", action="store_true", help="py-spy --gil: only samples of the thread holding the GIL"
    )
    p.add_argument("--native", action="store_true", help="py-spy --native: C frames too (uvloop, codecs)")
    p.add_argument("--studies", type=int, default=50, help="as run.py (50)")
    p.add_argument("--instances", type=int, default=5000, help="as run.py (5000)")
    p.add_argument("--ct-slices", type=int, default=500, help="as run.py (500)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"data cache ({DEFAULT_CACHE})")
    p.add_argument("--out", type=Path, help="folder for the raw samples (default: <cache>/py-spy)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    args.cache = args.cache.resolve()
    args.out = args.out or args.cache / "py-spy"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    if not PY_SPY.exists():
        print(f"error: {PY_SPY} missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    small = small_set(args.studies - 1, args.instances, args.cache, say)
    ct = ct_study(args.ct_slices, args.cache, say)
    files = [*small.files(), *ct.dataset.files()]
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"{args.kind}.txt"
    with scratch(None, args.cache, "dicomweb-profile-") as root, terminate_as_exit():
        source = Source("pacsnode-sqlite", root, client_env(True), files)
        client: Client | None = None
        try:
            say("loading the data into pacsnode")
            source.start([small.root, *ct.dataset.parts()], len(files), say)
            client = Client(source.http_port)
            if args.kind in KINDS:
                paths = [r.path for r in make_requests(small, args.kind, 2000, seed=1)]
            elif args.kind == "wado-study":
                paths = [f"/studies/{ct.study_uid}"]
            else:
                paths = [f"/studies/{ct.study_uid}/series/{ct.series_uid}/metadata"]
            accept = MULTIPART_DICOM if args.kind == "wado-study" else "application/dicom+json"
            for path in paths[:5]:  # warm-up
                client.drain(path, accept)
            base = [str(PY_SPY), "record", "-p", str(source.pid), "-r", str(args.rate), "--threads"]
            base += ["-d", str(args.duration), "-f", "raw", "-o", str(raw)]
            # Without --native, sample without pausing the server (less overhead); py-spy cannot
            # unwind C frames of a running process.
            base += ["--native"] if args.native else ["--nonblocking"]
            base += ["--gil"] if args.gil else []
            spy_log = args.out / f"{args.kind}.py-spy.log"
            with spy_log.open("wb") as log:
                spy = subprocess.Popen(base, stdout=log, stderr=subprocess.STDOUT)
            say(f"sampling {args.kind} for {args.duration} s (pid {source.pid})")
            done = 0
            moved = 0
            cpu0, t0 = cpu_seconds(source.pid), time.perf_counter()
            while spy.poll() is None:
                got, _, _ = client.drain(paths[done % len(paths)], accept)
                moved += got
                done += 1
            seconds = time.perf_counter() - t0
            cpu = cpu_seconds(source.pid) - cpu0
            if spy.wait(60) != 0 or done == 0:
                tail = spy_log.read_text(errors="replace")[-1500:]
                print(f"error: py-spy exit {spy.returncode}: {tail}", file=sys.stderr)
                return 1
        except (OSError, RuntimeError, TimeoutError, Failed, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if client is not None:
                client.close()
            source.stop()
    print(
        f"{args.kind}: {done} requests in {seconds:.1f} s ({done / seconds:,.1f}/s, "
        f"{moved / 1e6 / seconds:,.0f} MB/s) while sampled; server CPU {cpu / done * 1e3:,.2f} ms/request"
    )
    print("\n".join(summarize(raw, args.top)))
    print(f"\nraw samples (collapsed stacks, for flamegraph.pl or speedscope): {raw}")
    return 0


if __name__ == "__main__":
    run_main(main)
