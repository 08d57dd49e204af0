"""DICOMweb benchmark (PS3.18): QIDO-RS latency, WADO-RS throughput; pacsnode vs Orthanc + DICOMweb plugin."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydicom import dcmread

from bench.common import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    VENV_BIN,
    Server,
    client_env,
    columns,
    cpu_seconds,
    report_streams,
    run_main,
    terminate_as_exit,
    write_json,
)
from bench.dicomweb.client import (
    MULTIPART_DICOM,
    Client,
    Failed,
    metadata_uids,
    multipart_parts,
    part_instance,
    study_uids,
)
from bench.dicomweb.data import DEFAULT_CACHE, CtStudy, SmallSet, ct_study, small_set
from bench.ingest.run import scratch

SERVERS = ("pacsnode-sqlite", "pacsnode-pg", "orthanc")
PACSNODES = ("pacsnode-sqlite", "pacsnode-pg")
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_CONFIG: dict[str, Any] = {
    "Plugins": [DICOMWEB_PLUGIN],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"},
    # Loading only: no fsync per file (what is measured is reading).
    "SyncStorageArea": False,
}
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
PG_URL = "postgresql://postgres@127.0.0.1/{db}"
LOAD_TIMEOUT = 900.0
LOAD_THREADS = 4
ALL_LIMIT = 50
BLOCKS = 4  # the timed requests of a kind go in this many blocks, servers taking turns
REWARM = 2  # untimed requests before each later block
# Latency kinds: name -> what is asked (the paths are drawn from the data, the same for every server).
KINDS = {
    "patient-id": "QIDO-RS /studies?PatientID=<one patient>",
    "studies-50": f"QIDO-RS /studies?limit={ALL_LIMIT}",
    "series-meta": "WADO-RS /studies/<uid>/series/<uid>/metadata of one small series",
}
# Throughput kinds, measured once per round.
BULK = {
    "wado-study": "WADO-RS /studies/<CT study>, Accept: " + MULTIPART_DICOM,
    "ct-meta": "WADO-RS /studies/<CT study>/series/<CT series>/metadata",
}
QIDO_TARGET = 3.0  # pacsnode's QIDO-RS median at least 3x faster than Orthanc's
WADO_TARGET = 1.0  # pacsnode's WADO-RS MB/s at least Orthanc's ...
WADO_AIM = 2.0  # ... aiming for twice
PART_SLACK = 1024  # bytes a part may differ from the stored file (the File Meta Information)
# Measured in the issue before the work started (Orthanc 1.10 + DICOMweb 1.7, 5,500 instances).
ISSUE_REFERENCE = (
    "QIDO /studies?PatientID= 7.7 ms median, /studies (50 results) 43 ms; "
    "WADO-RS of a 100-slice CT study (52 MB) ~80 ms, ~650 MB/s"
)

Say = Callable[[str], None]


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as c:
        c.execute(sql.encode())


# --------------------------------------------------------------------------- servers


class Source:
    """One server under test holding the data: pacsnode (``pacsnode import``, then serve) or Orthanc."""

    def __init__(self, name: str, root: Path, env: dict[str, str], files: Sequence[Path]) -> None:
        self.name = name
        self.env = env
        self.files = files  # folders (pacsnode import) / every file (Orthanc)
        self.workdir = root / name
        self.db = f"pacsnode_bench_dicomweb_{os.getpid()}" if name == "pacsnode-pg" else ""
        self.server: Server | None = None
        self.load_seconds = 0.0

    @property
    def pid(self) -> int:
        assert self.server is not None and self.server.proc is not None
        return self.server.proc.pid

    @property
    def http_port(self) -> int:
        assert self.server is not None
        return self.server.http_port

    def start(self, folders: Sequence[Path], count: int, say: Say) -> None:
        """Load the data into a fresh server, start it, wait until its DICOMweb root answers."""
        self.workdir.mkdir(parents=True)
        if self.name in PACSNODES:
            args: list[str] = []
            if self.db:
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
                _pg_admin(f'CREATE DATABASE "{self.db}"')
                config = self.workdir / "pacsnode.toml"
                config.write_text(f'[storage]\nindex_url = "{PG_URL.format(db=self.db)}"\n')
                args = ["--config", str(config)]
            server = Server(self.name, "PACSNODE", self.workdir, kind="pacsnode", args=args)
            argv = [str(VENV_BIN / "pacsnode"), "import", *args, "--data", str(server.data_dir)]
            t0 = time.perf_counter()
            done = subprocess.run(
                [*argv, *map(str, folders)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=LOAD_TIMEOUT,
                check=False,
            )
            self.load_seconds = time.perf_counter() - t0
            if done.returncode != 0:
                tail = done.stderr.decode(errors="replace")[-1500:]
                raise Failed(f"pacsnode import exit {done.returncode}: {tail}")
            self.server = server
            server.start(self.env)
        else:
            server = Server(self.name, "ORTHANC", self.workdir, kind="orthanc", orthanc_config=ORTHANC_CONFIG)
            self.server = server
            server.start(self.env)
            t0 = time.perf_counter()
            post_files(server.http_port, self.files, say)
            self.load_seconds = time.perf_counter() - t0
        wait_http(self, time.monotonic() + STARTUP_TIMEOUT)
        held = self.instances()
        if held != count:
            raise Failed(f"{self.name} holds {held} of {count} instances after loading")

    def instances(self) -> int:
        """Instances the server holds (pacsnode: its index; Orthanc: /statistics)."""
        assert self.server is not None
        if self.name in PACSNODES:
            from pacsnode.archive.index import ArchiveIndex

            url = (
                PG_URL.format(db=self.db) if self.db else f"sqlite:///{self.server.data_dir / 'index.sqlite'}"
            )
            index = ArchiveIndex(url)
            try:
                return int(index.counts().get("instances", 0))
            finally:
                index.dispose()
        import http.client

        conn = http.client.HTTPConnection(LOOPBACK, self.http_port, timeout=60)
        try:
            conn.request("GET", "/statistics")
            return int(json.loads(conn.getresponse().read())["CountInstances"])
        finally:
            conn.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.db:
            with contextlib.suppress(Exception):
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


def wait_http(source: Source, deadline: float) -> None:
    """Until the DICOMweb root answers a study search (pacsnode starts HTTP after its DICOM port)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        assert source.server is not None
        source.server._check_alive()
        client = Client(source.http_port, timeout=10)
        try:
            client.get("/studies?limit=1")
            return
        except Failed as exc:
            last = exc
            time.sleep(0.05)
        finally:
            client.close()
    raise TimeoutError(f"{source.name}: DICOMweb did not answer within {STARTUP_TIMEOUT:.0f} s: {last}")


def post_files(http_port: int, files: Sequence[Path], say: Say) -> None:
    """POST /instances (Orthanc's REST API) of every file, from a few threads."""
    import http.client

    jobs: queue.Queue[Path | None] = queue.Queue()
    for path in files:
        jobs.put(path)
    errors: list[str] = []
    done = [0] * LOAD_THREADS

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, http_port, timeout=120)
        try:
            while not errors:
                try:
                    path = jobs.get_nowait()
                except queue.Empty:
                    return
                if path is None:
                    return
                conn.request("POST", "/instances", path.read_bytes(), {"Content-Type": "application/dicom"})
                response = conn.getresponse()
                text = response.read()
                if response.status != 200:
                    errors.append(f"POST /instances {path.name}: HTTP {response.status}: {text[:300]!r}")
                    return
                done[slot] += 1
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"POST /instances: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(LOAD_THREADS)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    for t in threads:
        while t.is_alive():
            t.join(10)
            if t.is_alive():
                rate = sum(done) / (time.monotonic() - t0)
                say(f"    {sum(done):,} of {len(files):,} instances posted, {rate:,.0f}/s")
            if time.monotonic() - t0 > LOAD_TIMEOUT:
                errors.append(f"loading took more than {LOAD_TIMEOUT:.0f} s")
                break
    if errors:
        raise Failed(errors[0])


# --------------------------------------------------------------------------- what is asked


@dataclass(frozen=True)
class Request:
    path: str
    expected: int  # matches (QIDO) or instances (metadata)


def make_requests(small: SmallSet, kind: str, n: int, seed: int) -> list[Request]:
    """n requests of one kind, keys drawn from the data with a seeded generator."""
    rng = random.Random(f"{seed}-{kind}")
    studies_of: dict[str, int] = {}
    for study in small.studies:
        studies_of[study.patient.id] = studies_of.get(study.patient.id, 0) + 1
    patients = sorted(studies_of)
    series = [(st.uid, se.uid) for st in small.studies for se in st.series if small.series_counts[se.uid]]
    total = len(small.studies) + 1
    out = []
    for _ in range(n):
        if kind == "patient-id":
            pid = rng.choice(patients)
            out.append(Request(f"/studies?PatientID={pid}", studies_of[pid]))
        elif kind == "studies-50":
            out.append(Request(f"/studies?limit={ALL_LIMIT}", min(ALL_LIMIT, total)))
        elif kind == "series-meta":
            st, se = rng.choice(series)
            out.append(Request(f"/studies/{st}/series/{se}/metadata", small.series_counts[se]))
        else:
            raise ValueError(kind)
    return out


def answer_count(body: bytes, status: int) -> int:
    """Matches (QIDO-RS) or instances (metadata) in a DICOM JSON answer."""
    if status == 204 or not body:
        return 0
    items: list[Any] = json.loads(body)
    return len(items)


# --------------------------------------------------------------------------- correctness guard


def check_qido(sources: Sequence[Source], small: SmallSet, ct: CtStudy, say: Say) -> None:
    """Every server answers the same StudyInstanceUIDs, those of the data, for every patient and /studies."""
    expected: dict[str, set[str]] = {ct.patient_id: {ct.study_uid}}
    for study in small.studies:
        expected.setdefault(study.patient.id, set()).add(study.uid)
    everything = {uid for uids in expected.values() for uid in uids}
    for source in sources:
        client = Client(source.http_port)
        try:
            for pid, uids in expected.items():
                got = study_uids(client.get(f"/studies?PatientID={pid}"))
                if sorted(got) != sorted(uids):
                    raise Failed(f"/studies?PatientID={pid}: {len(got)} studies, expected {sorted(uids)}")
            got = study_uids(client.get(f"/studies?limit={ALL_LIMIT}"))
            if len(everything) <= ALL_LIMIT and set(got) != everything:
                raise Failed(
                    f"/studies?limit={ALL_LIMIT}: {len(got)} studies, not the {len(everything)} held"
                )
            if len(got) != min(ALL_LIMIT, len(everything)) or len(set(got)) != len(got):
                raise Failed(f"/studies?limit={ALL_LIMIT}: {len(got)} studies ({len(set(got))} distinct)")
        finally:
            client.close()
    say(f"  QIDO-RS: every server answers the same studies for {len(expected)} patients and /studies")


@dataclass
class WadoCheck:
    parts: int
    bytes: int  # the whole multipart body
    part_bytes: int  # the parts' bodies (Part 10 files)
    max_diff: int  # the largest |part - stored file| in bytes
    headers: dict[str, str]


def check_wado(source: Source, ct: CtStudy, stored: dict[str, tuple[int, str]]) -> WadoCheck:
    """One WADO-RS of the CT study, parsed: every instance once, as stored (size within PART_SLACK)."""
    client = Client(source.http_port)
    try:
        reply = client.get(f"/studies/{ct.study_uid}", MULTIPART_DICOM)
        parts = multipart_parts(reply)
        seen: set[str] = set()
        max_diff = 0
        for part in parts:
            uid, syntax = part_instance(part)
            if uid not in stored:
                raise Failed(f"WADO-RS: part with SOPInstanceUID {uid} not in the study")
            if uid in seen:
                raise Failed(f"WADO-RS: instance {uid} sent twice")
            seen.add(uid)
            size, stored_syntax = stored[uid]
            if syntax != stored_syntax:
                raise Failed(f"WADO-RS: {uid} in {syntax}, stored as {stored_syntax}")
            max_diff = max(max_diff, abs(len(part) - size))
        if len(parts) != len(stored):
            raise Failed(f"WADO-RS: {len(parts)} parts for {len(stored)} instances")
        if max_diff > PART_SLACK:
            raise Failed(f"WADO-RS: a part differs from its stored file by {max_diff} bytes")
        meta = client.get(f"/studies/{ct.study_uid}/series/{ct.series_uid}/metadata")
        if sorted(metadata_uids(meta)) != sorted(stored):
            raise Failed("WADO-RS metadata of the CT series: not the series' instances")
        return WadoCheck(len(parts), len(reply.body), sum(map(len, parts)), max_diff, reply.headers)
    finally:
        client.close()


# --------------------------------------------------------------------------- measurements


@dataclass
class Samples:
    """Latencies (or round times) of one (server, kind)."""

    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # server CPU seconds per request
    bytes: list[int] = field(default_factory=list)  # response body bytes
    client_cpu: list[float] = field(default_factory=list)  # this process's CPU seconds per request
    wrong: int = 0


Key = tuple[str, str]  # (server, kind)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def measure_latency(
    source: Source, client: Client, warm: Sequence[Request], timed: Sequence[Request], s: Samples
) -> None:
    """The ``warm`` requests untimed, then the ``timed`` ones one after the other; answers counted after."""
    for r in warm:
        client.get(r.path)
    cpu0 = cpu_seconds(source.pid)
    replies = [client.get(r.path) for r in timed]
    per = (cpu_seconds(source.pid) - cpu0) / len(timed)
    for r, reply in zip(timed, replies, strict=True):
        s.seconds.append(reply.seconds)
        s.bytes.append(len(reply.body))
        s.cpu.append(per)
        if answer_count(reply.body, reply.status) != r.expected:
            s.wrong += 1


def measure_bulk(source: Source, client: Client, kind: str, ct: CtStudy, s: Samples) -> None:
    """One WADO-RS of the CT study (read in 1 MiB pieces and dropped), or its series metadata."""
    cpu0, mine0 = cpu_seconds(source.pid), time.process_time()
    if kind == "wado-study":
        got, seconds, _ = client.drain(f"/studies/{ct.study_uid}", MULTIPART_DICOM)
    else:
        reply = client.get(f"/studies/{ct.study_uid}/series/{ct.series_uid}/metadata")
        got, seconds = len(reply.body), reply.seconds
    s.cpu.append(cpu_seconds(source.pid) - cpu0)
    s.client_cpu.append(time.process_time() - mine0)
    s.seconds.append(seconds)
    s.bytes.append(got)


# --------------------------------------------------------------------------- report


def _ms(v: float) -> str:
    return f"{v * 1e3:,.2f}"


def _med_best(values: Sequence[float], fmt: str, best: Callable[[Sequence[float]], float]) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(best(values), fmt)})"


def _mbps(s: Samples) -> list[float]:
    return [b / 1e6 / t for b, t in zip(s.bytes, s.seconds, strict=True)]


def render(
    results: dict[Key, Samples], names: Sequence[str], checks: dict[str, WadoCheck], ct: CtStudy, rounds: int
) -> list[str]:
    out = ["Table 1: latency over one kept-alive HTTP connection, ms: median and 95th percentile", ""]
    rows = [["server", "request", "n", "median", "p95", "min", "answer kB", "server CPU ms", "wrong"]]
    for name in names:
        for kind in KINDS:
            s = results.get((name, kind))
            if s is None or not s.seconds:
                continue
            rows.append(
                [
                    name,
                    kind,
                    str(len(s.seconds)),
                    _ms(statistics.median(s.seconds)),
                    _ms(percentile(s.seconds, 95)),
                    _ms(min(s.seconds)),
                    f"{statistics.median(s.bytes) / 1e3:,.1f}",
                    _ms(statistics.median(s.cpu)),
                    str(s.wrong),
                ]
            )
    out += columns(rows)

    how = "median (best) of the rounds" if rounds > 1 else "one round"
    mb = ct.dataset.bytes / 1e6
    out += [
        "",
        f"Table 2: the {ct.dataset.count}-instance CT study ({mb:,.0f} MB stored); {how}",
        "",
    ]
    rows = [["server", "request", "MB", "seconds", "MB/s", "server CPU s", "client CPU s"]]
    for name in names:
        for kind in BULK:
            s = results.get((name, kind))
            if s is None or not s.seconds:
                continue
            rows.append(
                [
                    name,
                    kind,
                    f"{statistics.median(s.bytes) / 1e6:,.1f}",
                    _med_best(s.seconds, ".3f", min),
                    _med_best(_mbps(s), ",.0f", max) if kind == "wado-study" else "-",
                    f"{statistics.median(s.cpu):.2f}",
                    f"{statistics.median(s.client_cpu):.2f}",
                ]
            )
    out += columns(rows)

    orthanc = "orthanc" if "orthanc" in names else None
    pacs = [n for n in names if n in PACSNODES]
    if orthanc and pacs:
        out += [
            "",
            "pacsnode vs Orthanc: speed-up = Orthanc's time / pacsnode's (for MB/s: pacsnode / Orthanc)",
            f"targets: QIDO-RS median >= {QIDO_TARGET:g}x faster; WADO-RS MB/s >= {WADO_TARGET:g}x, "
            f"aim {WADO_AIM:g}x",
            "",
        ]
        rows = [["pacsnode", "metric", "pacsnode", "orthanc", "speed-up", "verdict"]]
        for name in pacs:
            for kind in KINDS:
                a, b = results.get((name, kind)), results.get((orthanc, kind))
                if a is None or b is None or not a.seconds or not b.seconds:
                    continue
                for stat, fn in (("median", statistics.median), ("p95", lambda v: percentile(v, 95))):
                    x, y = fn(a.seconds), fn(b.seconds)
                    verdict = "-"
                    if kind != "series-meta" and stat == "median":
                        verdict = "ok" if y / x >= QIDO_TARGET else "MISSED"
                    rows.append([name, f"{kind} {stat} ms", _ms(x), _ms(y), f"{y / x:.2f}x", verdict])
            for kind in BULK:
                a, b = results.get((name, kind)), results.get((orthanc, kind))
                if a is None or b is None or not a.seconds or not b.seconds:
                    continue
                if kind == "wado-study":
                    x, y = statistics.median(_mbps(a)), statistics.median(_mbps(b))
                    ratio = x / y
                    if ratio >= WADO_AIM:
                        verdict = f"ok, aim {WADO_AIM:g}x met"
                    elif ratio >= WADO_TARGET:
                        verdict = f"ok (aim {WADO_AIM:g}x not met)"
                    else:
                        verdict = "MISSED"
                    rows.append([name, "wado-study MB/s", f"{x:,.0f}", f"{y:,.0f}", f"{ratio:.2f}x", verdict])
                else:
                    x, y = statistics.median(a.seconds), statistics.median(b.seconds)
                    rows.append([name, f"{kind} s", f"{x:.3f}", f"{y:.3f}", f"{y / x:.2f}x", "-"])
        out += columns(rows)
    if checks:
        out += [""]
        for name, c in checks.items():
            how_sent = "Transfer-Encoding: " + c.headers.get("transfer-encoding", "-")
            if "content-length" in c.headers:
                how_sent = "Content-Length"
            out.append(
                f"{name}: WADO-RS {c.parts} parts, body {c.bytes:,} bytes (parts {c.part_bytes:,}; stored "
                f"{ct.dataset.bytes:,}; largest part-file difference {c.max_diff} bytes), {how_sent}, "
                f"Connection: {c.headers.get('connection', '-')}"
            )
    return out


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "-s",
        "--servers",
        default="pacsnode-sqlite,orthanc",
        help=f"comma-separated subset of {','.join(SERVERS)} (pacsnode-sqlite,orthanc)",
    )
    p.add_argument(
        "--pg", action="store_true", help="also pacsnode with its index in PostgreSQL (pacsnode-pg)"
    )
    p.add_argument(
        "--studies",
        type=int,
        default=50,
        help="studies in all, the CT study included (50: /studies answers 50)",
    )
    p.add_argument(
        "--instances", type=int, default=5000, help="small 64x64 instances over the other studies (5000)"
    )
    p.add_argument("--ct-slices", type=int, default=500, help="512x512x16-bit slices of the CT study (500)")
    p.add_argument(
        "-n", "--queries", type=int, default=200, help="timed requests per latency kind and server (200)"
    )
    p.add_argument("--warmup", type=int, default=20, help="untimed requests first, per kind and server (20)")
    p.add_argument(
        "-r", "--rounds", type=int, default=5, help="WADO-RS rounds of the CT study per server (5)"
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"data cache ({DEFAULT_CACHE})")
    p.add_argument(
        "--workdir", type=Path, help="folder for the servers' temporary folders (default: the cache)"
    )
    p.add_argument(
        "--json", metavar="PATH", help="also write every measurement as JSON to PATH ('-': stdout)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.pg and "pacsnode-pg" not in names:
        names.append("pacsnode-pg")
    if not names or set(names) - set(SERVERS):
        p.error(f"choose servers from {', '.join(SERVERS)}")
    args.server_names = [n for n in SERVERS if n in names]
    if args.studies < 2 or args.instances < args.studies - 1 or args.ct_slices < 1:
        p.error("--studies must be at least 2, --instances at least --studies - 1, --ct-slices at least 1")
    if args.queries < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--queries and --rounds must be at least 1, --warmup at least 0")
    args.cache = args.cache.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, say = report_streams(args.json, args.quiet)

    if "orthanc" in args.server_names:
        missing = [p for p in (ORTHANC, DICOMWEB_PLUGIN) if not Path(p).exists()]
        if missing:
            print(f"error: not installed: {', '.join(missing)}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    small = small_set(args.studies - 1, args.instances, args.cache, say)
    ct = ct_study(args.ct_slices, args.cache, say)
    stored: dict[str, tuple[int, str]] = {}
    for path in ct.dataset.files():
        ds = dcmread(path, stop_before_pixels=True)
        stored[str(ds.SOPInstanceUID)] = (path.stat().st_size, str(ds.file_meta.TransferSyntaxUID))
    folders = [small.root, *ct.dataset.parts()]
    files = [*small.files(), *ct.dataset.files()]
    count = small.count + ct.dataset.count
    env = client_env(True)
    results: dict[Key, Samples] = {}
    checks: dict[str, WadoCheck] = {}
    failed: dict[str, str] = {}
    loads: dict[str, float] = {}
    load_before = os.getloadavg()
    with scratch(args.workdir, args.cache, "dicomweb-") as root, terminate_as_exit():
        sources: dict[str, Source] = {}
        clients: dict[str, Client] = {}
        try:
            for name in args.server_names:
                source = Source(name, root, env, files)
                sources[name] = source
                say(f"loading {count:,} instances into {name}")
                try:
                    source.start(folders, count, say)
                    loads[name] = source.load_seconds
                    say(f"  {name}: loaded in {source.load_seconds:.1f} s, HTTP port {source.http_port}")
                except (OSError, RuntimeError, TimeoutError, Failed, subprocess.SubprocessError) as exc:
                    failed[name] = f"start/load: {exc}"
                    say(f"  {name} FAILED: {exc}")
                    source.stop()
            live = [n for n in args.server_names if n not in failed]
            say("correctness")
            try:
                check_qido([sources[n] for n in live], small, ct, say)
            except Failed as exc:
                failed["qido-check"] = str(exc)
                say(f"  QIDO-RS check FAILED: {exc}")
            for name in live:
                try:
                    checks[name] = check_wado(sources[name], ct, stored)
                    c = checks[name]
                    say(f"  WADO-RS {name}: {c.parts} parts, {c.bytes:,} bytes, parts within {c.max_diff} B")
                except Failed as exc:
                    failed[name] = f"WADO-RS check: {exc}"
                    say(f"  WADO-RS check {name} FAILED: {exc}")
            live = [n for n in live if n not in failed]
            clients = {n: Client(sources[n].http_port) for n in live}
            # Latency: kind by kind; the timed requests of a kind go in BLOCKS blocks, server after
            # server, the order turning each block, so that a burst of load from elsewhere tends to
            # hit every server alike.  Each server has its own kept-alive connection; a block starts
            # with REWARM untimed requests (Orthanc closes a connection idle for a second).
            for k, kind in enumerate(KINDS):
                n = args.queries if kind != "series-meta" else max(1, args.queries // 4)
                reqs = make_requests(small, kind, n + args.warmup, seed=0)
                warm, timed = reqs[: args.warmup], reqs[args.warmup :]
                step = -(-len(timed) // BLOCKS)
                for b, start in enumerate(range(0, len(timed), step)):
                    turn = (k + b) % len(live) if live else 0
                    for name in live[turn:] + live[:turn]:
                        if name in failed:
                            continue
                        s = results.setdefault((name, kind), Samples())
                        first = warm if b == 0 else reqs[:REWARM]
                        try:
                            measure_latency(
                                sources[name], clients[name], first, timed[start : start + step], s
                            )
                        except Failed as exc:
                            failed[name] = f"{kind}: {exc}"
                            say(f"  {name} {kind} FAILED: {exc}")
                for name in live:
                    s = results.get((name, kind), Samples())
                    if name not in failed and s.seconds:
                        say(
                            f"  {name:16} {kind:12} median {_ms(statistics.median(s.seconds)):>8} ms  "
                            f"p95 {_ms(percentile(s.seconds, 95)):>8} ms  wrong {s.wrong}"
                        )
            # Throughput: per round, every server once (order turning), WADO-RS then the CT metadata;
            # round 0 is an untimed warm-up.
            for rnd in range(args.rounds + 1):
                say(f"round {rnd}/{args.rounds}" + (" (warm-up)" if rnd == 0 else ""))
                now = [n for n in live if n not in failed]
                order = now[rnd % len(now) :] + now[: rnd % len(now)] if now else []
                for name in order:
                    for kind in BULK:
                        s = results.setdefault((name, kind), Samples()) if rnd else Samples()
                        try:
                            measure_bulk(sources[name], clients[name], kind, ct, s)
                        except Failed as exc:
                            failed[name] = f"{kind}: {exc}"
                            say(f"  {name} {kind} FAILED: {exc}")
                            break
                        if kind == "wado-study":
                            expect = checks[name].bytes
                            if s.bytes[-1] != expect:
                                failed[name] = f"WADO-RS: {s.bytes[-1]:,} bytes, the check read {expect:,}"
                                break
                            say(f"  {name:16} {kind:12} {s.seconds[-1]:.3f} s  {_mbps(s)[-1]:,.0f} MB/s")
                        else:
                            say(f"  {name:16} {kind:12} {s.seconds[-1]:.3f} s")
        finally:
            for client in clients.values():
                client.close()
            connects = {n: (c.connects, c.stale) for n, c in clients.items()}
            for source in sources.values():
                source.stop()
    load_after = os.getloadavg()
    for key in [k for k in results if k[0] in failed]:
        del results[key]
    names = [n for n in args.server_names if n not in failed]
    print("\n".join(render(results, names, checks, ct, args.rounds)) + "\n", file=out)
    print(
        "Requests (the same sequence for every server):\n"
        + "\n".join(f"  {k:12} {desc}" for k, desc in {**KINDS, **BULK}.items())
        + "\nlatency: from sending the request to the last byte of the answer (http.client, Accept-Encoding: "
        "identity); server CPU: user+system\nCPU time of the server process over the timed requests / "
        "requests; wrong: answers whose number of matches differs from the data.\nwado-study: the answer "
        "read in 1 MiB pieces into one buffer and dropped; MB = 10^6 bytes of the multipart body.\n"
        "Connections opened per server (1: keep-alive held throughout; in brackets: kept-alive ones found "
        "closed by the server when used): "
        + ", ".join(f"{n} {c} ({stale})" for n, (c, stale) in connects.items())
        + ".\nData: "
        f"{small.count:,} instances of 64x64x16 bits in {len(small.studies)} studies of "
        f"{len({s.patient.id for s in small.studies})} patients ({small.bytes / 1e6:,.0f} MB) + the CT "
        "study, "
        f"{ct.dataset.count} slices 512x512x16 bits ({ct.dataset.bytes / 1e6:,.0f} MB), Explicit VR LE; "
        "loaded with pacsnode import / Orthanc POST /instances: "
        + ", ".join(f"{n} {s:.1f} s" for n, s in loads.items())
        + f".\nThe issue's reference (before): {ISSUE_REFERENCE}.",
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
            "data": {
                "small_instances": small.count,
                "small_bytes": small.bytes,
                "studies": len(small.studies) + 1,
                "ct_instances": ct.dataset.count,
                "ct_bytes": ct.dataset.bytes,
            },
            "results": [
                {
                    "server": n,
                    "kind": kind,
                    "seconds": s.seconds,
                    "bytes": s.bytes,
                    "server_cpu_seconds": s.cpu,
                    "client_cpu_seconds": s.client_cpu,
                    "wrong": s.wrong,
                }
                for (n, kind), s in results.items()
            ],
            "wado_checks": {n: vars(c) for n, c in checks.items()},
            "connections": connects,
            "load_seconds": loads,
            "failed": failed,
            "loadavg": {"before": load_before, "after": load_after},
            "seconds": elapsed,
        }
        write_json(args.json, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
