"""C-STORE ingest benchmark: storescu into pacsnode (SQLite, PostgreSQL), storescp, Orthanc."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (
    LOOPBACK,
    ProtocolFailure,
    Server,
    Stat,
    client_env,
    columns,
    report_streams,
    run_main,
    terminate_as_exit,
    write_json,
)
from bench.ingest.data import DEFAULT_CACHE, DataSet, ct_spec, generate, generate_big, small_spec

SERVERS = ("pacsnode-sqlite", "pacsnode-pg", "storescp", "orthanc", "ceiling")
PACSNODES = ("pacsnode-sqlite", "pacsnode-pg")
SETS = ("ct", "small")
# Targets from the issue: pacsnode / server instances/s, on every set (and association count).
TARGETS: dict[str, tuple[float, float | None]] = {"orthanc": (2.0, None), "storescp": (0.5, 0.8)}
NAGLE_TARGET = 0.5  # storescu without TCP_NODELAY must reach half the rate with it
BIG_RSS_TARGET_MB = 100.0
PG_URL = "postgresql://postgres@127.0.0.1/{db}"
CLIENT_TIMEOUT = 900.0
SLOW_CREATE = 200e-6  # seconds: above this, file creation in the work folder dominates small instances


@dataclass(frozen=True)
class Case:
    """One measured configuration: a data set sent over some parallel associations."""

    dataset: str
    associations: int
    nodelay: bool = True

    @property
    def label(self) -> str:
        return f"{self.dataset} x{self.associations}" + ("" if self.nodelay else " no-nodelay")


@dataclass
class Result:
    """Repeated runs of one case against one server."""

    rate: Stat = field(default_factory=Stat)  # instances/s
    mbps: Stat = field(default_factory=Stat)  # MB/s (10^6 bytes of Part 10 files)
    rss_growth: list[float] = field(default_factory=list)  # MB, peak RSS minus RSS at the start


Table = dict[tuple[str, Case], Result]


# --------------------------------------------------------------------------- servers


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1/postgres", autocommit=True, connect_timeout=5) as c:
        c.execute(sql.encode())


class IngestServer:
    """A server under test that starts empty every run: fresh folder, fresh database."""

    def __init__(self, name: str, root: Path, server_env: dict[str, str], cpu: int | None) -> None:
        self.name = name
        self.root = root
        self.env = server_env
        self.cpu = cpu
        self.db = f"pacsnode_bench_ingest_{os.getpid()}" if name == "pacsnode-pg" else ""
        self.server: Server | None = None
        self.runs = 0

    def start(self) -> Server:
        """A new, empty instance of the server, answering C-ECHO."""
        self.stop()
        self.runs += 1
        workdir = self.root / f"{self.name}-{self.runs}"
        workdir.mkdir(parents=True)
        aet = "PACSNODE" if self.name in PACSNODES else self.name.upper()
        if self.name in PACSNODES:
            args: list[str] = []
            if self.db:
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
                _pg_admin(f'CREATE DATABASE "{self.db}"')
                config = workdir / "pacsnode.toml"
                config.write_text(f'[storage]\nindex_url = "{PG_URL.format(db=self.db)}"\n')
                args = ["--config", str(config)]
            server = Server(self.name, aet, workdir, kind="pacsnode", args=args)
        elif self.name == "storescp":
            # --fork: one process per association, so that parallel associations run in parallel.
            server = Server(self.name, aet, workdir, args=["+xa", "--fork"], output=workdir / "data")
        elif self.name == "ceiling":
            # storescp --ignore receives every data set and stores nothing: storescu's own limit.
            argv = ["+xa", "--fork", "--ignore"]
            server = Server(
                self.name, "STORESCP", workdir, kind="storescp", args=argv, output=workdir / "data"
            )
        elif self.name == "orthanc":
            server = Server(self.name, aet, workdir)  # default SQLite index and file storage
        else:
            raise ValueError(self.name)
        self.server = server
        server.start(self.env, self.cpu)
        return server

    def count(self, expected: int) -> int:
        """Instances the server holds now (index rows, files, or Orthanc's statistics)."""
        server = self.server
        assert server is not None
        if self.name == "ceiling":
            return expected
        if self.name == "pacsnode-sqlite":
            uri = f"file:{server.data_dir / 'index.sqlite'}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
                return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
        if self.name == "pacsnode-pg":
            import psycopg

            with psycopg.connect(PG_URL.format(db=self.db), connect_timeout=5) as c:
                row = c.execute(b"SELECT count(*) FROM instances").fetchone()
                return int(row[0]) if row else 0
        if self.name == "storescp":
            return sum(1 for p in server.data_dir.rglob("*") if p.is_file())
        url = f"http://{LOOPBACK}:{server.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.load(response)["CountInstances"])

    def stop(self) -> None:
        """Stop the server and set aside what it stored (folder; the database is dropped).

        The folder is deleted with the whole work folder at the end, not now: on an ext4
        without journal (this machine's root) a file created soon after mass deletions costs
        0.6-0.8 ms of kernel CPU (recently_deleted() in the inode search), so deleting one
        server's files would slow the next server's runs and tilt the comparison.
        """
        server, self.server = self.server, None
        if server is not None:
            server.stop()
            finished = self.root / ".finished"
            finished.mkdir(exist_ok=True)
            server.workdir.rename(finished / server.workdir.name)
        if self.db and server is not None:
            with contextlib.suppress(Exception):
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


# --------------------------------------------------------------------------- memory


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss(pid: int) -> int:
    """Reset VmHWM to the current RSS (clear_refs 5, Linux >= 4.0); returns that RSS in kB."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident set size since start or the last reset) in kB."""
    return _status_kb(pid, "VmHWM")


# --------------------------------------------------------------------------- client


def storescu(
    server: Server, parts: Sequence[Sequence[Path]], nodelay: bool, cpu: int | None
) -> tuple[float, list[str]]:
    """One storescu process per entry of ``parts`` (folders or files), all at once: wall time, errors."""
    env = client_env(nodelay)
    argv = ["storescu", "-aec", server.aet, "-R", "+sd", "-to", "10", "-ta", "30", "-td", "120"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.perf_counter()
    try:
        for paths in parts:
            procs.append(
                subprocess.Popen(
                    [*argv, LOOPBACK, str(server.port), *map(str, paths)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            )
        errors: list[str] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT
        for proc in procs:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0 or b"E: " in err:
                errors.append(f"storescu exit {proc.returncode}: {err.decode(errors='replace')[-800:]}")
        elapsed = time.perf_counter() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return elapsed, errors


def split(dataset: DataSet, associations: int) -> list[list[Path]]:
    """The data set's part folders dealt out to ``associations`` senders."""
    parts = dataset.parts()
    return [parts[i :: min(associations, len(parts))] for i in range(min(associations, len(parts)))]


@dataclass
class Run:
    """The outcome of sending one data set into one fresh server."""

    seconds: float
    rss_growth_mb: float | None


class Failed(Exception):
    """A run did not store every instance."""


def run_once(
    ingest: IngestServer, dataset: DataSet, associations: int, nodelay: bool, client_cpu: int | None
) -> Run:
    """Start the server empty, flush the disk, send the set, check the count, stop the server."""
    server = ingest.start()
    try:
        assert server.proc is not None
        os.sync()  # dirty pages of earlier runs must not land on this one (pacsnode's syncfs)
        pid = server.proc.pid
        track = server.kind in ("pacsnode", "orthanc")  # storescp --fork: the work is in children
        rss0 = reset_peak_rss(pid) if track else 0
        seconds, errors = storescu(server, split(dataset, associations), nodelay, client_cpu)
        growth = (peak_rss(pid) - rss0) / 1024 if track else None
        if errors:
            raise Failed("; ".join(errors))
        stored = ingest.count(dataset.count)
        if stored != dataset.count:
            raise Failed(f"{stored} of {dataset.count} instances stored")
        return Run(seconds, growth)
    finally:
        ingest.stop()


# --------------------------------------------------------------------------- report


def _fmt(stat: Stat, digits: int = 0) -> str:
    if not stat.values:
        return "-"
    if len(stat.values) == 1:
        return f"{stat.median:,.{digits}f}"
    return f"{stat.median:,.{digits}f} ({stat.best:,.{digits}f})"


def _ratio(a: Stat, b: Stat) -> tuple[float, float]:
    return a.median / b.median, a.best / b.best


def render(table: Table, datasets: dict[str, DataSet], cases: Sequence[Case], rounds: int) -> list[str]:
    """The rate table, the ratio table with the issue's targets, the Nagle check, as lines of text."""
    how = "median (best) of the rounds" if rounds > 1 else "one round"
    out = [f"Table 1: storescu (DCMTK) -> server, TCP_NODELAY=1 unless marked; {how}", ""]
    rows = [["set", "assoc", "server", "instances", "MB", "instances/s", "MB/s", "peak RSS +MB"]]
    for case in cases:
        ds = datasets[case.dataset]
        for name in SERVERS:
            res = table.get((name, case))
            if res is None or not res.rate.values:
                continue
            rss = f"{max(res.rss_growth):,.0f}" if res.rss_growth else "-"
            label = case.dataset if case.nodelay else f"{case.dataset} (no TCP_NODELAY)"
            rows.append(
                [
                    label,
                    str(case.associations),
                    name,
                    f"{ds.count:,}",
                    f"{ds.bytes / 1e6:,.0f}",
                    _fmt(res.rate),
                    _fmt(res.mbps, 1),
                    rss,
                ]
            )
    out += columns(rows)
    main_cases = [c for c in cases if c.nodelay]
    pacs = [n for n in PACSNODES if any((n, c) in table for c in main_cases)]
    others = [
        n for n in SERVERS if n not in (*PACSNODES, "ceiling") and any((n, c) in table for c in main_cases)
    ]
    if pacs and (others or len(pacs) > 1):
        out += [
            "",
            "pacsnode / server, ratio of instances/s (= of MB/s): median" + (" (best)" if rounds > 1 else ""),
        ]
        out += [
            "verdicts on the median: ok, MISSED, or 'ok<aim' (>= 0.5x storescp but below the 0.8x aim)",
            "",
        ]
        rows = [["pacsnode", "vs", "target", *(c.label for c in main_cases)]]
        pairs = [(p, o) for p in pacs for o in others]
        if len(pacs) > 1:
            pairs.append(("pacsnode-pg", "pacsnode-sqlite"))
        for p, o in pairs:
            target = TARGETS.get(o)
            goal = "-"
            if target is not None:
                goal = f">={target[0]:g}x" + (f" (aim {target[1]:g}x)" if target[1] is not None else "")
            cells = [p, o, goal]
            for case in main_cases:
                a, b = table.get((p, case)), table.get((o, case))
                if a is None or b is None or not a.rate.values or not b.rate.values:
                    cells.append("-")
                    continue
                med, best = _ratio(a.rate, b.rate)
                cell = f"{med:.2f}x" + (f" ({best:.2f}x)" if rounds > 1 else "")
                if target is not None:
                    floor, aim = target
                    verdict = "ok" if med >= floor else "MISSED"
                    if aim is not None and floor <= med < aim:
                        verdict = "ok<aim"
                    cell += f" {verdict}"
                cells.append(cell)
            rows.append(cells)
        out += columns(rows)
    for case in cases:
        if case.nodelay:
            continue
        plain = table.get(("pacsnode-sqlite", case))
        fast = table.get(("pacsnode-sqlite", Case(case.dataset, case.associations)))
        if plain is None or fast is None or not plain.rate.values or not fast.rate.values:
            continue
        med, _ = _ratio(plain.rate, fast.rate)
        verdict = "ok" if med >= NAGLE_TARGET else "MISSED"
        out += [
            "",
            f"storescu without TCP_NODELAY into pacsnode-sqlite ({case.dataset}, {case.associations} assoc): "
            f"{plain.rate.median:,.0f} instances/s = {med:.2f}x the rate with it "
            f"[>={NAGLE_TARGET:g}x {verdict}]",
        ]
    noisy = [
        f"{name} {case.label} {res.rate.spread:.0%}"
        for (name, case), res in table.items()
        if len(res.rate.values) > 1 and res.rate.spread > 0.15
    ]
    if noisy:
        out += ["", "noisy (spread (best-worst)/median > 15%): " + ", ".join(noisy)]
    return out


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-r", "--repeats", type=int, default=1, help="rounds per measurement (1)")
    p.add_argument(
        "-s", "--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}"
    )
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of ct,small")
    p.add_argument(
        "-a", "--associations", default="1,4", help="parallel associations (storescu processes): 1,4"
    )
    p.add_argument("--ct-count", type=int, default=500, help="CT slices of 512x512 (500)")
    p.add_argument("--small-count", type=int, default=5000, help="small 64x64 instances (5000)")
    p.add_argument(
        "--no-plain",
        action="store_true",
        help="skip the pacsnode-sqlite run with storescu without TCP_NODELAY",
    )
    p.add_argument(
        "--big",
        action="store_true",
        help="also send one ~2 GB multi-frame instance into pacsnode and report its RSS growth",
    )
    p.add_argument("--big-frames", type=int, default=4000, help="frames of 512x512x16 bits (4000: 2.1 GB)")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"data set cache folder ({DEFAULT_CACHE})"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="folder in which the servers' temporary folders are made (default: the cache folder)",
    )
    p.add_argument(
        "--pin",
        choices=("none", "split"),
        default="none",
        help="CPU placement: none (default: the scheduler decides) or split (servers on the last CPU, "
        "storescu on the first)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.server_names or set(args.server_names) - set(SERVERS):
        p.error(f"choose servers from {', '.join(SERVERS)}")
    args.set_names = [s.strip() for s in args.sets.split(",") if s.strip()]
    if set(args.set_names) - set(SETS):
        p.error("choose sets from ct,small")
    try:
        args.assoc_counts = [int(a) for a in args.associations.split(",") if a.strip()]
    except ValueError:
        p.error("--associations takes integers, e.g. 1,4")
    if any(a not in (1, 2, 4) for a in args.assoc_counts):
        p.error("--associations: 1, 2 or 4 (the sets are cut into 4 parts)")
    for name in ("repeats", "ct_count", "small_count", "big_frames"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def plan(args: argparse.Namespace) -> list[Case]:
    """The cases of one round: every set x association count, then the Nagle row."""
    cases = [Case(s, a) for s in args.set_names for a in args.assoc_counts]
    if not args.no_plain and "pacsnode-sqlite" in args.server_names and "small" in args.set_names:
        cases.append(Case("small", 1, nodelay=False))
    return cases


@contextlib.contextmanager
def scratch(parent: Path | None, cache: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder for the servers in ``parent``, by default beside the data set cache.

    Every server creates one file per instance, so the cost of a file creation in this folder
    is part of every rate (see create_cost); /tmp is often a different disk, or tmpfs.
    """
    base = parent or cache
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as tmp:
        yield Path(tmp)


def create_cost(folder: Path, n: int = 200) -> float:
    """Median seconds to create (O_CREAT | O_EXCL) an empty file in ``folder``; what every server pays."""
    probe = folder / ".create-probe"
    probe.mkdir()
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            fd = os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            times.append(time.perf_counter() - t0)
            os.close(fd)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return statistics.median(times)


def _warm_cache(datasets: Sequence[DataSet]) -> None:
    """Read every file once so that storescu never waits for the disk."""
    for ds in datasets:
        for path in ds.files():
            with path.open("rb") as fp:
                while fp.read(1 << 20):
                    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, say = report_streams(args.json, args.quiet)

    needed = {"storescp": "storescp", "orthanc": "/usr/sbin/Orthanc"}
    missing = ["storescu"] if shutil.which("storescu") is None else []
    missing += [exe for n, exe in needed.items() if n in args.server_names and shutil.which(exe) is None]
    if missing:
        print(f"error: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    datasets: dict[str, DataSet] = {}
    if "ct" in args.set_names:
        datasets["ct"] = generate(ct_spec(args.ct_count), args.cache, say)
    if "small" in args.set_names:
        datasets["small"] = generate(small_spec(args.small_count), args.cache, say)
    big = generate_big(args.cache, args.big_frames, say) if args.big else None
    _warm_cache(list(datasets.values()))
    cases = plan(args)
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin == "split" and len(cpus) < 2:
        print("error: --pin split needs two CPUs", file=sys.stderr)
        return 2
    server_cpu = cpus[-1] if args.pin == "split" else None
    client_cpu = cpus[0] if args.pin == "split" else None
    server_env = client_env(True)  # every server runs with TCP_NODELAY=1, as in bench/echo
    table: Table = {}
    failed: dict[str, str] = {}
    big_runs: dict[str, Run] = {}
    load_before = os.getloadavg()
    with scratch(args.workdir, args.cache, "work-") as root, terminate_as_exit():
        create_s = create_cost(root)
        servers = {n: IngestServer(n, root, server_env, server_cpu) for n in args.server_names}
        try:
            for rnd in range(args.repeats):
                say(f"round {rnd + 1}/{args.repeats}")
                # Case by case, server after server: the runs being compared are close in time.
                for case in cases:
                    for name, ingest in servers.items():
                        if name in failed or (not case.nodelay and name != "pacsnode-sqlite"):
                            continue
                        ds = datasets[case.dataset]
                        try:
                            run = run_once(ingest, ds, case.associations, case.nodelay, client_cpu)
                        except (
                            OSError,
                            RuntimeError,
                            ProtocolFailure,
                            Failed,
                            subprocess.SubprocessError,
                        ) as e:
                            failed[name] = f"{case.label}: {e}"
                            say(f"  {name} FAILED: {case.label}: {e}")
                            continue
                        res = table.setdefault((name, case), Result())
                        res.rate.values.append(ds.count / run.seconds)
                        res.mbps.values.append(ds.bytes / 1e6 / run.seconds)
                        if run.rss_growth_mb is not None:
                            res.rss_growth.append(run.rss_growth_mb)
                        say(
                            f"  {case.label:22} {name:16} {ds.count / run.seconds:8,.0f} inst/s "
                            f"{ds.bytes / 1e6 / run.seconds:7,.1f} MB/s  {run.seconds:6.1f} s"
                        )
            if big is not None:
                for name in (n for n in PACSNODES if n in servers and n not in failed):
                    say(f"big: {big.bytes / 1e9:.1f} GB into {name}")
                    try:
                        big_runs[name] = run_once(servers[name], big, 1, True, client_cpu)
                    except (OSError, RuntimeError, ProtocolFailure, Failed, subprocess.SubprocessError) as e:
                        failed[f"{name} big"] = str(e)
                        say(f"  {name} big FAILED: {e}")
        finally:
            for ingest in servers.values():
                ingest.stop()
        create_after = create_cost(root)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    for key in list(table):
        if key[0] in failed:
            del table[key]
    if cases:
        print("\n".join(render(table, datasets, cases, args.repeats)) + "\n", file=out)
    if big_runs and big is not None:
        for name, run in big_runs.items():
            growth = run.rss_growth_mb or 0.0
            verdict = "ok" if growth < BIG_RSS_TARGET_MB else "MISSED"
            print(
                f"--big: 1 instance of {big.bytes / 1e6:,.0f} MB into {name}: {run.seconds:.1f} s, "
                f"{big.bytes / 1e6 / run.seconds:,.0f} MB/s, peak RSS growth {growth:,.0f} MB "
                f"[<{BIG_RSS_TARGET_MB:g} MB {verdict}]",
                file=out,
            )
        print("", file=out)
    print(
        "instances/s and MB/s: instances (MB = 10^6 bytes of the Part 10 files) / wall time of the "
        "storescu processes,\nfrom their start to the last C-STORE-RSP and release; every run starts "
        "from an empty server.\nceiling: storescp --ignore (receives, stores nothing): what storescu "
        "itself can send.\npeak RSS +MB: the server's VmHWM at the end minus its RSS at the start "
        "(pacsnode, Orthanc; max of the rounds).",
        file=out,
    )
    print(
        f"\n{len(cpus)} CPUs, pin {args.pin}; creating a file in the work folder: {create_s * 1e6:.0f} us "
        f"(median) before the runs, {create_after * 1e6:.0f} us after; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {elapsed:.0f} s",
        file=out,
    )
    if create_s > SLOW_CREATE:
        print(
            f"warning: a file creation took {create_s * 1e3:.2f} ms in {root} (a local disk: 0.01-0.05 ms); "
            "every server pays it at least once per instance, which flattens the ratios; "
            "try another --workdir",
            file=out,
        )
    for name, why in failed.items():
        print(f"{name}: FAILED: {why}", file=out)
    if args.json:
        doc = {
            "datasets": {n: {"count": d.count, "bytes": d.bytes} for n, d in datasets.items()},
            "results": [
                {
                    "server": name,
                    "set": case.dataset,
                    "associations": case.associations,
                    "tcp_nodelay": case.nodelay,
                    "instances_per_s": res.rate.values,
                    "mb_per_s": res.mbps.values,
                    "peak_rss_growth_mb": res.rss_growth,
                }
                for (name, case), res in table.items()
            ],
            "big": {
                n: {
                    "bytes": big.bytes if big else 0,
                    "seconds": r.seconds,
                    "peak_rss_growth_mb": r.rss_growth_mb,
                }
                for n, r in big_runs.items()
            },
            "failed": failed,
            "cpus": len(cpus),
            "loadavg": {"before": load_before, "after": load_after},
            "seconds": elapsed,
            "pin": args.pin,
            "create_seconds": create_s,
        }
        write_json(args.json, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
