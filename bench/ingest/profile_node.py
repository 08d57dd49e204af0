"""Profile pacsnode's C-STORE path under storescu load: cProfile per thread in process, or py-spy on serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import LOOPBACK, VENV_BIN, client_env, user_system_seconds
from bench.ingest.data import DEFAULT_CACHE, DataSet, ct_spec, generate, small_spec
from bench.ingest.run import PG_URL, IngestServer, _pg_admin, scratch, split

AET = "PACSNODE"


def _storescu_argv(port: int, paths: Sequence[Path]) -> list[str]:
    options = ["-aec", AET, "-R", "+sd", "-to", "10", "-ta", "30", "-td", "120"]
    return ["storescu", *options, LOOPBACK, str(port), *map(str, paths)]


# --------------------------------------------------------------------------- cProfile, in process


@dataclass
class ThreadProfile:
    """One thread's profile and CPU time over the measured load."""

    name: str
    profile: cProfile.Profile = field(default_factory=cProfile.Profile)
    cpu0: float = 0.0
    cpu: float = 0.0


def _executors(obj: object) -> list[tuple[str, ThreadPoolExecutor]]:
    """The thread pools among an object's attributes (the archive's committer, syncer, ...)."""
    return [(k, v) for k, v in vars(obj).items() if isinstance(v, ThreadPoolExecutor)]


def _thread_cpu() -> dict[str, tuple[float, float]]:
    """CPU seconds (user, system) of each live thread of this process, by "name:tid" (Linux /proc)."""
    out: dict[str, tuple[float, float]] = {}
    # Python's own thread names: the kernel's comm is "python" for every thread.
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = names.get(int(task.name)) or (task / "comm").read_text().strip()
            out[f"{name}:{task.name}"] = user_system_seconds(task / "stat")
        except OSError:
            continue  # the thread ended
    return out


def _on(pool: ThreadPoolExecutor, fn: Callable[[], Any]) -> Any:
    return pool.submit(fn).result(timeout=30)


async def _serve_and_drive(
    dataset: DataSet,
    associations: int,
    data: Path,
    index_url: str,
    profile: bool,
    extra: dict[str, dict[str, Any]],
) -> tuple[float, tuple[float, float], dict[str, tuple[float, float]], list[ThreadProfile]]:
    from pacsnode.config.settings import load_settings
    from pacsnode.net.node import Node

    tables: dict[str, dict[str, Any]] = {"node": {"dicom_port": 0, "data": data, "aet": AET}}
    if index_url:
        tables["storage"] = {"index_url": index_url}
    for table, values in extra.items():
        tables.setdefault(table, {}).update(values)
    settings = load_settings(None, tables, environ={})
    node = Node(settings)
    await node.start()
    port = node.server.port
    env = client_env(True)

    async def send(parts: list[list[Path]]) -> float:
        t0 = time.perf_counter()
        procs = [
            await asyncio.create_subprocess_exec(
                *_storescu_argv(port, paths), env=env, stdout=asyncio.subprocess.DEVNULL
            )
            for paths in parts
        ]
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout=900)
        if any(codes):
            raise RuntimeError(f"storescu failed: exit codes {codes}")
        return time.perf_counter() - t0

    threads: list[ThreadProfile] = []
    try:
        # Warm-up (not profiled): one part, so imports, pools and caches are hot.
        await send([[next(dataset.files())]])  # stored again by the run: an identical duplicate
        pools = _executors(node.archive)
        if profile:
            threads.append(ThreadProfile("event loop"))
            threads += [ThreadProfile(f"archive.{name}") for name, _ in pools]
            for tp, (_, pool) in zip(threads[1:], pools, strict=True):
                if pool._max_workers != 1:
                    print(f"note: {tp.name} has {pool._max_workers} threads; only one is profiled")
                tp.cpu0 = _on(pool, time.thread_time)
                _on(pool, tp.profile.enable)
            threads[0].cpu0 = time.thread_time()
            threads[0].profile.enable()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        by_thread0 = _thread_cpu()
        try:
            elapsed = await send(split(dataset, associations))
        finally:
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            by_thread = {
                k: (u - by_thread0.get(k, (0.0, 0.0))[0], s - by_thread0.get(k, (0.0, 0.0))[1])
                for k, (u, s) in _thread_cpu().items()
            }
            if profile:
                threads[0].profile.disable()
                threads[0].cpu = time.thread_time() - threads[0].cpu0
                for tp, (_, pool) in zip(threads[1:], pools, strict=True):
                    _on(pool, tp.profile.disable)
                    tp.cpu = _on(pool, time.thread_time) - tp.cpu0
        cpu = (cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime)
        return dataset.count / elapsed, cpu, by_thread, threads
    finally:
        await node.close()


@contextlib.contextmanager
def _work_folder(args: argparse.Namespace) -> Iterator[Path]:
    """The node's data folder: deleted afterwards, or with --keep left for the user to delete.

    Keeping it matters for back-to-back runs: on an ext4 without journal, files created
    within minutes of mass deletions cost up to ~1 ms each (bench/README.md).
    """
    if not args.keep:
        with scratch(args.workdir, args.cache, "profile-") as tmp:
            yield tmp
        return
    base = args.workdir or args.cache
    base.mkdir(parents=True, exist_ok=True)
    kept = Path(tempfile.mkdtemp(prefix="profile-kept-", dir=base))
    print(f"data folder kept: {kept}", file=sys.stderr)
    yield kept


def run_cprofile(args: argparse.Namespace, dataset: DataSet, index_url: str) -> int:
    from pacsnode.net.loop import run_loop

    with _work_folder(args) as tmp:
        os.sync()
        t0 = time.perf_counter()
        rate, (user, system), by_thread, threads = run_loop(
            _serve_and_drive(
                dataset, args.associations, Path(tmp), index_url, not args.no_profile, args.settings
            )
        )
        wall = time.perf_counter() - t0
    where = "without profiler" if args.no_profile else "under cProfile"
    print(
        f"{dataset.count} {dataset.name} instances over {args.associations} association(s): "
        f"{rate:,.0f} instances/s, {rate * dataset.bytes / dataset.count / 1e6:,.1f} MB/s {where} "
        f"({wall:.1f} s with start-up)"
    )
    per = 1e3 / dataset.count
    print(
        f"node process CPU: {(user + system) * per:.3f} ms per instance "
        f"(user {user * per:.3f}, system {system * per:.3f})"
    )
    busy = sorted(((u + s, u, s, k) for k, (u, s) in by_thread.items()), reverse=True)
    for total, u, s, k in busy:
        if total * per < 0.005:
            break
        print(f"  thread {k}: user {u * per:.3f}, system {s * per:.3f}")
    for tp in threads:
        print(
            f"\n=== thread {tp.name}: {tp.cpu:.2f} s CPU, {tp.cpu / dataset.count * 1e3:.3f} ms per instance"
        )
        stats = pstats.Stats(tp.profile)
        if args.output:
            stats.dump_stats(f"{args.output}.{tp.name.replace(' ', '_')}")
        stats.strip_dirs().sort_stats(args.sort).print_stats(args.limit)
    return 0


# --------------------------------------------------------------------------- py-spy on `pacsnode serve`

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def summarize_raw(path: Path, limit: int) -> list[str]:
    """Per thread: samples, and the functions with the most self and total samples (py-spy raw format)."""
    self_ct: dict[str, Counter[str]] = defaultdict(Counter)
    total_ct: dict[str, Counter[str]] = defaultdict(Counter)
    samples: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        name = re.sub(r"\s*\(0x[0-9a-fA-F]+\)", "", thread).strip('" ')
        samples[name] += count
        labels = []
        for f in frames:
            m = _FRAME.match(f)
            labels.append(f"{m['func']} ({Path(m['file']).name})" if m else f)
        if labels:
            self_ct[name][labels[-1]] += count
            for label in set(labels):
                total_ct[name][label] += count
    out: list[str] = []
    for name, n in samples.most_common():
        out += ["", f"=== {name}: {n} samples (wall time, idle included)", "  self%  total%  function"]
        shown = set()
        for label, c in self_ct[name].most_common(limit):
            shown.add(label)
            out.append(f"  {100 * c / n:5.1f}  {100 * total_ct[name][label] / n:6.1f}  {label}")
        out.append("  -- largest totals --")
        for label, c in total_ct[name].most_common(limit):
            if label not in shown:
                out.append(f"  {100 * self_ct[name][label] / n:5.1f}  {100 * c / n:6.1f}  {label}")
    return out


def run_pyspy(args: argparse.Namespace, dataset: DataSet) -> int:
    pyspy = shutil.which("py-spy", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    if pyspy is None:
        print("error: py-spy not found (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    name = "pacsnode-pg" if args.pg else "pacsnode-sqlite"
    with scratch(args.workdir, args.cache, "profile-") as tmp:
        ingest = IngestServer(name, Path(tmp), client_env(True), None)
        try:
            server = ingest.start()
            assert server.proc is not None
            raw = Path(args.output or Path(tmp) / "pyspy.txt")
            options = ["--idle", "--threads", "--nolineno", "-r", str(args.rate), "--format", "raw"]
            spy = subprocess.Popen(
                [pyspy, "record", *options, "-o", str(raw), "-p", str(server.proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(1.0)  # py-spy attaches
            os.sync()
            env = client_env(True)
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(_storescu_argv(server.port, paths), env=env, stdout=subprocess.DEVNULL)
                for paths in split(dataset, args.associations)
            ]
            codes = [p.wait(timeout=900) for p in procs]
            elapsed = time.perf_counter() - t0
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            if any(codes):
                print(f"error: storescu exit codes {codes}", file=sys.stderr)
                return 1
            if not raw.exists():
                print(f"error: py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)
                return 1
            print(
                f"{dataset.count} {dataset.name} instances over {args.associations} association(s) into "
                f"{name} (`pacsnode serve`): {dataset.count / elapsed:,.0f} instances/s under py-spy "
                f"({args.rate} Hz)"
            )
            print("\n".join(summarize_raw(raw, args.limit)))
        finally:
            ingest.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dataset", choices=("ct", "small"), help="data set to send")
    p.add_argument("-a", "--associations", type=int, choices=(1, 2, 4), default=1, help="storescu processes")
    p.add_argument("--count", type=int, help="instances in the set (default: 500 ct, 5000 small)")
    p.add_argument("--pg", action="store_true", help="PostgreSQL index (default: SQLite)")
    p.add_argument("--py-spy", action="store_true", help="sample a real `pacsnode serve` with py-spy --idle")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples/s (250)")
    p.add_argument("--no-profile", action="store_true", help="cProfile mode: only measure the rate")
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime)")
    p.add_argument("--limit", type=int, default=25, help="rows to print per thread (25)")
    p.add_argument("-o", "--output", help="also keep the raw profile(s) here (prefix for cProfile)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data set cache folder")
    p.add_argument("--workdir", type=Path, help="where the node stores (default: the cache folder)")
    p.add_argument("--keep", action="store_true", help="cProfile mode: leave the node's data folder in place")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="cProfile mode: a setting of the node, e.g. storage.sync=fsync or storage.max_batch=16",
    )
    args = p.parse_args(argv)
    args.settings = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        table, dot, name = key.partition(".")
        if not (sep and dot and name):
            p.error(f"--set {item}: expected TABLE.KEY=VALUE")
        args.settings.setdefault(table, {})[name] = int(value) if value.isdigit() else value
    spec = (ct_spec if args.dataset == "ct" else small_spec)(*([args.count] if args.count else []))
    dataset = generate(spec, args.cache, lambda m: print(m, file=sys.stderr))
    if args.py_spy:
        return run_pyspy(args, dataset)
    if not args.pg:
        return run_cprofile(args, dataset, "")
    db = f"pacsnode_bench_profile_{os.getpid()}"
    _pg_admin(f'CREATE DATABASE "{db}"')
    try:
        return run_cprofile(args, dataset, PG_URL.format(db=db))
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
