"""Storage Commitment benchmark (PS3.4 Annex J): N-ACTION to report, one CT study, pacsnode vs Orthanc."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydicom.dataset import Dataset

import pacsnode.cli.commit as commit_module
from bench.commitment.data import DEFAULT_CACHE, Study, generate
from bench.common import (
    LOOPBACK,
    Server,
    Stat,
    client_env,
    columns,
    cpu_seconds,
    free_port,
    remove_cache,
    report_streams,
    run_main,
    terminate_as_exit,
    write_json,
)
from bench.ingest.run import scratch
from pacsnode.archive.commitment import Reference
from pacsnode.cli.commit import CommitFailed, CommitOptions, action_information, request_commitment
from pacsnode.data.part10 import dataset_offset
from pacsnode.dimse.commands import CommandField
from pacsnode.net.loop import run_loop
from pacsnode.services.base import DimseRequest, Responder
from pacsnode.services.commitment import ALL_COMMITTED, CommitmentReportReceiver

# name -> where the report comes: pacsnode twice (default settings; same_association = false), Orthanc.
SERVERS: dict[str, str] = {
    "pacsnode-same": "same association",
    "pacsnode-new": "new association",
    "orthanc": "new association",
}
SCU_AET = "BENCHSCU"
PACSNODE_AET = "PACSNODE"
ORTHANC_AET = "ORTHANC"
ORTHANC = "/usr/sbin/Orthanc"
CLIENT_TIMEOUT = 600.0
DCMTK_TIMEOUTS = ["-to", "30", "-ta", "30", "-td", "120"]
# Server log lines worth a look: pacsnode's WARNING/ERROR, Orthanc's E lines (it logs routine news as W).
ODD_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b|^E\d{4} ")


class Failed(Exception):
    """A server did not take the study, or a commitment was not what it should be."""


# --------------------------------------------------------------------------- servers


@dataclass
class Target:
    """One server under test holding the study, and how its report must come."""

    name: str
    server: Server
    load_seconds: float = 0.0
    hashed_bytes: int = 0  # pacsnode: the bytes its check re-reads and hashes per commitment

    @property
    def mode(self) -> str:
        return SERVERS[self.name]

    @property
    def label(self) -> str:
        return "orthanc" if self.name == "orthanc" else "pacsnode"


def make_server(name: str, root: Path, listen_port: int) -> Server:
    """pacsnode with [peers.BENCHSCU] at our listener (and same_association = false for -new), or Orthanc."""
    workdir = root / name
    workdir.mkdir(parents=True)
    if name == "orthanc":
        # Orthanc reports on a new association to the modality its DicomModalities gives for our AE title.
        modalities = {SCU_AET: [SCU_AET, LOOPBACK, listen_port]}
        return Server(
            name, ORTHANC_AET, workdir, kind="orthanc", orthanc_config={"DicomModalities": modalities}
        )
    config = workdir / "pacsnode.toml"
    text = f'[peers.{SCU_AET}]\nhost = "{LOOPBACK}"\nport = {listen_port}\n'
    if name == "pacsnode-new":
        text += "\n[commitment]\nsame_association = false\n"
    config.write_text(text)
    return Server(name, PACSNODE_AET, workdir, kind="pacsnode", args=["--config", str(config)])


def store(server: Server, study: Study, env: dict[str, str]) -> float:
    """storescu of the study's folder into the server, one association: wall time (not a result)."""
    argv = ["storescu", "-aet", SCU_AET, "-aec", server.aet, "+sd", *DCMTK_TIMEOUTS]
    argv += [LOOPBACK, str(server.port), str(study.folder)]
    t0 = time.perf_counter()
    done = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=CLIENT_TIMEOUT, check=False
    )
    elapsed = time.perf_counter() - t0
    err = done.stderr.decode(errors="replace") + done.stdout.decode(errors="replace")
    if done.returncode != 0 or "E: " in err:
        raise Failed(f"storescu exit {done.returncode}: {err[-1500:]}")
    return elapsed


def pacsnode_files(data_dir: Path) -> tuple[int, int]:
    """pacsnode's stored instance files and the bytes of their data sets: what its check hashes.

    Its verifier (pacsnode.archive.commitment) seeks past the File Meta Information with the
    same dataset_offset and hashes the rest of each file.
    """
    count = hashed = 0
    for path in (data_dir / "objects").rglob("*.dcm"):
        with path.open("rb") as fp:
            head = fp.read(1024)
        count += 1
        hashed += path.stat().st_size - dataset_offset(head, path)
    return count, hashed


def orthanc_instances(server: Server) -> int:
    """The number of instances Orthanc holds (GET /statistics)."""
    url = f"http://{LOOPBACK}:{server.http_port}/statistics"
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(json.load(response)["CountInstances"])


def load(target: Target, study: Study, env: dict[str, str]) -> None:
    """Start the server, store the study into it, check that it holds every instance."""
    target.server.start(env)
    target.load_seconds = store(target.server, study, env)
    if target.label == "pacsnode":
        held, target.hashed_bytes = pacsnode_files(target.server.data_dir)
    else:
        held = orthanc_instances(target.server)
    if held != study.count:
        raise Failed(f"{target.name} holds {held} of {study.count} instances after storescu")


# --------------------------------------------------------------------------- the SCU, timed


@dataclass
class Stamps:
    """perf_counter() when the N-ACTION left (its data set built) and when the N-EVENT-REPORT came in."""

    action: float = 0.0
    report: float = 0.0


class TimedReceiver(CommitmentReportReceiver):
    """pacsnode's report receiver, noting when the (first) N-EVENT-REPORT arrives, on either association."""

    stamps: ClassVar[Stamps] = Stamps()

    def sibling(self, label: str) -> CommitmentReportReceiver:
        return TimedReceiver(label, self._waiting)

    def handle(self, request: DimseRequest, responder: Responder) -> None:
        if request.command.command_field == CommandField.N_EVENT_REPORT_RQ and not self.stamps.report:
            self.stamps.report = time.perf_counter()
        super().handle(request, responder)


def timed_action_information(transaction_uid: str, references: Sequence[Reference]) -> Dataset:
    """request_commitment's Action Information; it is encoded and sent right after this returns."""
    ds = action_information(transaction_uid, references)
    TimedReceiver.stamps.action = time.perf_counter()
    return ds


@dataclass
class Measurement:
    """One commitment: N-ACTION to N-EVENT-REPORT, the whole SCU call, what came back."""

    seconds: float
    call_seconds: float
    server_cpu: float
    same_association: bool
    committed: int
    failed: int


def commit_once(target: Target, references: list[Reference], listen_port: int, wait: float) -> Measurement:
    """One request_commitment() for the whole study, with our listener up; checks the report."""
    server = target.server
    assert server.proc is not None
    options = CommitOptions(
        LOOPBACK,
        server.port,
        calling=SCU_AET,
        called=server.aet,
        timeout=30.0,
        wait=wait,
        listen_host=LOOPBACK,
        listen_port=listen_port,
    )
    stamps = TimedReceiver.stamps = Stamps()
    cpu0 = cpu_seconds(server.proc.pid)
    with (
        mock.patch.object(commit_module, "CommitmentReportReceiver", TimedReceiver),
        mock.patch.object(commit_module, "action_information", timed_action_information),
    ):
        t0 = time.perf_counter()
        try:
            outcome = run_loop(request_commitment(references, options))
        except CommitFailed as exc:
            raise Failed(f"commit: {exc}") from None
        call = time.perf_counter() - t0
    cpu = cpu_seconds(server.proc.pid) - cpu0
    report = outcome.report
    problems = []
    if not stamps.action or not stamps.report:
        problems.append("no time stamps (pacsnode.cli.commit changed?)")
    if report.failed:
        reason, count = statistics.mode(r for _, r in report.failed), len(report.failed)
        problems.append(f"{count} failed (e.g. Failure Reason 0x{reason:04X})")
    if set(report.committed) != set(references) or len(report.committed) != len(references):
        problems.append(f"{len(report.committed)} committed of {len(references)} asked")
    if report.event_type_id != ALL_COMMITTED:
        problems.append(f"event type {report.event_type_id}")
    if outcome.same_association != (target.mode == "same association"):
        problems.append(f"report on the {report.received_on}, expected on the {target.mode}")
    if problems:
        raise Failed(f"transaction {outcome.transaction_uid}: " + "; ".join(problems))
    return Measurement(
        stamps.report - stamps.action,
        call,
        cpu,
        outcome.same_association,
        len(report.committed),
        len(report.failed),
    )


# --------------------------------------------------------------------------- report


def render(results: dict[str, list[Measurement]], targets: dict[str, Target], study: Study) -> list[str]:
    n = study.count
    out = [
        f"Storage Commitment of one {n}-instance CT study: N-ACTION sent -> N-EVENT-REPORT received, "
        "ms over the rounds",
        "",
    ]
    rows = [
        [
            "server",
            "mode",
            "instances",
            "median ms",
            "min ms",
            "instances/s",
            "whole call ms",
            "server CPU ms",
        ]
    ]
    for name, ms in results.items():
        if not ms:
            continue
        secs = [m.seconds for m in ms]
        rows.append(
            [
                targets[name].label,
                targets[name].mode,
                f"{n:,}",
                f"{statistics.median(secs) * 1e3:,.1f}",
                f"{min(secs) * 1e3:,.1f}",
                f"{n / statistics.median(secs):,.0f}",
                f"{statistics.median(m.call_seconds for m in ms) * 1e3:,.1f}",
                f"{statistics.median(m.server_cpu for m in ms) * 1e3:,.0f}",
            ]
        )
    out += columns(rows)
    orthanc = results.get("orthanc")
    pacs = [k for k in ("pacsnode-same", "pacsnode-new") if results.get(k)]
    if orthanc and pacs:
        o = Stat([n / m.seconds for m in orthanc])
        out += ["", "pacsnode / orthanc: ratio of instances/s, of the medians (of the bests)", ""]
        rows = [["pacsnode mode", "vs orthanc"]]
        for name in pacs:
            p = Stat([n / m.seconds for m in results[name]])
            rows.append([targets[name].mode, f"{p.median / o.median:.2f}x ({p.best / o.best:.2f}x)"])
        out += columns(rows)
    hashed = [
        f"{targets[k].mode}: {targets[k].hashed_bytes:,} bytes per commitment "
        f"({targets[k].hashed_bytes * len(results[k]) / 1e6:,.0f} MB in {len(results[k])} rounds), "
        f"{targets[k].hashed_bytes / 1e6 / statistics.median(m.seconds for m in results[k]):,.0f} MB/s"
        for k in pacs
    ]
    if hashed:
        out += [
            "",
            "pacsnode re-reads and SHA-256-hashes every stored file's data set (MB/s: over the median ms):",
        ]
        out += [f"  {line}" for line in hashed]
    noisy = [
        f"{k} {stat.spread:.0%}"
        for k, ms in results.items()
        if len(ms) > 1 and (stat := Stat([n / m.seconds for m in ms])).spread > 0.15
    ]
    if noisy:
        out += ["", "noisy (spread (best-worst)/median > 15%): " + ", ".join(noisy)]
    return out


def odd_lines(log: Path, limit: int = 5) -> tuple[int, list[str]]:
    """Warning and error lines of a server log: how many, and the first few."""
    if not log.is_file():
        return 0, []
    found = [line for line in log.read_text(errors="replace").splitlines() if ODD_LINE.search(line)]
    return len(found), [line[:300] for line in found[:limit]]


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "-n", "--instances", type=int, default=500, help="CT slices of 512x512x16 bits in the study (500)"
    )
    p.add_argument("-r", "--rounds", type=int, default=5, help="timed commitments per server (5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed (but checked) commitments first (1)")
    p.add_argument(
        "-s", "--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}"
    )
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for each report (300)")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"generated study cache ({DEFAULT_CACHE})"
    )
    p.add_argument(
        "--workdir", type=Path, help="folder for the servers' temporary folders (default: the cache)"
    )
    p.add_argument("--clean", action="store_true", help="delete the cache folder, then exit")
    p.add_argument(
        "--json", metavar="PATH", help="also write every measurement as JSON to PATH ('-': stdout)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.server_names or set(args.server_names) - set(SERVERS):
        p.error(f"choose servers from {', '.join(SERVERS)}")
    if args.instances < 1 or args.rounds < 1 or args.warmup < 0 or args.wait <= 0:
        p.error("--instances and --rounds must be at least 1, --warmup at least 0, --wait above 0")
    args.cache = args.cache.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, say = report_streams(args.json, args.quiet)

    if args.clean:
        return remove_cache(args.cache, out)
    missing = ["storescu"] if shutil.which("storescu") is None else []
    if "orthanc" in args.server_names and not Path(ORTHANC).exists():
        missing.append(ORTHANC)
    if missing:
        print(f"error: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    study = generate(args.instances, args.cache, say)
    for path in study.files():  # into the page cache: storescu must not wait for the disk
        path.read_bytes()
    references = [Reference(c, i) for c, i in study.references]
    env = client_env(True)  # servers and storescu with TCP_NODELAY=1, as in the other benchmarks
    listen_port = free_port()  # our listener for reports on a new association, for the whole run
    results: dict[str, list[Measurement]] = {}
    failed: dict[str, str] = {}
    odd: dict[str, tuple[int, list[str]]] = {}
    load_before = os.getloadavg()
    with scratch(args.workdir, args.cache, "commitment-") as root, terminate_as_exit():
        targets = {n: Target(n, make_server(n, root, listen_port)) for n in args.server_names}
        try:
            for name, target in targets.items():
                say(f"storing the study into {name}")
                try:
                    load(target, study, env)
                    port = target.server.port
                    say(f"  {study.count} instances in {target.load_seconds:.1f} s (port {port})")
                    for _ in range(args.warmup):
                        m = commit_once(target, references, listen_port, args.wait)
                        say(f"  warm-up: {m.seconds * 1e3:,.1f} ms")
                except (OSError, RuntimeError, TimeoutError, Failed, subprocess.SubprocessError) as exc:
                    failed[name] = str(exc)
                    say(f"  {name} FAILED: {exc}")
            # Server after server in each round, the order turning by one each round, so that the
            # runs compared are seconds apart and no server always goes first.
            live = [n for n in targets if n not in failed]
            for rnd in range(args.rounds):
                say(f"round {rnd + 1}/{args.rounds}")
                shift = rnd % len(live) if live else 0
                for name in live[shift:] + live[:shift]:
                    if name in failed:
                        continue
                    try:
                        m = commit_once(targets[name], references, listen_port, args.wait)
                    except (OSError, RuntimeError, Failed) as exc:
                        failed[name] = f"round {rnd + 1}: {exc}"
                        say(f"  {name} FAILED: {exc}")
                        continue
                    results.setdefault(name, []).append(m)
                    say(
                        f"  {name:14} {m.seconds * 1e3:9,.1f} ms  {study.count / m.seconds:7,.0f} inst/s  "
                        f"({m.committed} committed, report on the "
                        f"{'same' if m.same_association else 'new'} association)"
                    )
        finally:
            for target in targets.values():
                target.server.terminate()
            for target in targets.values():
                target.server.stop()
                odd[target.name] = odd_lines(target.server.log)
    load_after = os.getloadavg()
    for name in failed:
        results.pop(name, None)
    print("\n".join(render(results, targets, study)) + "\n", file=out)
    print(
        "ms: from the SCU's N-ACTION-RQ leaving (its data set built) to the N-EVENT-REPORT-RQ arriving, "
        "on either association;\nmedian and min of the rounds; instances/s = instances / median. "
        "whole call: request_commitment() from start to return\n(listener start, association, N-ACTION, "
        "report, release, listener stop). server CPU: user + system CPU of the server process\nover the "
        "whole call (median). The SCU is pacsnode's request_commitment (pacsnode.cli.commit), listening "
        f"for\nreports on a new association on {LOOPBACK}; every report is checked: all "
        f"{study.count} committed, none failed, event type 1,\nand it came on the association the mode says.",
        file=out,
    )
    print(
        "\nWhat is compared: pacsnode looks every instance up in its index AND re-reads and SHA-256-hashes "
        "each stored\nfile's data set against the hash recorded when it was received. Orthanc 1.10 (no "
        "plugin) hashes nothing: it looks each\nSOP Instance UID up in its database, then reads the file "
        "(from its in-memory storage cache, 128 MB by default,\nelse from disk), parses it with DCMTK and "
        "compares the SOP Class and Instance UIDs (StorageCommitmentScpJob::Lookup);\nit runs that as a job, "
        "one step per instance, and always reports on a new association. The files are in the\npage cache "
        "(just stored): neither server waits for the disk.",
        file=out,
    )
    print(
        f"\nData: {study.count} CT slices 512x512x16 bits, Explicit VR Little Endian, "
        f"{study.bytes / 1e6:,.0f} MB, one study and series, stored\nwith storescu (one association, not "
        "timed): "
        + ", ".join(f"{n} {t.load_seconds:.1f} s" for n, t in targets.items() if t.load_seconds)
        + ".",
        file=out,
    )
    for name, (count, lines) in odd.items():
        if count:
            print(f"\n{name} log: {count} warning/error line(s), first ones:", file=out)
            print("\n".join(f"  {line}" for line in lines), file=out)
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
            "study": {"count": study.count, "bytes": study.bytes},
            "results": [
                {
                    "server": targets[name].label,
                    "name": name,
                    "mode": targets[name].mode,
                    "seconds": [m.seconds for m in ms],
                    "call_seconds": [m.call_seconds for m in ms],
                    "server_cpu_seconds": [m.server_cpu for m in ms],
                    "hashed_bytes": targets[name].hashed_bytes,
                }
                for name, ms in results.items()
            ],
            "load_seconds": {n: t.load_seconds for n, t in targets.items()},
            "log_warnings": {n: {"count": c, "first": lines} for n, (c, lines) in odd.items()},
            "failed": failed,
            "loadavg": {"before": load_before, "after": load_after},
            "seconds": elapsed,
        }
        write_json(args.json, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
