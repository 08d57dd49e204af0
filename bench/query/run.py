"""C-FIND latency benchmark (PS3.4 C.4.1): pacsnode (SQLite, PostgreSQL) at 10k, 100k, 1M vs Orthanc."""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydicom.dataset import Dataset

from bench.common import (
    Server,
    client_env,
    columns,
    report_streams,
    run_main,
    terminate_as_exit,
    write_json,
)
from bench.query.client import (
    PynetdicomClient,
    Query,
    QueryFailure,
    RawClient,
    Samples,
    measure,
    measure_echo,
)
from bench.query.corpus import PER_STUDY, Study, study_list
from bench.query.fill import (
    drop_pg_caches,
    iter_sizes,
    prepare_orthanc,
    prepare_pacsnode,
    size_label,
)

DEFAULT_CACHE = Path(__file__).resolve().parent / ".data"
BACKENDS = {"sqlite": "pacsnode-sqlite", "postgresql": "pacsnode-pg"}
CALLING_AET = "BENCHQUERY"
# Orthanc answers C-FIND only to AEs it knows (its default DicomAlwaysAllowFind is false).
_ORTHANC_BASE = {"DicomModalities": {CALLING_AET: [CALLING_AET, "127.0.0.1", 104]}}
ORTHANCS: dict[str, dict[str, Any]] = {
    # Orthanc as installed: StorageAccessOnFind "Always" (may read files to answer).
    "orthanc": _ORTHANC_BASE,
    # Orthanc answering from its database only: its fastest C-FIND mode.
    "orthanc-dbonly": {**_ORTHANC_BASE, "StorageAccessOnFind": "Never"},
}
CLIENTS = ("raw", "pynetdicom")
# Kind -> (level, description).  date-N: a StudyDate range holding N studies; /counts: the
# same query asking for the computed attributes (PS3.4 C.6.1.1.3) as well as the plain keys.
KINDS: dict[str, tuple[str, str]] = {
    "patient-id": ("STUDY", "PatientID=<one patient>"),
    "name-prefix": ("STUDY", "PatientName=<FAMILY>^<G>* (prefix wildcard)"),
    "date-10": ("STUDY", "StudyDate=<from>-<to> holding 10 studies"),
    "date-50": ("STUDY", "StudyDate=<from>-<to> holding 50 studies"),
    "series": ("SERIES", "StudyInstanceUID=<one study>: its 4 series"),
    "patient-id/counts": ("STUDY", "patient-id, also asking ModalitiesInStudy and the study's counts"),
    "series/counts": ("SERIES", "series, also asking NumberOfSeriesRelatedInstances"),
}
ECHO = "echo"
SPEEDUP_TARGET = 3.0  # pacsnode at least 3x faster than Orthanc at the comparison size
GROWTH_TARGET = 1.5  # study-level median at 1M no more than 1.5x that at 10k
# Attributes every server keeps in its index (for Orthanc: its "main DICOM tags").
STUDY_RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
)
SERIES_RETURN_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")
# Computed attributes: pacsnode keeps them up to date at ingest; Orthanc counts on request.
STUDY_COUNT_KEYS = ("ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_COUNT_KEYS = ("NumberOfSeriesRelatedInstances",)


# --------------------------------------------------------------------------- queries


def _identifier(level: str, keys: dict[str, str], counts: bool = False) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    wanted: tuple[str, ...] = STUDY_RETURN_KEYS if level == "STUDY" else SERIES_RETURN_KEYS
    if counts:
        wanted += STUDY_COUNT_KEYS if level == "STUDY" else SERIES_COUNT_KEYS
    for keyword in wanted:
        setattr(ds, keyword, "")
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def kinds_for(studies: Sequence[Study]) -> list[str]:
    """The query kinds that make sense for a corpus: a date range of N studies needs 2N of them."""
    return [k for k in KINDS if not k.startswith("date-") or len(studies) >= 2 * int(k.split("-")[1])]


def make_queries(studies: Sequence[Study], kind: str, n: int, seed: int) -> list[Query]:
    """n queries of one kind with keys drawn from the corpus, and the matches each must have."""
    rng = random.Random(f"{seed}-{kind}")
    out = []
    if kind.startswith("date-"):
        want = int(kind.split("-")[1])
        dates = sorted(s.date for s in studies)
        for _ in range(n):
            j = rng.randrange(len(dates) - want + 1)
            lo, hi = dates[j], dates[j + want - 1]
            expected = sum(1 for d in dates if lo <= d <= hi)
            out.append(Query(kind, _identifier("STUDY", {"StudyDate": f"{lo}-{hi}"}), expected))
        return out
    counts = kind.endswith("/counts")
    for _ in range(n):
        study = rng.choice(studies)
        if kind.startswith("patient-id"):
            pid = study.patient.id
            expected = sum(1 for s in studies if s.patient.id == pid)
            out.append(Query(kind, _identifier("STUDY", {"PatientID": pid}, counts), expected))
        elif kind == "name-prefix":
            family, given = study.patient.name.split("^")
            prefix = f"{family}^{given[0]}"
            expected = sum(1 for s in studies if s.patient.name.startswith(prefix))
            out.append(Query(kind, _identifier("STUDY", {"PatientName": prefix + "*"}), expected))
        elif kind.startswith("series"):
            keys = {"StudyInstanceUID": study.uid}
            out.append(Query(kind, _identifier("SERIES", keys, counts), len(study.series)))
        else:
            raise ValueError(kind)
    return out


# --------------------------------------------------------------------------- measurements


@dataclass
class Target:
    """One server holding one corpus: pacsnode on a backend, or an Orthanc variant."""

    name: str  # pacsnode-sqlite, pacsnode-pg, orthanc, orthanc-dbonly
    size: int
    folder: Path
    args: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name}@{size_label(self.size)}"

    def server(self) -> Server:
        if self.name in ORTHANCS:
            config = ORTHANCS[self.name]
            return Server(self.name, "ORTHANC", self.folder, kind="orthanc", orthanc_config=config)
        return Server(self.name, "PACSNODE", self.folder, kind="pacsnode", args=self.args)


Key = tuple[str, int, str, str]  # (server, size, kind, client)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _reporter(say: Any, kind: str, wrong_before: int) -> Any:
    """Print the first two wrong answers of a kind."""
    seen = [0]

    def on_wrong(q: Query, got: int) -> None:
        seen[0] += 1
        if seen[0] <= 2:
            keys = ", ".join(f"{e.keyword}={e.value}" for e in q.identifier if e.value not in ("", None))
            say(f"    wrong answer ({kind}: {keys}): {got} matches, the corpus has {q.expected}")

    return on_wrong


def run_target(
    target: Target,
    queries: dict[str, list[Query]],
    clients: Sequence[str],
    warmup: int,
    echoes: int,
    results: dict[Key, Samples],
    failed: dict[str, str],
    server_env: dict[str, str],
    say: Any,
) -> None:
    """Start the server, then for each client: one association, echoes, every kind in turn.

    A client that fails is noted in ``failed`` as "<server>@<size> <client>" and its samples of
    this server are dropped; the other client still runs.
    """
    server = target.server()
    try:
        t0 = time.monotonic()
        server.start(server_env)
        say(f"  {target.label}: up in {time.monotonic() - t0:.1f} s (port {server.port})")
        for client_name in clients:
            if f"{target.label} {client_name}" in failed:
                continue
            try:
                _run_client(target, server, client_name, queries, warmup, echoes, results, say)
            except (OSError, QueryFailure) as exc:
                failed[f"{target.label} {client_name}"] = str(exc)
                say(f"  {target.label} {client_name} FAILED: {exc}")
                for key in [
                    k for k in results if k[:2] == (target.name, target.size) and k[3] == client_name
                ]:
                    del results[key]
    finally:
        server.stop()


def _run_client(
    target: Target,
    server: Server,
    client_name: str,
    queries: dict[str, list[Query]],
    warmup: int,
    echoes: int,
    results: dict[Key, Samples],
    say: Any,
) -> None:
    client = (RawClient if client_name == "raw" else PynetdicomClient)(server.port, server.aet)
    try:
        samples = results.setdefault((target.name, target.size, ECHO, client_name), Samples([]))
        measure_echo(client, echoes, warmup, samples)
        for kind, qs in queries.items():
            samples = results.setdefault((target.name, target.size, kind, client_name), Samples([]))
            t1 = time.monotonic()
            measure(client, qs, warmup, samples, _reporter(say, kind, samples.wrong))
            med = statistics.median(samples.seconds[-(len(qs) - warmup) :]) * 1e3
            say(
                f"    {client_name:10} {kind:17} median {med:7.2f} ms  "
                f"({len(qs)} queries in {time.monotonic() - t1:.1f} s)"
            )
        client.release()
    except BaseException:
        client.abort()
        raise


# --------------------------------------------------------------------------- report


def _ms(v: float) -> str:
    return f"{v * 1e3:,.2f}"


def render(
    results: dict[Key, Samples],
    targets: Sequence[Target],
    clients: Sequence[str],
    compare: int,
    failed: dict[str, str],
) -> list[str]:
    out = ["Table 1: C-FIND latency over one open association, ms (median and 95th percentile)", ""]
    head = ["size", "server", "query", "level", "matches"]
    for c in clients:
        head += [f"{c} median", f"{c} p95"]
    head += ["n", "wrong"]
    rows = [head]
    kinds = [ECHO, *KINDS]
    for t in targets:
        for kind in kinds:
            first = results.get((t.name, t.size, kind, clients[0]))
            if first is None or not first.seconds:
                continue
            level = "-" if kind == ECHO else KINDS[kind][0]
            mean = "-" if kind == ECHO else f"{first.matches / len(first.seconds):.1f}"
            row = [size_label(t.size), t.name, kind, level, mean]
            wrong = 0
            for c in clients:
                s = results.get((t.name, t.size, kind, c))
                if s is None or not s.seconds:
                    row += ["-", "-"]
                    continue
                row += [_ms(statistics.median(s.seconds)), _ms(percentile(s.seconds, 95))]
                wrong += s.wrong
            row += [str(len(first.seconds)), str(wrong)]
            rows.append(row)
    out += columns(rows)

    main = clients[0]
    pacs = [n for n in BACKENDS.values() if any(t.name == n and t.size == compare for t in targets)]
    orth = [n for n in ORTHANCS if any(t.name == n and t.size == compare for t in targets)]
    if pacs and orth:
        out += [
            "",
            f"Table 2: at {size_label(compare)} instances, pacsnode vs Orthanc ({main} client): "
            "latency in ms, median (p95); speed-up = Orthanc / pacsnode",
            f"target: pacsnode at least {SPEEDUP_TARGET:g}x faster than Orthanc as installed ('orthanc')",
            "",
        ]
        head = ["query", "pacsnode", "pacsnode ms"]
        for o in orth:
            head += [f"{o} ms", f"speed-up vs {o}"]
        rows = [head]
        for kind in KINDS:
            for p in pacs:
                a = results.get((p, compare, kind, main))
                if a is None or not a.seconds:
                    continue
                a_med, a_p95 = statistics.median(a.seconds), percentile(a.seconds, 95)
                cells = [kind, p, f"{_ms(a_med)} ({_ms(a_p95)})"]
                for o in orth:
                    b = results.get((o, compare, kind, main))
                    if b is None or not b.seconds:
                        cells += ["-", "-"]
                        continue
                    b_med, b_p95 = statistics.median(b.seconds), percentile(b.seconds, 95)
                    cell = f"{b_med / a_med:.2f}x ({b_p95 / a_p95:.2f}x)"
                    if o == "orthanc":
                        cell += " ok" if b_med / a_med >= SPEEDUP_TARGET else " MISSED"
                    cells += [f"{_ms(b_med)} ({_ms(b_p95)})", cell]
                rows.append(cells)
        out += columns(rows)

    sizes = sorted({t.size for t in targets if t.name in BACKENDS.values()})
    if len(sizes) > 1:
        base = sizes[0]
        out += [
            "",
            f"Table 3: pacsnode median latency by archive size ({main} client), ms, and its ratio to "
            f"{size_label(base)}",
            f"target: study-level median at the largest size no more than {GROWTH_TARGET:g}x that at "
            f"{size_label(base)}",
            "",
        ]
        rows = [["server", "query", *(size_label(n) for n in sizes)]]
        for p in BACKENDS.values():
            for kind in KINDS:
                at = {
                    n: results[(p, n, kind, main)].seconds
                    for n in sizes
                    if (p, n, kind, main) in results and results[(p, n, kind, main)].seconds
                }
                if not at:
                    continue
                base_seconds = at.get(base)
                cells = [p, kind]
                for n in sizes:
                    secs = at.get(n)
                    if secs is None:
                        cells.append("-")
                        continue
                    med = statistics.median(secs)
                    cell = _ms(med)
                    if base_seconds is not None and n != base:
                        ratio = med / statistics.median(base_seconds)
                        cell += f" ({ratio:.2f}x"
                        if n == sizes[-1] and KINDS[kind][0] == "STUDY":
                            cell += " ok" if ratio <= GROWTH_TARGET else " MISSED"
                        cell += ")"
                    cells.append(cell)
                rows.append(cells)
        out += columns(rows)
    for name, why in failed.items():
        out += ["", f"{name}: FAILED: {why}"]
    return out


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="10k,100k,1M", help="archive sizes for pacsnode (10k,100k,1M)")
    p.add_argument(
        "--index",
        choices=("sqlite", "postgresql", "both"),
        default="sqlite",
        help="pacsnode's index back end (sqlite)",
    )
    p.add_argument(
        "--compare-size",
        default="100k",
        help="the size at which Orthanc is filled and compared with pacsnode (100k)",
    )
    p.add_argument(
        "-s",
        "--servers",
        default="pacsnode,orthanc,orthanc-dbonly",
        help="comma-separated subset of pacsnode,orthanc,orthanc-dbonly",
    )
    p.add_argument("-n", "--queries", type=int, default=200, help="timed queries per kind and client (200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed queries first, per kind and client (20)")
    p.add_argument("-r", "--rounds", type=int, default=1, help="rounds over all servers (1); samples pooled")
    p.add_argument(
        "--clients", default="raw,pynetdicom", help="raw,pynetdicom (the first one is used for the ratios)"
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache folder ({DEFAULT_CACHE})")
    p.add_argument(
        "--reuse-stale",
        action="store_true",
        help="use a cached pacsnode index even if pacsnode's archive code changed since it was built",
    )
    p.add_argument("--fill-only", action="store_true", help="build the caches, measure nothing")
    p.add_argument(
        "--clean",
        action="store_true",
        help="delete the cache folder and drop this benchmark's PostgreSQL databases, then exit",
    )
    p.add_argument("--json", metavar="PATH", help="also write every latency as JSON to PATH ('-': stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    try:
        args.size_list = sorted(set(iter_sizes(args.sizes)))
        compare = list(iter_sizes(args.compare_size))
    except ValueError:
        p.error("sizes are numbers, optionally with k or M: 10k,100k,1M")
    if len(compare) != 1:
        p.error("--compare-size takes one size")
    args.compare = compare[0]
    if any(s < PER_STUDY * 2 for s in [*args.size_list, args.compare]):
        p.error(f"every size must be at least {PER_STUDY * 2} instances")
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if set(args.server_names) - {"pacsnode", *ORTHANCS}:
        p.error("choose servers from pacsnode, orthanc, orthanc-dbonly")
    args.client_names = [c.strip() for c in args.clients.split(",") if c.strip()]
    if not args.client_names or set(args.client_names) - set(CLIENTS):
        p.error("choose clients from raw, pynetdicom")
    args.backends = ["sqlite", "postgresql"] if args.index == "both" else [args.index]
    for name in ("queries", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    args.cache = args.cache.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, say = report_streams(args.json, args.quiet)

    if args.clean:
        shutil.rmtree(args.cache, ignore_errors=True)
        try:
            dropped = f"dropped {len(drop_pg_caches())} database(s)"
        except Exception as exc:  # no PostgreSQL here: nothing to drop
            dropped = f"PostgreSQL not reachable ({exc})"
        print(f"removed {args.cache}; {dropped}", file=out)
        return 0
    if any(n in ORTHANCS for n in args.server_names) and shutil.which("/usr/sbin/Orthanc") is None:
        print("error: not installed: /usr/sbin/Orthanc", file=sys.stderr)
        return 2
    started = time.perf_counter()
    args.cache.mkdir(parents=True, exist_ok=True)
    server_env = client_env(True)
    targets: list[Target] = []
    failed: dict[str, str] = {}
    with terminate_as_exit():
        say("preparing the archives (cached in " + str(args.cache) + ")")
        if "pacsnode" in args.server_names:
            pac_sizes = sorted({*args.size_list, args.compare})
            for backend in args.backends:
                for size in pac_sizes:
                    folder, extra = prepare_pacsnode(args.cache, backend, size, say, args.reuse_stale)
                    targets.append(Target(BACKENDS[backend], size, folder, extra))
        for name in (n for n in ORTHANCS if n in args.server_names):
            folder = prepare_orthanc(args.cache, args.compare, server_env, say)
            targets.append(Target(name, args.compare, folder))
        if args.fill_only:
            return 0
        corpora = {t.size: study_list(t.size) for t in targets}
        results: dict[Key, Samples] = {}
        load_before = os.getloadavg()
        for rnd in range(args.rounds):
            say(f"round {rnd + 1}/{args.rounds}")
            for target in targets:
                if target.label in failed:
                    continue
                studies = corpora[target.size]
                n = args.queries + args.warmup
                queries = {k: make_queries(studies, k, n, seed=rnd) for k in kinds_for(studies)}
                try:
                    run_target(
                        target,
                        queries,
                        args.client_names,
                        args.warmup,
                        args.queries,
                        results,
                        failed,
                        server_env,
                        say,
                    )
                except (OSError, RuntimeError, TimeoutError) as exc:
                    failed[target.label] = str(exc)
                    say(f"  {target.label} FAILED: {exc}")
        load_after = os.getloadavg()
    for key in [k for k in results if f"{k[0]}@{size_label(k[1])}" in failed]:
        del results[key]  # the server itself failed: its partial samples mean nothing
    print("\n".join(render(results, targets, args.client_names, args.compare, failed)) + "\n", file=out)
    print(
        "Queries (Study Root, Implicit VR LE), keys drawn from the corpus, the same sequence for every "
        "server of a size:\n"
        + "\n".join(f"  {k:17} {lvl:6} {desc}" for k, (lvl, desc) in KINDS.items())
        + f"\n  {ECHO:17} {'-':6} C-ECHO on the same association: the round-trip floor"
        + f"\nSTUDY return keys: {', '.join(STUDY_RETURN_KEYS)} (/counts: + {', '.join(STUDY_COUNT_KEYS)})"
        + f"\nSERIES return keys: {', '.join(SERIES_RETURN_KEYS)} (/counts: + {', '.join(SERIES_COUNT_KEYS)})"
        + "\nlatency: from sending the C-FIND-RQ to the final C-FIND-RSP; raw = pre-encoded PDUs on a "
        "socket, pynetdicom = send_c_find;\n'wrong' counts answers whose number of matches differs "
        "from the corpus; matches = mean per query.",
        file=out,
    )
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
                    "size": size,
                    "query": kind,
                    "client": client,
                    "seconds": s.seconds,
                    "wrong": s.wrong,
                    "matches": s.matches,
                }
                for (name, size, kind, client), s in results.items()
            ],
            "failed": failed,
            "compare_size": args.compare,
            "loadavg": {"before": load_before, "after": load_after},
            "seconds": elapsed,
        }
        write_json(args.json, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
