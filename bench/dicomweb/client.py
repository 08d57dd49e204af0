"""A DICOMweb client for the benchmark: one persistent HTTP/1.1 connection, the same code for every server."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread

from bench.common import LOOPBACK

BASE = "/dicom-web"
JSON = "application/dicom+json"
# As stored: no server may transcode (Orthanc's plugin would otherwise send Explicit VR Little Endian).
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK = 1 << 20
STUDY_UID = "0020000D"
SOP_UID = "00080018"


class Failed(Exception):
    """A server answered an error, a wrong answer, or broke the protocol."""


class Connection(http.client.HTTPConnection):
    """http.client's connection, counting how often it (re)connects, with Nagle off."""

    connects = 0

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


class Client:
    """GET requests under the DICOMweb root of a server on loopback over one kept-alive connection.

    http.client reopens the connection by itself when a server closes it after an answer; ``connects``
    says how often that happened.  Headers sent: Host, Accept-Encoding: identity (http.client's own:
    no gzip from either server), Accept.
    """

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.conn = Connection(LOOPBACK, port, timeout=timeout)
        self.buffer = bytearray(CHUNK)
        self.stale = 0  # kept-alive connections found closed by the server

    @property
    def connects(self) -> int:
        return self.conn.connects

    def _send(self, path: str, accept: str) -> tuple[http.client.HTTPResponse, float]:
        """Send the request and read the status line: (response, when the request went out).

        A kept-alive connection the server closed while idle (Orthanc's KeepAliveTimeout) fails
        on first use; then the request is sent once more on a new connection, timed from there.
        """
        reused = self.conn.sock is not None
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", BASE + path, headers={"Accept": accept})
            return self.conn.getresponse(), t0
        except (ConnectionResetError, BrokenPipeError):  # RemoteDisconnected is a ConnectionResetError
            if not reused:
                raise
        self.conn.close()
        self.stale += 1
        t0 = time.perf_counter()
        self.conn.request("GET", BASE + path, headers={"Accept": accept})
        return self.conn.getresponse(), t0

    def get(self, path: str, accept: str = JSON) -> Reply:
        """The whole answer; ``seconds`` runs from sending the request to the last byte of the body."""
        try:
            response, t0 = self._send(path, accept)
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise Failed(f"GET {path}: {exc!r}") from None
        seconds = time.perf_counter() - t0
        if response.status not in (200, 204):
            raise Failed(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body, seconds)

    def drain(self, path: str, accept: str) -> tuple[int, float, dict[str, str]]:
        """Read the answer in 1 MiB pieces into one buffer and drop them: (bytes, seconds, headers)."""
        view = memoryview(self.buffer)
        got = 0
        try:
            response, t0 = self._send(path, accept)
            if response.status != 200:
                raise Failed(f"GET {path}: HTTP {response.status}: {response.read()[:300]!r}")
            while k := response.readinto(view):
                got += k
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise Failed(f"GET {path}: {exc!r}") from None
        seconds = time.perf_counter() - t0
        return got, seconds, {k.lower(): v for k, v in response.getheaders()}

    def close(self) -> None:
        self.conn.close()


def study_uids(reply: Reply) -> list[str]:
    """The StudyInstanceUIDs of a QIDO-RS study search answer (204: none)."""
    if reply.status == 204 or not reply.body:
        return []
    items = json.loads(reply.body)
    return [str(item[STUDY_UID]["Value"][0]) for item in items]


def metadata_uids(reply: Reply) -> list[str]:
    """The SOPInstanceUIDs of a WADO-RS metadata answer."""
    items: list[dict[str, Any]] = json.loads(reply.body)
    return [str(item[SOP_UID]["Value"][0]) for item in items]


def multipart_parts(reply: Reply) -> list[bytes]:
    """The bodies of a multipart/related answer (RFC 2046 5.1), by its boundary."""
    found = re.search(r'boundary="?([^";]+)"?', reply.headers.get("content-type", ""), re.I)
    if found is None:
        raise Failed(f"no boundary in Content-Type {reply.headers.get('content-type')!r}")
    delimiter = b"\r\n--" + found.group(1).encode()
    pieces = (b"\r\n" + reply.body).split(delimiter)
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):  # the close delimiter
            break
        _, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            raise Failed("a multipart part without a blank line after its headers")
        parts.append(content)
    return parts


def part_instance(part: bytes) -> tuple[str, str]:
    """(SOPInstanceUID, TransferSyntaxUID) of one application/dicom part."""
    ds = dcmread(io.BytesIO(part), stop_before_pixels=True)
    return str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)
