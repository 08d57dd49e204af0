"""C-ECHO benchmark (PS3.7 9.1.5): echoes/s and associations/s, pacsnode vs storescp, Orthanc, pynetdicom."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (
    LOOPBACK,
    ProtocolFailure,
    RawAssociation,
    Server,
    Stat,
    report_streams,
    run_main,
    write_json,
)
from bench.common import client_env as _client_env
from bench.common import columns as _columns
from bench.common import terminate_as_exit as _terminate_as_exit
from bench.common import timed as _timed

SERVERS = ("pacsnode", "storescp", "orthanc", "pynetdicom")
# The servers the issue sets targets against: (name, metric) -> minimum pacsnode/name ratio.
TARGETS: dict[tuple[str, str], float] = {
    ("orthanc", "echo_dcmtk"): 1.0,
    ("orthanc", "assoc_raw"): 1.0,
    ("storescp", "echo_dcmtk"): 0.75,
    ("storescp", "assoc_raw"): 0.75,
    ("pynetdicom", "echo_dcmtk"): 20.0,
}
METRICS: dict[str, str] = {
    "echo_dcmtk": "echoes/s, DCMTK echoscu --repeat N on one association (net of a 1-echo run)",
    "echo_raw": "echoes/s, Python raw-socket client, N echoes on one association",
    "assoc_raw": "associations/s, Python raw-socket client: M x (associate, 1 echo, release) in one process",
    "assoc_dcmtk": "associations/s, P echoscu processes in sequence (includes process start of echoscu)",
}


def _echoscu(port: int, aec: str, repeat: int, env: dict[str, str]) -> None:
    argv = ["echoscu", "-aec", aec, "-to", "10", "-ta", "10", "-td", "10"]
    if repeat > 1:
        argv += ["--repeat", str(repeat)]
    argv += [LOOPBACK, str(port)]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30 + repeat * 0.1, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"echoscu failed ({done.returncode}): {done.stderr.decode(errors='replace')}")


def echo_dcmtk(port: int, aec: str, n: int, env: dict[str, str]) -> float:
    """echoscu --repeat n, minus a 1-echo run (process start, association, release): echoes/s."""
    t_one = _timed(lambda: _echoscu(port, aec, 1, env))
    t_n = _timed(lambda: _echoscu(port, aec, n, env))
    net = t_n - t_one
    return (n - 1) / net if net > 0 else n / t_n


def assoc_dcmtk(port: int, aec: str, m: int, env: dict[str, str]) -> float:
    """m echoscu processes one after the other, one association and one echo each: associations/s."""

    def loop() -> None:
        for _ in range(m):
            _echoscu(port, aec, 1, env)

    return m / _timed(loop)


def echo_raw(port: int, aec: str, n: int, nodelay: bool) -> float:
    """n echoes on one raw-socket association (association set-up not timed): echoes/s."""
    assoc = RawAssociation(port, aec, nodelay=nodelay)

    def loop() -> None:
        for _ in range(n):
            assoc.echo()

    try:
        elapsed = _timed(loop)
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    return n / elapsed


def assoc_raw(port: int, aec: str, m: int, nodelay: bool) -> float:
    """m x (connect, associate, one echo, release, close) from this process: associations/s."""

    def loop() -> None:
        for _ in range(m):
            assoc = RawAssociation(port, aec, nodelay=nodelay)
            try:
                assoc.echo()
            except BaseException:
                assoc.abort()
                raise
            assoc.release()

    return m / _timed(loop)


# --------------------------------------------------------------------------- the run


@dataclass
class Sizes:
    """How many echoes (N), raw-client associations (M) and echoscu processes (P) one round uses."""

    echoes: int
    associations: int
    processes: int


Table = dict[str, dict[str, Stat]]  # server -> metric -> Stat


def measure(server: Server, sizes: Sizes, nodelay: bool, metric: str) -> float:
    """One measurement of one metric against one server."""
    env = _client_env(nodelay)
    port, aec = server.port, server.aet
    if metric == "echo_dcmtk":
        return echo_dcmtk(port, aec, sizes.echoes, env)
    if metric == "echo_raw":
        return echo_raw(port, aec, sizes.echoes, nodelay)
    if metric == "assoc_raw":
        return assoc_raw(port, aec, sizes.associations, nodelay)
    if metric == "assoc_dcmtk":
        return assoc_dcmtk(port, aec, sizes.processes, env)
    raise ValueError(metric)


def warm_up(server: Server) -> None:
    """Exercise every code path once so imports, caches and thread pools are hot."""
    env = _client_env(True)
    _echoscu(server.port, server.aet, 100, env)
    echo_raw(server.port, server.aet, 100, True)
    assoc_raw(server.port, server.aet, 10, True)
    assoc_dcmtk(server.port, server.aet, 3, env)


def _fmt_rate(stat: Stat | None) -> str:
    if stat is None or not stat.values:
        return "-"
    return f"{stat.median:,.0f} ({stat.best:,.0f})"


def _fmt_ratio(a: Stat | None, b: Stat | None) -> str:
    if a is None or b is None or not a.values or not b.values:
        return "-"
    return f"{a.median / b.median:.2f}x ({a.best / b.best:.2f}x)"


def render(
    title: str, table: Table, sizes: dict[str, Sizes], metrics: Sequence[str], targets: bool = True
) -> str:
    """The rates, then pacsnode/other ratios with the issue's targets, as plain text."""
    out = [title, "rates: median (best) of the rounds", ""]
    rows = [["server", "N", "M", "P", *metrics]]
    table = {name: table[name] for name in sorted(table, key=SERVERS.index)}
    for name, row in table.items():
        size = sizes[name]
        rows.append([name, *(str(n) if n else "-" for n in (size.echoes, size.associations, size.processes))])
        rows[-1] += [_fmt_rate(row.get(m)) for m in metrics]
    out += _columns(rows)
    base = table.get("pacsnode")
    others = [n for n in table if n != "pacsnode"]
    if base is not None and others:
        legend = "; target from the issue in []" if targets else ""
        out += ["", f"pacsnode / server: ratio of medians (ratio of bests){legend}"]
        rows = [["vs", *metrics]]
        for name in others:
            cells = [name]
            for m in metrics:
                cell = _fmt_ratio(base.get(m), table[name].get(m))
                target = TARGETS.get((name, m)) if targets else None
                if target is not None and cell != "-":
                    ok = base[m].median / table[name][m].median >= target
                    cell += f" [>={target:g}x {'ok' if ok else 'MISSED'}]"
                cells.append(cell)
            rows.append(cells)
        out += _columns(rows)
    noisy = [
        f"{n}.{m} {s.spread:.0%}"
        for n, row in table.items()
        for m, s in row.items()
        if s.values and s.spread > 0.15
    ]
    if noisy:
        out += ["", "noisy (spread (best-worst)/median > 15%): " + ", ".join(noisy)]
    return "\n".join(out)


def _as_json(table: Table) -> dict[str, Any]:
    return {
        name: {
            m: {"values": s.values, "best": s.best, "median": s.median} for m, s in row.items() if s.values
        }
        for name, row in table.items()
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-n", "--echoes", type=int, default=3000, help="echoes per measurement (default 3000)")
    p.add_argument("-m", "--associations", type=int, default=500, help="raw-client associations (500)")
    p.add_argument(
        "-p", "--processes", type=int, default=100, help="echoscu processes, 1 association each (100)"
    )
    p.add_argument("--pynetdicom-echoes", type=int, default=300, help="N for pynetdicom, ~350/s (300)")
    p.add_argument("--pynetdicom-associations", type=int, default=50, help="M and P for pynetdicom (50)")
    p.add_argument(
        "--plain-echoes", type=int, default=50, help="N for storescp in table 2, ~40 ms per echo (50)"
    )
    p.add_argument("--plain-processes", type=int, default=20, help="P for storescp in table 2 (20)")
    p.add_argument("-r", "--repeats", type=int, default=3, help="rounds per measurement (3)")
    p.add_argument(
        "-s", "--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}"
    )
    p.add_argument(
        "--no-plain", action="store_true", help="skip the table with TCP_NODELAY unset in the client"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    p.add_argument(
        "--pin",
        choices=("none", "same", "split"),
        default="same",
        help="CPU placement: same (default: servers and clients share one CPU, as the scheduler does when "
        "it is lucky; steady numbers), none (the scheduler decides; on small VMs ping-pong rates then flip "
        "between a same-CPU and a ~3x slower cross-CPU mode), split (servers on one CPU, clients on another)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown or not names:
        p.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}")
    args.server_names = names
    counts = ("echoes", "associations", "processes", "pynetdicom_echoes", "pynetdicom_associations")
    for name in (*counts, "plain_echoes", "plain_processes", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, say = report_streams(args.json, args.quiet)

    needed = {"storescp": "storescp", "orthanc": "/usr/sbin/Orthanc"}
    missing = ["echoscu"] if shutil.which("echoscu") is None else []
    missing += [
        exe for name, exe in needed.items() if name in args.server_names and shutil.which(exe) is None
    ]
    if missing:
        print(f"error: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    full = Sizes(args.echoes, args.associations, args.processes)
    slow = Sizes(args.pynetdicom_echoes, args.pynetdicom_associations, args.pynetdicom_associations)
    sizes = {name: slow if name == "pynetdicom" else full for name in args.server_names}
    # Table 2: only the DCMTK client, since the raw client writes every PDU in one send() and so
    # never has a segment for Nagle to hold back. storescp then stalls on delayed ACKs: small N.
    plain_metrics = ("echo_dcmtk", "assoc_dcmtk")
    plain_sizes = {
        name: full if name == "pacsnode" else Sizes(args.plain_echoes, 0, args.plain_processes)
        for name in ("pacsnode", "storescp")
        if name in args.server_names and not args.no_plain
    }
    server_env = _client_env(True)  # every server runs with TCP_NODELAY=1
    fast: Table = {}
    plain: Table = {}
    failed: dict[str, str] = {}
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin == "split" and len(cpus) < 2:
        print("error: --pin split needs two CPUs", file=sys.stderr)
        return 2
    server_cpu = None if args.pin == "none" else cpus[-1]
    client_cpu = cpus[0] if args.pin == "split" else server_cpu
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pacsnode-bench-echo-") as tmp, _terminate_as_exit():
        servers = [Server(n, n.upper()[:16], Path(tmp) / n) for n in args.server_names]
        try:
            for server in servers:
                say(f"starting {server.name}")
                try:
                    server.start(server_env, server_cpu)
                    warm_up(server)
                    say(f"  {server.name} ready on port {server.port}")
                except (OSError, RuntimeError, ProtocolFailure, subprocess.SubprocessError) as exc:
                    failed[server.name] = str(exc)
                    say(f"  {server.name} FAILED: {exc}")
                    server.stop()
            live = [s for s in servers if s.proc is not None]
            if client_cpu is not None:  # this process runs the raw client; echoscu inherits the mask
                os.sched_setaffinity(0, {client_cpu})
            # Metric by metric, server after server: the runs being compared are seconds apart,
            # so a burst of load from elsewhere tends to hit all the servers alike.
            plan = [(True, m, fast, sizes) for m in METRICS]
            plan += [(False, m, plain, plain_sizes) for m in plain_metrics]
            for rnd in range(args.repeats):
                say(f"round {rnd + 1}/{args.repeats}")
                for nodelay, metric, table, table_sizes in plan:
                    for server in live:
                        if server.name in failed or server.name not in table_sizes:
                            continue
                        try:
                            rate = measure(server, table_sizes[server.name], nodelay, metric)
                        except (OSError, RuntimeError, ProtocolFailure, subprocess.SubprocessError) as exc:
                            failed[server.name] = f"{metric}: {exc}"
                            say(f"  {server.name} FAILED: {metric}: {exc}")
                            continue
                        row = table.setdefault(server.name, {})
                        row.setdefault(metric, Stat()).values.append(rate)
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.stop()
            os.sched_setaffinity(0, cpus)
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started
    for table in (fast, plain):
        for name in failed:
            table.pop(name, None)
    print(render("Table 1: clients and servers with TCP_NODELAY=1", fast, sizes, list(METRICS)), file=out)
    if plain:
        print("", file=out)
        title = "Table 2: servers with TCP_NODELAY=1, DCMTK client without it"
        print(render(title, plain, plain_sizes, plain_metrics, targets=False), file=out)
    print("", file=out)
    for metric, text in METRICS.items():
        print(f"{metric:12} {text}", file=out)
    print(
        f"\n{len(cpus)} CPUs, pin {args.pin} (servers on CPU {server_cpu}, clients on CPU {client_cpu}); "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {elapsed:.0f} s",
        file=out,
    )
    for name, why in failed.items():
        print(f"{name}: FAILED: {why}", file=out)
    if args.json:
        doc = {
            "metrics": METRICS,
            "sizes": {n: vars(s) for n, s in sizes.items()},
            "plain_sizes": {n: vars(s) for n, s in plain_sizes.items()},
            "nodelay": _as_json(fast),
            "client_without_nodelay": _as_json(plain),
            "failed": failed,
            "cpus": os.cpu_count(),
            "loadavg": {"before": load_before, "after": load_after},
            "seconds": elapsed,
            "pin": {"mode": args.pin, "server_cpu": server_cpu, "client_cpu": client_cpu},
        }
        write_json(args.json, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
