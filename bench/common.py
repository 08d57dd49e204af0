"""Helpers shared by the benchmarks: a raw C-ECHO client, server processes, free ports, rates, tables."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

ROOT = Path(__file__).resolve().parents[1]
# The project's venv (pacsnode and pynetdicom installed), else the running interpreter's.
VENV_BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin").is_dir() else Path(sys.executable).parent
LOOPBACK = "127.0.0.1"

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
IO_TIMEOUT = 10.0

# --------------------------------------------------------------------------- raw PS3.8 client

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'pacsnode/bench/echo').int}"
RELEASE_RQ = struct.pack(">BBIxxxx", 0x05, 0, 4)  # PS3.8 9.3.6
ABORT = struct.pack(">BBIxxBB", 0x07, 0, 4, 0, 0)  # PS3.8 9.3.8


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(
    called: str,
    calling: str,
    contexts: Sequence[tuple[int, str]] = ((1, VERIFICATION),),
    max_pdu: int = 16384,
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2): each (context ID, abstract syntax) with Implicit VR Little Endian."""
    proposed = b"".join(
        _item(
            0x20,
            bytes([context_id, 0, 0, 0]) + _item(0x30, sop.encode()) + _item(0x40, IMPLICIT_VR_LE.encode()),
        )
        for context_id, sop in contexts
    )
    user = _item(
        0x50,
        _item(0x51, struct.pack(">I", max_pdu))
        + _item(0x52, IMPLEMENTATION_UID.encode())
        + _item(0x55, b"PACSNODE_BENCH"),
    )
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + _item(0x10, APPLICATION_CONTEXT.encode())
        + proposed
        + user
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def c_echo_rq(message_id: int) -> bytes:
    """One P-DATA-TF holding a whole C-ECHO-RQ command set (PS3.7 9.3.5.1, Implicit VR LE)."""
    uid = VERIFICATION.encode()
    if len(uid) % 2:
        uid += b"\0"
    elements = (
        struct.pack("<HHI", 0x0000, 0x0002, len(uid))
        + uid
        + struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x0030)
        + struct.pack("<HHIH", 0x0000, 0x0110, 2, message_id & 0xFFFF)
        + struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0101)
    )
    command = struct.pack("<HHII", 0x0000, 0x0000, 4, len(elements)) + elements
    pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


class ProtocolFailure(Exception):
    """The peer refused the association, answered a failure, or broke the protocol."""


def _command_status(command: bytes) -> int:
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if (group, element) == (0x0000, 0x0900):
            return int(struct.unpack_from("<H", command, offset)[0])
        offset += length
    raise ProtocolFailure("C-ECHO-RSP without a Status")


class RawAssociation:
    """A minimal blocking requestor: whole PDUs in one send each, exact reads, nothing else."""

    def __init__(
        self,
        port: int,
        called: str,
        *,
        nodelay: bool,
        calling: str = "BENCH",
        contexts: Sequence[tuple[int, str]] = ((1, VERIFICATION),),
        max_pdu: int = 16384,
        timeout: float = IO_TIMEOUT,
    ) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.message_id = 0
        self.sock.sendall(associate_rq(called, calling, contexts, max_pdu))
        pdu_type, self.accept = self._read_pdu()  # the A-ASSOCIATE-AC's body
        if pdu_type != 0x02:
            self.sock.close()
            raise ProtocolFailure(f"association not accepted (PDU type 0x{pdu_type:02X})")

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise ProtocolFailure("connection closed by the peer")
            got += k
        return bytes(buf)

    def _read_pdu(self) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBI", self._read_exact(6))
        return pdu_type, self._read_exact(length)

    def echo(self) -> None:
        """Send one C-ECHO-RQ and check that the C-ECHO-RSP says Success."""
        self.message_id += 1
        self.sock.sendall(c_echo_rq(self.message_id))
        command = b""
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type != 0x04:
                raise ProtocolFailure(f"expected P-DATA-TF, got PDU type 0x{pdu_type:02X}")
            offset = 0
            while offset < len(body):
                (length,) = struct.unpack_from(">I", body, offset)
                header = body[offset + 5]
                command += body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if header & 0x03 == 0x03:  # command fragment, last (PS3.8 E.2)
                    status = _command_status(command)
                    if status != 0:
                        raise ProtocolFailure(f"C-ECHO status 0x{status:04X}")
                    return

    def release(self) -> None:
        """A-RELEASE-RQ, wait for A-RELEASE-RP, close."""
        try:
            self.sock.sendall(RELEASE_RQ)
            pdu_type, _ = self._read_pdu()
            if pdu_type != 0x06:
                raise ProtocolFailure(f"expected A-RELEASE-RP, got PDU type 0x{pdu_type:02X}")
        finally:
            self.sock.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(ABORT)
        self.sock.close()


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port free on every interface now (storescp and Orthanc bind all of them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One SCP process under test, in its own process group and scratch folder."""

    name: str
    aet: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path = field(init=False)
    # The program (pacsnode, storescp, orthanc, pynetdicom); empty: the same as name.
    kind: str = ""
    # Extra command-line options: pacsnode's go last, storescp's before the port.
    args: Sequence[str] = ()
    # Extra Orthanc configuration keys (override the defaults below).
    orthanc_config: dict[str, Any] = field(default_factory=dict)
    # storescp's output folder (-od); None: the scratch folder itself.
    output: Path | None = None
    http_port: int = 0

    def __post_init__(self) -> None:
        self.log = self.workdir / "server.log"
        self.kind = self.kind or self.name

    @property
    def data_dir(self) -> Path:
        """Where the server keeps what it receives."""
        if self.kind == "pacsnode":
            return self.workdir / "data"
        if self.kind == "orthanc":
            return self.workdir / "db"
        return self.output or self.workdir

    def start(self, server_env: dict[str, str], cpu: int | None = None) -> None:
        """Start the SCP (on one CPU if given) and return once it has answered one C-ECHO (bounded)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(server_env)
        argv: list[str]
        if self.kind == "pacsnode":
            # Port 0: the node binds a free port and logs it, so there is no race.
            env["COLUMNS"] = "400"  # keep Rich's log line on one line
            self.http_port = free_port()
            argv = [str(VENV_BIN / "pacsnode"), "serve", "--dicom-port", "0", "--aet", self.aet]
            argv += [
                "--host",
                LOOPBACK,
                "--data",
                str(self.data_dir),
                "--http-port",
                str(self.http_port),
                *self.args,
            ]
        elif self.kind == "storescp":
            self.port = free_port()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv = ["storescp", "-aet", self.aet, "-od", str(self.data_dir), *self.args, str(self.port)]
        elif self.kind == "orthanc":
            self.port = free_port()
            self.http_port = free_port()
            config = {
                "Name": "bench",
                "StorageDirectory": str(self.data_dir),
                "IndexDirectory": str(self.data_dir),
                "Plugins": [],
                "DicomAet": self.aet,
                "DicomPort": self.port,
                "HttpPort": self.http_port,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": False,
                **self.orthanc_config,
            }
            path = self.workdir / "orthanc.json"
            path.write_text(json.dumps(config, indent=2))
            argv = ["/usr/sbin/Orthanc", str(path)]
        elif self.kind == "pynetdicom":
            self.port = free_port()
            argv = [str(VENV_BIN / "python"), "-m", "pynetdicom", "echoscp", "-q", "-aet", self.aet]
            argv += ["-ba", LOOPBACK, *self.args, str(self.port)]
        else:
            raise ValueError(self.kind)
        with self.log.open("wb") as logf:
            if cpu is not None:  # taskset, so that every thread the server starts inherits the mask
                argv = ["taskset", "-c", str(cpu), *argv]
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        if self.kind == "pacsnode":
            self.port = self._port_from_log(deadline)
        self._wait_ready(deadline)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def _port_from_log(self, deadline: float) -> int:
        pattern = re.compile(r"listening for DICOM on [^\s:]+:(\d+)")
        while time.monotonic() < deadline:
            found = pattern.search(self.log.read_text(errors="replace"))
            if found:
                return int(found.group(1))
            self._check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not log 'listening' within {STARTUP_TIMEOUT:.0f} s")

    def _wait_ready(self, deadline: float) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                assoc = RawAssociation(self.port, self.aet, nodelay=True)
                assoc.echo()
                assoc.release()
                return
            except (OSError, ProtocolFailure) as exc:
                last = exc
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer C-ECHO on port {self.port}: {last}")

    def terminate(self) -> None:
        """SIGTERM the process group (Orthanc takes seconds to stop: signal all servers, then reap)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM the process group, wait, SIGKILL it if it lingers or left anything behind."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- measurements


def user_system_seconds(stat: Path) -> tuple[float, float]:
    """User and system CPU seconds from a /proc stat file (a process's, or a thread's under task/)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), utime and stime; the text after ")" starts at field 3.
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (not its children), in seconds."""
    return sum(user_system_seconds(Path(f"/proc/{pid}/stat")))


def timed(fn: Callable[[], None]) -> float:
    """Wall-clock seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Stat:
    """Repeated measurements of one rate."""

    values: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """(best - worst) / median: above ~0.15 the machine was probably busy."""
        return (max(self.values) - min(self.values)) / self.median


Table = dict[str, dict[str, Stat]]  # server -> metric -> Stat


def client_env(nodelay: bool) -> dict[str, str]:
    """This process's environment with TCP_NODELAY=1 set (DCMTK then disables Nagle) or removed."""
    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return env


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as aligned text: first column left, others right, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so the finally blocks stop the servers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def write_json(dest: str, doc: dict[str, Any]) -> None:
    """Write a run's results as JSON: to stdout for '-', else to the file ``dest``."""
    text = json.dumps(doc, indent=2)
    if dest == "-":
        print(text)
    else:
        Path(dest).write_text(text + "\n")


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code; Ctrl-C exits 130 (main's finally has stopped the servers)."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def report_streams(json_dest: str | None, quiet: bool) -> tuple[TextIO, Callable[[str], None]]:
    """Where the report goes (stderr when the JSON takes stdout) and the progress printer (stderr)."""
    out: TextIO = sys.stderr if json_dest == "-" else sys.stdout

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return out, say


def remove_cache(cache: Path, out: TextIO) -> int:
    """--clean: delete a benchmark's data cache; the exit code."""
    shutil.rmtree(cache, ignore_errors=True)
    print(f"removed {cache}", file=out)
    return 0
