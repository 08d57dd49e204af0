"""C-GET and C-MOVE benchmark (PS3.4 C.4.2, C.4.3): a 500-slice CT study, pacsnode vs Orthanc, into DCMTK."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydicom import dcmread

from bench.common import (
    LOOPBACK,
    VENV_BIN,
    Server,
    Stat,
    client_env,
    columns,
    cpu_seconds,
    report_streams,
    run_main,
    terminate_as_exit,
    write_json,
)
from bench.ingest.data import DEFAULT_CACHE, DataSet, ct_spec, generate
from bench.ingest.run import scratch

SERVERS = ("pacsnode-sqlite", "pacsnode-pg", "orthanc")
PACSNODES = ("pacsnode-sqlite", "pacsnode-pg")
# move-sink: C-MOVE to a storescp --ignore, which receives and drops: the sender's own rate.
OPERATIONS = ("get", "move", "move-sink")
BASELINE = "storescu->storescp"
SINK_BASELINE = "storescu->sink"
MOVE_DEST = "STORESCP"
SINK_DEST = "SINK"
GET_AET = "GETSCU"
MOVE_AET = "MOVESCU"
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
PG_URL = "postgresql://postgres@127.0.0.1/{db}"
CLIENT_TIMEOUT = 600.0
# Target from the issue: at least 1.5x Orthanc, or within 10% of storescu->storescp, whichever is lower.
ORTHANC_FACTOR = 1.5
BASELINE_FACTOR = 0.9
DCMTK_TIMEOUTS = ["-to", "30", "-ta", "30", "-td", "120"]


class Failed(Exception):
    """A retrieval did not deliver every instance, or a tool failed."""


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as c:
        c.execute(sql.encode())


def _run(argv: Sequence[str], env: dict[str, str], timeout: float = CLIENT_TIMEOUT) -> float:
    """Run a DCMTK client; its wall time in seconds. Fails on a non-zero exit or an error line."""
    t0 = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    elapsed = time.perf_counter() - t0
    err = done.stderr.decode(errors="replace") + done.stdout.decode(errors="replace")
    if done.returncode != 0 or "E: " in err:
        raise Failed(f"{Path(argv[0]).name} exit {done.returncode}: {err[-1500:]}")
    return elapsed


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _empty(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


# --------------------------------------------------------------------------- the receiver


@dataclass
class Receiver:
    """A DCMTK storescp for the whole run: C-MOVE destination and the baselines' receiver.

    Started before the servers under test, which must know its port; emptied between runs.
    With ``ignore`` (storescp --ignore) it receives every data set and stores nothing.
    """

    aet: str
    workdir: Path
    env: dict[str, str]
    ignore: bool = False
    port: int = 0
    server: Server | None = None
    _log_mark: int = 0

    @property
    def output(self) -> Path:
        return self.workdir / "received"

    def start(self) -> None:
        self.stop()
        _empty(self.output)
        # -v: one "Received Store Request" line per data set, the only trace --ignore leaves.
        args = ["--ignore", "-v"] if self.ignore else []
        server = Server("storescp", self.aet, self.workdir / "storescp", output=self.output, args=args)
        server.start(self.env)
        self.port = server.port
        self.server = server
        self._log_mark = 0

    def received(self) -> int:
        """Data sets received since the last clear()."""
        if not self.ignore:
            return _count_files(self.output)
        assert self.server is not None
        with self.server.log.open("rb") as fp:
            fp.seek(self._log_mark)
            return fp.read().count(b"Received Store Request")

    def clear(self) -> None:
        if not self.ignore:
            _empty(self.output)
        elif self.server is not None:
            self._log_mark = self.server.log.stat().st_size

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


# --------------------------------------------------------------------------- servers under test


class Source:
    """A server holding the study: pacsnode (imported with `pacsnode import`) or Orthanc (storescu)."""

    def __init__(
        self, name: str, root: Path, env: dict[str, str], dataset: DataSet, destinations: dict[str, int]
    ) -> None:
        self.name = name
        self.env = env
        self.dataset = dataset
        self.destinations = destinations  # C-MOVE destination AE title -> port on LOOPBACK
        self.workdir = root / name
        self.db = f"pacsnode_bench_retrieve_{os.getpid()}" if name == "pacsnode-pg" else ""
        self.server: Server | None = None
        self.load_seconds = 0.0

    def start(self) -> Server:
        """Load the study into a fresh server and start it; returns it answering C-ECHO."""
        self.workdir.mkdir(parents=True)
        if self.name in PACSNODES:
            config = self.workdir / "pacsnode.toml"
            text = "".join(
                f'[peers.{aet}]\nhost = "{LOOPBACK}"\nport = {port}\n\n'
                for aet, port in self.destinations.items()
            )
            if self.db:
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
                _pg_admin(f'CREATE DATABASE "{self.db}"')
                text += f'\n[storage]\nindex_url = "{PG_URL.format(db=self.db)}"\n'
            config.write_text(text)
            server = Server(
                self.name, "PACSNODE", self.workdir, kind="pacsnode", args=["--config", str(config)]
            )
            argv = [
                str(VENV_BIN / "pacsnode"),
                "import",
                "--config",
                str(config),
                "--data",
                str(server.data_dir),
            ]
            t0 = time.perf_counter()
            done = subprocess.run(
                [*argv, *map(str, self.dataset.parts())],
                env=self.env,
                capture_output=True,
                timeout=CLIENT_TIMEOUT,
                check=False,
            )
            self.load_seconds = time.perf_counter() - t0
            if done.returncode != 0:
                raise Failed(
                    f"pacsnode import exit {done.returncode}: {done.stderr.decode(errors='replace')[-1500:]}"
                )
            self.server = server
            server.start(self.env)
        else:
            modalities = {
                **{aet: [aet, LOOPBACK, port] for aet, port in self.destinations.items()},
                GET_AET: [GET_AET, LOOPBACK, 104],
                MOVE_AET: [MOVE_AET, LOOPBACK, 104],
            }
            server = Server(
                self.name,
                "ORTHANC",
                self.workdir,
                kind="orthanc",
                orthanc_config={"DicomModalities": modalities},
            )
            self.server = server
            server.start(self.env)
            argv = ["storescu", "-aec", server.aet, "+sd", *DCMTK_TIMEOUTS, LOOPBACK, str(server.port)]
            self.load_seconds = _run([*argv, *map(str, self.dataset.parts())], self.env)
            url = f"http://{LOOPBACK}:{server.http_port}/statistics"
            with urllib.request.urlopen(url, timeout=30) as response:
                held = int(json.load(response)["CountInstances"])
            if held != self.dataset.count:
                raise Failed(f"Orthanc holds {held} of {self.dataset.count} instances after storescu")
        return server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.db:
            with contextlib.suppress(Exception):
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


def _study_at(server: Server, study_uid: str) -> list[str]:
    """The keys naming one study at STUDY level, then the server's address."""
    return [
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        LOOPBACK,
        str(server.port),
    ]


def c_get(server: Server, study_uid: str, out: Path, env: dict[str, str]) -> float:
    """getscu of the whole study into ``out``: wall time."""
    argv = ["getscu", "-aet", GET_AET, "-aec", server.aet, "-S", *DCMTK_TIMEOUTS, "-od", str(out)]
    return _run([*argv, *_study_at(server, study_uid)], env)


def c_move(server: Server, study_uid: str, destination: str, env: dict[str, str]) -> float:
    """movescu of the whole study to a storescp (STORESCP or SINK): wall time."""
    argv = ["movescu", "-aet", MOVE_AET, "-aec", server.aet, "-aem", destination, "-S", *DCMTK_TIMEOUTS]
    return _run([*argv, *_study_at(server, study_uid)], env)


def store_baseline(receiver: Receiver, dataset: DataSet, env: dict[str, str]) -> float:
    """storescu of the same files into the same storescp, one association: wall time."""
    argv = ["storescu", "-aec", receiver.aet, "+sd", *DCMTK_TIMEOUTS, LOOPBACK, str(receiver.port)]
    return _run([*argv, *map(str, dataset.parts())], env)


# --------------------------------------------------------------------------- report


def _op_label(op: str) -> str:
    if op == "store":
        return "C-STORE"
    return "C-MOVE (sink)" if op == "move-sink" else f"C-{op.upper()}"


def _fmt(stat: Stat, digits: int = 0) -> str:
    if not stat.values:
        return "-"
    if len(stat.values) == 1:
        return f"{stat.median:,.{digits}f}"
    return f"{stat.median:,.{digits}f} ({stat.best:,.{digits}f})"


Table = dict[tuple[str, str], Stat]  # (server, operation) -> instances/s


HOW = {
    "store": "storescu -> storescp",
    "get": "getscu -od",
    "move": "movescu -> storescp",
    "move-sink": "movescu -> storescp --ignore",
}


def _baseline_of(op: str) -> str:
    """The storescu baseline an operation is compared with: the same kind of receiver."""
    return SINK_BASELINE if op == "move-sink" else BASELINE


def render(table: Table, cpu: dict[tuple[str, str], list[float]], dataset: DataSet, rounds: int) -> list[str]:
    how = "median (best) of the rounds" if rounds > 1 else "one round"
    out = [f"Table 1: retrieval of one {dataset.count}-instance CT study into DCMTK; {how}", ""]
    head = ["server", "operation", "client -> receiver", "instances", "MB", "instances/s", "MB/s"]
    rows = [[*head, "server CPU ms/inst"]]
    mb = dataset.bytes / 1e6
    order = [(BASELINE, "store"), (SINK_BASELINE, "store")]
    order += [(name, op) for name in SERVERS for op in OPERATIONS]
    for name, op in order:
        stat = table.get((name, op))
        if stat is None or not stat.values:
            continue
        mbps = Stat([v * mb / dataset.count for v in stat.values])
        how_to = "storescu -> storescp --ignore" if name == SINK_BASELINE else HOW[op]
        cpu_ms = f"{statistics.median(cpu[(name, op)]) * 1e3:.2f}" if cpu.get((name, op)) else "-"
        rows.append(
            [
                name,
                _op_label(op),
                how_to,
                f"{dataset.count:,}",
                f"{mb:,.0f}",
                _fmt(stat),
                _fmt(mbps, 1),
                cpu_ms,
            ]
        )
    out += columns(rows)
    pacs = [n for n in PACSNODES if any((n, op) in table for op in OPERATIONS)]
    if pacs:
        out += [
            "",
            "pacsnode / other, ratio of instances/s (median of the rounds); baseline: storescu into the "
            "same kind of receiver",
            f"target (C-GET, C-MOVE): >= min({ORTHANC_FACTOR:g}x Orthanc, {BASELINE_FACTOR:g}x baseline), "
            "the same operation",
            "",
        ]
        rows = [["pacsnode", "operation", "vs orthanc", "vs baseline", "target instances/s", "verdict"]]
        for name in pacs:
            for op in OPERATIONS:
                stat = table.get((name, op))
                if stat is None or not stat.values:
                    continue
                o = table.get(("orthanc", op))
                base = table.get((_baseline_of(op), "store"))
                cells = [name, _op_label(op)]
                cells.append(f"{stat.median / o.median:.2f}x" if o is not None and o.values else "-")
                cells.append(f"{stat.median / base.median:.2f}x" if base is not None and base.values else "-")
                goals = []
                if o is not None and o.values:
                    goals.append(ORTHANC_FACTOR * o.median)
                if base is not None and base.values:
                    goals.append(BASELINE_FACTOR * base.median)
                if goals and op != "move-sink":
                    goal = min(goals)
                    cells += [f"{goal:,.0f}", "ok" if stat.median >= goal else "MISSED"]
                else:
                    cells += ["-", "-"]
                rows.append(cells)
        out += columns(rows)
    noisy = [
        f"{name} {_op_label(op)} {stat.spread:.0%}"
        for (name, op), stat in table.items()
        if len(stat.values) > 1 and stat.spread > 0.15
    ]
    if noisy:
        out += ["", "noisy (spread (best-worst)/median > 15%): " + ", ".join(noisy)]
    return out


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-r", "--repeats", type=int, default=5, help="rounds per measurement (5)")
    p.add_argument(
        "-s",
        "--servers",
        default="pacsnode-sqlite,orthanc",
        help=f"comma-separated subset of {','.join(SERVERS)}",
    )
    p.add_argument("--ops", default="get,move,move-sink", help="get,move,move-sink (all)")
    p.add_argument("--count", type=int, default=500, help="CT slices of 512x512x16 bits in the study (500)")
    p.add_argument("--no-baseline", action="store_true", help="skip the storescu -> storescp baseline")
    p.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"data set cache, shared with bench/ingest ({DEFAULT_CACHE})",
    )
    p.add_argument(
        "--workdir", type=Path, help="folder for the servers' temporary folders (default: the cache)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if set(args.server_names) - set(SERVERS):
        p.error(f"choose servers from {', '.join(SERVERS)}")
    args.op_names = [s.strip() for s in args.ops.split(",") if s.strip()]
    if not args.op_names or set(args.op_names) - set(OPERATIONS):
        p.error("choose operations from get,move,move-sink")
    if args.repeats < 1 or args.count < 1:
        p.error("--repeats and --count must be at least 1")
    args.cache = args.cache.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, say = report_streams(args.json, args.quiet)

    missing = [t for t in ("storescu", "storescp", "getscu", "movescu") if shutil.which(t) is None]
    if "orthanc" in args.server_names and not Path("/usr/sbin/Orthanc").exists():
        missing.append("/usr/sbin/Orthanc")
    if missing:
        print(f"error: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    dataset = generate(ct_spec(args.count), args.cache, say)
    first = next(dataset.files())
    study_uid = str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)
    for path in dataset.files():  # into the page cache: storescu must not wait for the disk
        path.read_bytes()
    env = client_env(True)  # servers and DCMTK clients with TCP_NODELAY=1, as in the other benchmarks
    table: Table = {}
    cpu: dict[tuple[str, str], list[float]] = {}  # server CPU seconds per instance, per round
    failed: dict[str, str] = {}
    loads: dict[str, float] = {}
    load_before = os.getloadavg()
    with scratch(args.workdir, args.cache, "retrieve-") as root, terminate_as_exit():
        receivers = {
            MOVE_DEST: Receiver(MOVE_DEST, root / "receiver", env),
            SINK_DEST: Receiver(SINK_DEST, root / "sink", env, ignore=True),
        }
        baselines = {BASELINE: receivers[MOVE_DEST], SINK_BASELINE: receivers[SINK_DEST]}
        get_out = root / "getscu"
        sources: dict[str, Source] = {}
        try:
            for receiver in receivers.values():
                receiver.start()
            ports = {aet: r.port for aet, r in receivers.items()}
            sources = {n: Source(n, root, env, dataset, ports) for n in args.server_names}
            for name, source in sources.items():
                try:
                    say(f"loading the study into {name}")
                    source.start()
                    loads[name] = source.load_seconds
                except (OSError, RuntimeError, TimeoutError, Failed, subprocess.SubprocessError) as exc:
                    failed[name] = f"start/load: {exc}"
                    say(f"  {name} FAILED: {exc}")
                    source.stop()
            # Every (server, operation) once per round; the order turns by one each round, so that no
            # server always runs first (cold caches) or right after the heaviest one.
            runs: list[tuple[str, str]] = []
            if not args.no_baseline:
                runs += [(BASELINE, "store")] if {"get", "move"} & set(args.op_names) else []
                runs += [(SINK_BASELINE, "store")] if "move-sink" in args.op_names else []
            runs += [(name, op) for name in sources for op in args.op_names]
            for rnd in range(args.repeats):
                say(f"round {rnd + 1}/{args.repeats}")
                shift = rnd % len(runs)
                for name, op in runs[shift:] + runs[:shift]:
                    if name in failed:
                        continue
                    pid = None
                    server = sources[name].server if name in sources else None
                    if server is not None and server.proc is not None:
                        pid = server.proc.pid
                    cpu0 = cpu_seconds(pid) if pid is not None else 0.0
                    try:
                        if name in baselines:
                            receiver = baselines[name]
                            receiver.clear()
                            seconds = store_baseline(receiver, dataset, env)
                            got = receiver.received()
                        elif op == "get":
                            assert server is not None
                            _empty(get_out)
                            seconds = c_get(server, study_uid, get_out, env)
                            got = _count_files(get_out)
                        else:
                            assert server is not None
                            receiver = receivers[SINK_DEST if op == "move-sink" else MOVE_DEST]
                            receiver.clear()
                            seconds = c_move(server, study_uid, receiver.aet, env)
                            got = receiver.received()
                        if got != dataset.count:
                            raise Failed(f"{_op_label(op)} delivered {got} of {dataset.count} instances")
                    except (OSError, Failed, subprocess.SubprocessError) as exc:
                        failed[name] = f"{_op_label(op)}: {exc}"
                        say(f"  {name} {_op_label(op)} FAILED: {exc}")
                        continue
                    table.setdefault((name, op), Stat()).values.append(dataset.count / seconds)
                    if pid is not None:
                        cpu.setdefault((name, op), []).append((cpu_seconds(pid) - cpu0) / dataset.count)
                    say(f"  {name:20} {_op_label(op):11} {dataset.count / seconds:8,.0f} instances/s")
        finally:
            for source in sources.values():
                source.stop()
            for receiver in receivers.values():
                receiver.stop()
            shutil.rmtree(get_out, ignore_errors=True)
    load_after = os.getloadavg()
    for key in [k for k in table if k[0] in failed]:
        del table[key]
    print("\n".join(render(table, cpu, dataset, args.repeats)) + "\n", file=out)
    print(
        "instances/s: instances / wall time of the DCMTK client process (getscu, movescu, storescu), "
        "from its start\nto its exit after the final response; every file is counted in the receiver's "
        "folder afterwards.\nThe study is loaded once per server (pacsnode import, storescu to Orthanc): "
        + ", ".join(f"{n} {s:.1f} s" for n, s in loads.items())
        + ".\nserver CPU ms/inst: user + system CPU time of the server process over the run / instances "
        "(median of the rounds).\nC-MOVE (sink): to storescp --ignore, which receives and stores nothing: "
        "the sender's own rate.\n"
        + f"Data: {dataset.count} CT slices 512x512x16 bits, Explicit VR Little Endian, "
        f"{dataset.bytes / 1e6:,.0f} MB, one series.",
        file=out,
    )
    elapsed = time.perf_counter() - started
    print(
        f"\n{len(os.sched_getaffinity(0))} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {elapsed:.0f} s",
        file=out,
    )
    for name, why in failed.items():
        print(f"{name}: FAILED: {why}", file=out)
    if args.json:
        doc: dict[str, Any] = {
            "dataset": {"count": dataset.count, "bytes": dataset.bytes},
            "results": [
                {
                    "server": n,
                    "operation": op,
                    "instances_per_s": s.values,
                    "server_cpu_s_per_instance": cpu.get((n, op), []),
                }
                for (n, op), s in table.items()
            ],
            "load_seconds": loads,
            "failed": failed,
            "loadavg": {"before": load_before, "after": load_after},
            "seconds": elapsed,
        }
        write_json(args.json, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
