"""Modality Worklist C-FIND latency benchmark (PS3.4 Annex K): pacsnode vs DCMTK wlmscpfs, 10,000 items."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydicom.dataset import Dataset

from bench.common import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    Server,
    client_env,
    columns,
    free_port,
    remove_cache,
    report_streams,
    run_main,
    terminate_as_exit,
    write_json,
)
from bench.query.client import Query, QueryFailure, Samples, measure, measure_echo
from bench.query.run import percentile
from bench.worklist.client import WorklistPynetdicomClient, WorklistRawClient
from bench.worklist.data import SEED, Item, items, prepare

DEFAULT_CACHE = Path(__file__).resolve().parent / ".data"
SERVERS = ("pacsnode", "wlmscpfs")
CLIENTS = ("raw", "pynetdicom")
WLM_AET = "WLMSCP"
PACSNODE_AET = "PACSNODE"
SPEEDUP_TARGET = 2.0  # pacsnode at least 2x faster than wlmscpfs
ECHO = "echo"
# Kind -> description.  Every key value is drawn from an item, so each query matches at least one.
KINDS: dict[str, str] = {
    "modality-day": "Modality=<m>, ScheduledProcedureStepStartDate=<one day>",
    "station-day": "ScheduledStationAETitle=<one station>, ScheduledProcedureStepStartDate=<one day>",
    "station": "ScheduledStationAETitle=<one station> (all its items, ~250)",
    "name-prefix": "PatientName=<FAMILY>^<G>* (prefix wildcard)",
    "patient-id": "PatientID=<one patient>",
}
# What a modality typically asks for (PS3.4 Table K.6-1 return keys).
TOP_RETURN_KEYS = (
    "AccessionNumber",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
)
STEP_RETURN_KEYS = (
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
)
HTTP_TIMEOUT = 60.0


# --------------------------------------------------------------------------- queries


def identifier(top: dict[str, str], step: dict[str, str]) -> Dataset:
    """A worklist identifier: the return keys, with these matching keys set."""
    ds = Dataset()
    for keyword in TOP_RETURN_KEYS:
        setattr(ds, keyword, top.get(keyword, ""))
    sps = Dataset()
    for keyword in STEP_RETURN_KEYS:
        setattr(sps, keyword, step.get(keyword, ""))
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def make_queries(worklist: Sequence[Item], kind: str, n: int, seed: int) -> list[Query]:
    """n queries of one kind, keys drawn from the items, and the number of matches each must have."""
    rng = random.Random(f"{seed}-{kind}")
    out = []
    for _ in range(n):
        it = rng.choice(worklist)
        if kind == "modality-day":
            step = {"Modality": it.modality, "ScheduledProcedureStepStartDate": it.date}
            expected = sum(1 for x in worklist if x.modality == it.modality and x.date == it.date)
            out.append(Query(kind, identifier({}, step), expected))
        elif kind == "station-day":
            step = {"ScheduledStationAETitle": it.station, "ScheduledProcedureStepStartDate": it.date}
            expected = sum(1 for x in worklist if x.station == it.station and x.date == it.date)
            out.append(Query(kind, identifier({}, step), expected))
        elif kind == "station":
            expected = sum(1 for x in worklist if x.station == it.station)
            out.append(Query(kind, identifier({}, {"ScheduledStationAETitle": it.station}), expected))
        elif kind == "name-prefix":
            family, given = it.patient_name.split("^")
            prefix = f"{family}^{given[0]}"
            expected = sum(1 for x in worklist if x.patient_name.startswith(prefix))
            out.append(Query(kind, identifier({"PatientName": prefix + "*"}, {}), expected))
        elif kind == "patient-id":
            expected = sum(1 for x in worklist if x.patient_id == it.patient_id)
            out.append(Query(kind, identifier({"PatientID": it.patient_id}, {}), expected))
        else:
            raise ValueError(kind)
    return out


# --------------------------------------------------------------------------- servers


@dataclass
class Wlmscpfs(Server):
    """DCMTK wlmscpfs (as users run it: a child process per association) on a database folder."""

    database: Path = Path()

    def start(self, server_env: dict[str, str], cpu: int | None = None) -> None:
        import subprocess

        exe = shutil.which("wlmscpfs")
        if exe is None:
            raise RuntimeError("wlmscpfs (DCMTK) is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [exe, "-dfp", str(self.database), str(self.port)]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        with self.log.open("wb") as logf:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=server_env,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._wait_ready(time.monotonic() + STARTUP_TIMEOUT)


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, ctype: str) -> Any:
    headers = {"Content-Type": ctype} if ctype else {}
    conn.request(method, path, body=body, headers=headers)
    rsp = conn.getresponse()
    return rsp.status, rsp.read()


def load_pacsnode(
    http_port: int, worklist: Sequence[Item], files: Path, batch: int, say: Callable[[str], None]
) -> tuple[float, str]:
    """POST every item to /api/worklist on one kept-alive connection; (seconds, how).

    ``batch`` > 1: DICOM JSON arrays of that many items; 1 (or arrays refused): one .wl file
    (application/dicom) per request.
    """
    conn = http.client.HTTPConnection(LOOPBACK, http_port, timeout=HTTP_TIMEOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:  # the HTTP server may come up a moment after the DICOM one
        try:
            status, _ = _request(conn, "GET", "/api/worklist", None, "")
            break
        except OSError:
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if status != 200:
        raise RuntimeError(f"GET /api/worklist answered {status}: no worklist API")
    t0 = time.perf_counter()
    added = 0
    how = f"DICOM JSON arrays of {batch}"
    if batch > 1:
        for start in range(0, len(worklist), batch):
            chunk = worklist[start : start + batch]
            body = json.dumps([it.dataset().to_json_dict() for it in chunk]).encode()
            status, data = _request(conn, "POST", "/api/worklist", body, "application/dicom+json")
            if status != 201 and start == 0:
                say(f"    POST of a JSON array answered {status}: one file per request instead")
                batch = 1
                break
            if status != 201:
                raise RuntimeError(f"POST /api/worklist answered {status}: {data[:300]!r}")
            added += len(json.loads(data)["items"])
    if batch == 1:
        how = "one .wl file (application/dicom) per request"
        t0 = time.perf_counter()
        for it in worklist:
            status, data = _request(
                conn, "POST", "/api/worklist", (files / it.file_name).read_bytes(), "application/dicom"
            )
            if status != 201:
                raise RuntimeError(f"POST /api/worklist answered {status}: {data[:300]!r}")
            added += len(json.loads(data)["items"])
    elapsed = time.perf_counter() - t0
    status, data = _request(conn, "GET", "/api/worklist", None, "")
    conn.close()
    listed = sum(1 for i in json.loads(data)["items"] if i.get("status", "SCHEDULED") == "SCHEDULED")
    if added != len(worklist) or listed != len(worklist):
        raise RuntimeError(f"loaded {added} items, {listed} listed, expected {len(worklist)}")
    return elapsed, how


# --------------------------------------------------------------------------- measurements

Key = tuple[str, str, str]  # (server, kind, client)


def run_server(
    server: Server,
    queries: dict[str, list[Query]],
    clients: Sequence[str],
    warmup: int,
    echoes: int,
    results: dict[Key, Samples],
    failed: dict[str, str],
    say: Callable[[str], None],
) -> None:
    """For each client: one association, echoes, then every kind in turn (the server is running)."""
    for client_name in clients:
        if f"{server.name} {client_name}" in failed:
            continue
        make = WorklistRawClient if client_name == "raw" else WorklistPynetdicomClient
        try:
            client = make(server.port, server.aet)
        except (OSError, QueryFailure) as exc:
            failed[f"{server.name} {client_name}"] = str(exc)
            say(f"  {server.name} {client_name} FAILED: {exc}")
            continue
        try:
            samples = results.setdefault((server.name, ECHO, client_name), Samples([]))
            measure_echo(client, echoes, warmup, samples)
            for kind, qs in queries.items():
                samples = results.setdefault((server.name, kind, client_name), Samples([]))
                before = samples.wrong
                t1 = time.monotonic()
                measure(client, qs, warmup, samples)
                med = statistics.median(samples.seconds[-(len(qs) - warmup) :]) * 1e3
                wrong = samples.wrong - before
                say(
                    f"    {client_name:10} {kind:13} median {med:8.2f} ms  "
                    f"({len(qs)} queries in {time.monotonic() - t1:.1f} s"
                    + (f", {wrong} WRONG" if wrong else "")
                    + ")"
                )
            client.release()
        except (OSError, QueryFailure) as exc:
            client.abort()
            failed[f"{server.name} {client_name}"] = str(exc)
            say(f"  {server.name} {client_name} FAILED: {exc}")
            for key in [k for k in results if k[0] == server.name and k[2] == client_name]:
                del results[key]
        except BaseException:
            client.abort()
            raise


# --------------------------------------------------------------------------- report


def _ms(v: float) -> str:
    return f"{v * 1e3:,.2f}"


def render(results: dict[Key, Samples], servers: Sequence[str], clients: Sequence[str]) -> list[str]:
    out = ["Table 1: worklist C-FIND latency over one open association, ms (median and 95th percentile)", ""]
    head = ["server", "query", "matches"]
    for c in clients:
        head += [f"{c} median", f"{c} p95"]
    head += ["n", "wrong"]
    rows = [head]
    for name in servers:
        for kind in [ECHO, *KINDS]:
            first = next((results[(name, kind, c)] for c in clients if (name, kind, c) in results), None)
            if first is None or not first.seconds:
                continue
            mean = "-" if kind == ECHO else f"{first.matches / len(first.seconds):.1f}"
            row = [name, kind, mean]
            wrong = 0
            for c in clients:
                s = results.get((name, kind, c))
                if s is None or not s.seconds:
                    row += ["-", "-"]
                    continue
                row += [_ms(statistics.median(s.seconds)), _ms(percentile(s.seconds, 95))]
                wrong += s.wrong
            row += [str(len(first.seconds)), str(wrong)]
            rows.append(row)
    out += columns(rows)
    if "pacsnode" in servers and "wlmscpfs" in servers:
        out += [
            "",
            "Table 2: pacsnode vs wlmscpfs, per client: latency in ms, median (p95); "
            "speed-up = wlmscpfs / pacsnode",
            f"target: pacsnode at least {SPEEDUP_TARGET:g}x faster than wlmscpfs (median)",
            "",
        ]
        rows = [["query", "client", "pacsnode ms", "wlmscpfs ms", "speed-up"]]
        for kind in KINDS:
            for c in clients:
                a, b = results.get(("pacsnode", kind, c)), results.get(("wlmscpfs", kind, c))
                if a is None or b is None or not a.seconds or not b.seconds:
                    continue
                a_med, a_p95 = statistics.median(a.seconds), percentile(a.seconds, 95)
                b_med, b_p95 = statistics.median(b.seconds), percentile(b.seconds, 95)
                verdict = "ok" if b_med / a_med >= SPEEDUP_TARGET else "MISSED"
                rows.append(
                    [
                        kind,
                        c,
                        f"{_ms(a_med)} ({_ms(a_p95)})",
                        f"{_ms(b_med)} ({_ms(b_p95)})",
                        f"{b_med / a_med:,.1f}x ({b_p95 / a_p95:,.1f}x) {verdict}",
                    ]
                )
        out += columns(rows)
    return out


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=10_000, help="scheduled procedure steps (10000)")
    p.add_argument(
        "-s", "--servers", default=",".join(SERVERS), help="comma-separated subset of pacsnode,wlmscpfs"
    )
    p.add_argument(
        "--clients", default=",".join(CLIENTS), help="raw,pynetdicom (raw: pre-encoded PDUs on a socket)"
    )
    p.add_argument(
        "-n", "--queries", type=int, default=100, help="timed queries per kind and client for pacsnode (100)"
    )
    p.add_argument(
        "--wlmscpfs-queries",
        type=int,
        default=20,
        help="timed queries per kind and client for wlmscpfs (20: it reads every file for every query)",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed queries first, per kind and client (3)")
    p.add_argument(
        "--echoes", type=int, default=200, help="C-ECHOs timed per client, the round-trip floor (200)"
    )
    p.add_argument("-r", "--rounds", type=int, default=1, help="rounds over all servers (1); samples pooled")
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        help="items per POST when loading pacsnode: DICOM JSON arrays (500); 1 = one .wl file per request",
    )
    p.add_argument("--seed", type=int, default=SEED, help=f"item generator seed ({SEED})")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"folder of the .wl files ({DEFAULT_CACHE})"
    )
    p.add_argument("--fill-only", action="store_true", help="write the .wl files, measure nothing")
    p.add_argument("--clean", action="store_true", help="delete the cache folder, then exit")
    p.add_argument("--json", metavar="PATH", help="also write every latency as JSON to PATH ('-': stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.server_names or set(args.server_names) - set(SERVERS):
        p.error("choose servers from pacsnode, wlmscpfs")
    args.client_names = [c.strip() for c in args.clients.split(",") if c.strip()]
    if not args.client_names or set(args.client_names) - set(CLIENTS):
        p.error("choose clients from raw, pynetdicom")
    for name in ("items", "queries", "wlmscpfs_queries", "rounds", "batch", "echoes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    args.cache = args.cache.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, say = report_streams(args.json, args.quiet)

    if args.clean:
        return remove_cache(args.cache, out)
    if "wlmscpfs" in args.server_names and shutil.which("wlmscpfs") is None:
        print("error: not installed: wlmscpfs (DCMTK)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    args.cache.mkdir(parents=True, exist_ok=True)
    say(f"generating {args.items} worklist items (seed {args.seed})")
    worklist = items(args.items, args.seed)
    database = prepare(args.cache, WLM_AET, worklist, args.seed, say)
    if args.fill_only:
        return 0
    server_env = client_env(True)
    results: dict[Key, Samples] = {}
    failed: dict[str, str] = {}
    loads: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.cache))
    with terminate_as_exit():
        try:
            load_before = os.getloadavg()
            for rnd in range(args.rounds):
                say(f"round {rnd + 1}/{args.rounds}")
                for name in args.server_names:
                    if name in failed:
                        continue
                    n = args.queries if name == "pacsnode" else args.wlmscpfs_queries
                    queries = {k: make_queries(worklist, k, n + args.warmup, args.seed + rnd) for k in KINDS}
                    workdir = scratch / f"{name}-{rnd}"
                    server: Server = (
                        Server(name, PACSNODE_AET, workdir, kind="pacsnode")
                        if name == "pacsnode"
                        else Wlmscpfs(name, WLM_AET, workdir, kind="wlmscpfs", database=database)
                    )
                    try:
                        t0 = time.monotonic()
                        server.start(server_env)
                        say(f"  {name}: up in {time.monotonic() - t0:.1f} s (port {server.port})")
                        if name == "pacsnode":
                            seconds, how = load_pacsnode(
                                server.http_port, worklist, database / WLM_AET, args.batch, say
                            )
                            loads.setdefault("pacsnode", []).append({"seconds": seconds, "how": how})
                            say(
                                f"  pacsnode: {len(worklist)} items loaded over REST in {seconds:.1f} s "
                                f"({len(worklist) / seconds:,.0f} items/s; {how})"
                            )
                        run_server(
                            server, queries, args.client_names, args.warmup, args.echoes, results, failed, say
                        )
                    except (OSError, RuntimeError, TimeoutError, QueryFailure, ValueError) as exc:
                        failed[name] = str(exc)
                        say(f"  {name} FAILED: {exc}")
                        for key in [k for k in results if k[0] == name]:
                            del results[key]
                    finally:
                        server.stop()
            load_after = os.getloadavg()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(render(results, args.server_names, args.client_names)) + "\n", file=out)
    for name, why in failed.items():
        print(f"{name}: FAILED: {why}", file=out)
    step = ", ".join(STEP_RETURN_KEYS)
    print(
        f"{len(worklist):,} items (one Scheduled Procedure Step each) on 40 stations over 365 days; "
        "queries (Implicit VR LE), keys drawn from the items, the same sequence for both servers:\n"
        + "\n".join(f"  {k:13} {desc}" for k, desc in KINDS.items())
        + f"\n  {ECHO:13} C-ECHO on the same association: the round-trip floor"
        + f"\nreturn keys: {', '.join(TOP_RETURN_KEYS)}; in the step item: {step}"
        + "\nlatency: from sending the C-FIND-RQ to the final C-FIND-RSP; 'wrong' counts answers whose "
        "number of matches differs from the items; matches = mean per query."
        + "\npacsnode: `pacsnode serve` (SQLite index), loaded through POST /api/worklist; "
        "wlmscpfs: `wlmscpfs -dfp <folder>` (a child per association) reading the same items as .wl files.",
        file=out,
    )
    for entry in loads.get("pacsnode", []):
        rate = len(worklist) / entry["seconds"]
        print(f"pacsnode load: {entry['seconds']:.1f} s, {rate:,.0f} items/s ({entry['how']})", file=out)
    elapsed = time.perf_counter() - started
    print(
        f"\n{len(os.sched_getaffinity(0))} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {elapsed:.0f} s",
        file=out,
    )
    if args.json:
        doc = {
            "results": [
                {
                    "server": name,
                    "query": kind,
                    "client": client,
                    "seconds": s.seconds,
                    "wrong": s.wrong,
                    "matches": s.matches,
                }
                for (name, kind, client), s in results.items()
            ],
            "items": len(worklist),
            "load": loads,
            "failed": failed,
            "loadavg": {"before": load_before, "after": load_after},
            "seconds": elapsed,
        }
        write_json(args.json, doc)
    return 1 if failed or any(s.wrong for s in results.values()) else 0


if __name__ == "__main__":
    run_main(main)
