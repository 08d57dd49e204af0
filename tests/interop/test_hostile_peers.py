"""Hostile peers against a running node: control characters, `../` and oversized values in AE titles, user
identities, UIDs, C-FIND keys, HTTP credentials and queries, STOW and HL7. The node answers with the
standard's refusal, keeps serving, and its log lines and audit messages stay escaped, bounded and valid."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import socket
import struct
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from authkit import quick_hash
from pacsnode.audit.message import BINARY_LIMIT, AuditSource, render, schema_path
from pacsnode.audit.syslog import UDP_MAX, syslog_message
from pacsnode.config.logsafe import MESSAGE_LIMIT, LogSafeFilter
from pacsnode.config.settings import Hl7Settings
from pacsnode.data.uids import UNCOMPRESSED_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
from pacsnode.dimse.messages import c_find_rq
from pacsnode.hl7.mllp import frame
from pacsnode.hl7.server import Hl7Server
from pacsnode.net.blocking import connect
from pacsnode.net.client import associate
from pacsnode.security.credentials import new_token, token_hash
from pacsnode.security.events import EventKind, Outcome
from pacsnode.ul.negotiation import ProposedContext, build_request
from pacsnode.ul.pdu import AssociateAC, AssociateRJ, UserIdentityRQ, encode
from peerkit import HOST, WAIT, make_instance, raw_connect, read_pdu, start_threaded_node, storage_settings

SCHEMA = etree.RelaxNG(etree.parse(schema_path()))
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"  # `pacsnode serve`'s (cli/main.py)
LINE_BOUND = MESSAGE_LIMIT + 200  # the message, its timestamp, level and logger, "…(N chars)"
RAW = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]))
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
KNOWN = "KNOWN"
BOUNDARY = "HOSTILE"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


# ---------------------------------------------------------------- what the node logs and audits


class LogLines(logging.Handler):
    """The root logger's records as `pacsnode serve` writes them (its format, the filter); waitable."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[str] = []
        self.changed = threading.Condition()
        self.setFormatter(logging.Formatter(FORMAT))
        self.addFilter(LogSafeFilter())

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        with self.changed:
            self.records.append(text)
            self.changed.notify_all()

    def mark(self) -> int:
        with self.changed:
            return len(self.records)

    def wait_for(self, text: str, mark: int) -> str:
        """The first record since ``mark`` holding ``text`` (waits for it)."""

        def found() -> str | None:
            return next((r for r in self.records[mark:] if text in r), None)

        with self.changed:
            if not self.changed.wait_for(lambda: found() is not None, WAIT):
                raise AssertionError(f"no log record with {text!r}: {[r[:300] for r in self.records[mark:]]}")
            return found() or ""

    def assert_safe(self, mark: int) -> list[str]:
        """Every line written since ``mark``: no raw control character, none over LINE_BOUND."""
        with self.changed:
            records = self.records[mark:]
        lines = [line for record in records for line in record.split("\n")]
        for line in lines:
            assert not any(c in RAW for c in line), repr(line[:300])
            assert len(line) <= LINE_BOUND, f"{len(line)} characters: {line[:200]!r}"
        return lines


class Recorder:
    """An AuditSink that test threads can wait on (events come from the node's threads)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = threading.Condition()

    def emit(self, event: Any) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def mark(self) -> int:
        with self.changed:
            return len(self.events)

    def wait(self, kind: EventKind, mark: int, test: Callable[[Any], bool] = lambda e: True) -> Any:
        """The first event of ``kind`` since ``mark`` that passes ``test`` (waits for it)."""

        def found() -> Any:
            return next((e for e in self.events[mark:] if e.kind is kind and test(e)), None)

        with self.changed:
            if not self.changed.wait_for(lambda: found() is not None, WAIT):
                raise AssertionError(f"no {kind.meaning} event: {self.events[mark:]}")
            return found()


def valid_xml(event: Any) -> str:
    """The event's audit message, checked: schema-valid, one line, no raw control character, small."""
    xml = render(event, AuditSource("PACSNODE"))
    doc = etree.fromstring(xml.encode("utf-8"))
    assert SCHEMA.validate(doc), f"{SCHEMA.error_log}\n{xml[:2000]}"
    assert not any(c in RAW for c in xml), xml[:2000]
    datagram = syslog_message(xml, at=event.at, failure=event.outcome != Outcome.SUCCESS, hostname="h")
    assert len(datagram) < UDP_MAX // 2
    return xml


# ---------------------------------------------------------------- the node


@dataclass
class Hostile:
    node: Any
    audit: Recorder
    logs: LogLines
    hl7_port: int
    token: str
    base: Path

    @property
    def port(self) -> int:
        return int(self.node.port)

    def http(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return httpx.request(method, self.node.http_url + path, headers=headers, timeout=WAIT * 3, **kw)

    def still_serving(self) -> None:
        """A C-ECHO and a QIDO search answered: the node is none the worse."""
        with connect(HOST, self.port, called_ae_title="PACSNODE", calling_ae_title=KNOWN) as assoc:
            assert assoc.echo().ok
        assert self.http("GET", "/dicom-web/studies").status_code in (200, 204)


@pytest.fixture(scope="module")
def hostile(module_index_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """A node refusing unknown AEs, checking DICOM user identities, wanting HTTP credentials, with HL7."""
    logs = LogLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(logs)
    root.setLevel(logging.INFO)
    token = new_token()
    base = tmp_path_factory.mktemp("hostile")
    settings = storage_settings(
        base / "data",
        module_index_url,
        node={"accept_unknown_peers": False},
        peers={KNOWN: {"host": HOST}},
        auth={
            "loopback_roles": [],  # credentials needed, even from this test on loopback
            "dimse_user_identity": "optional",
            "users": {"alice": {"password_hash": quick_hash("wonderland"), "roles": ["read"]}},
            "tokens": {"ops": {"token_hash": token_hash(token), "roles": ["read", "write", "admin"]}},
        },
    )
    audit = Recorder()
    node = start_threaded_node(settings, http=True, audit=audit)
    try:
        hl7 = Hl7Server(
            settings.model_copy(update={"hl7": Hl7Settings(enabled=True, port=0, host=HOST)}),
            node.node.archive,
            audit=audit,
        )
        node.call(hl7.start)
        node.node.companions.append(hl7)  # closed with the node
        yield Hostile(node, audit, logs, hl7.port, token, base)
    finally:
        node.close()
        root.removeHandler(logs)
        root.setLevel(level)


def associate_raw(port: int, rq_bytes: bytes, calling: bytes | None = None) -> Any:
    """Send one A-ASSOCIATE-RQ (its calling AE title field replaced by 16 raw bytes); the answer PDU."""
    data = bytearray(rq_bytes)
    if calling is not None:
        data[26:42] = calling.ljust(16, b" ")  # PS3.8 9.3.2: after the 6-byte header, version, called AE

    async def exchange() -> Any:
        reader, writer = await raw_connect(HOST, port)
        try:
            writer.write(bytes(data))
            return await read_pdu(reader)
        finally:
            writer.close()

    return asyncio.run(exchange())


def request(calling: str = KNOWN, *, abstract: str = VERIFICATION_SOP_CLASS, **kw: Any) -> bytes:
    context = ProposedContext(abstract, UNCOMPRESSED_TRANSFER_SYNTAXES)
    implementation = kw.pop("implementation", "1.2.3.4")
    return encode(
        build_request("PACSNODE", calling, [context], implementation_class_uid=implementation, **kw)
    )


# ---------------------------------------------------------------- association level


@pytest.mark.parametrize(
    ("field", "escaped"),
    [
        (b"EVIL\nAE\x1b[2J\x00", "EVIL\\nAE\\x1b[2J\\x00"),
        (b"\r\n\xe2\x80\xa8\x85\x7f../..", "\\r\\n\xe2\\x80\xa8\\x85\\x7f../.."),  # U+2028 in UTF-8, C1, DEL
        (b"../../../HOSTILE", "../../../HOSTILE"),  # printable: a valid AE title, an unknown one
    ],
    ids=["control", "c1-utf8", "dot-segments"],
)
def test_hostile_calling_ae_title_is_rejected_and_audited(hostile, field, escaped):
    logs, audit = hostile.logs, hostile.audit
    log_mark, audit_mark = logs.mark(), audit.mark()
    raw = field.decode("latin-1").strip(" ")  # how the node reads the field (PS3.8 9.3.2)
    answer = associate_raw(hostile.port, request("PLACEHOLDER"), field)
    # PS3.8 Table 9-21: rejected-permanent, service-user, calling-AE-title-not-recognized.
    assert isinstance(answer, AssociateRJ) and (answer.result, answer.source, answer.reason) == (1, 1, 3)
    alert = audit.wait(EventKind.SECURITY_ALERT, audit_mark, lambda e: e.participants[0].user_id == raw)
    xml = valid_xml(alert)
    assert f'UserID="{escaped}"' in xml.replace("&amp;", "&")
    logs.wait_for(f"rejected association {escaped} -> PACSNODE", log_mark)
    hostile.still_serving()
    logs.assert_safe(log_mark)


def test_a_64_kib_user_name_is_refused_and_audited(hostile):
    logs, audit = hostile.logs, hostile.audit
    log_mark, audit_mark = logs.mark(), audit.mark()
    name = ("u\n\x1b[2J../\u2028" * 8000).encode()[:65_000]  # nearly all a User Identity sub-item holds
    identity = UserIdentityRQ(2, True, name, b"wonderland")  # PS3.7 D.3.3.7: type 2, user and passcode
    answer = associate_raw(hostile.port, request(user_identity=identity))
    # PS3.7 D.3.3.7.3: an identity that does not check out rejects the association.
    assert isinstance(answer, AssociateRJ) and (answer.result, answer.source) == (1, 1)
    event = audit.wait(EventKind.USER_AUTHENTICATION, audit_mark)
    assert event.outcome is Outcome.MINOR_FAILURE and len(event.participants[0].user_id) > 20_000
    xml = valid_xml(event)
    assert 'UserID="u\\n\\x1b[2J../\\u2028u\\n' in xml and "…(" in xml
    line = logs.wait_for("user identity refused: wrong user name or password for 'u\\n\\x1b[2J", log_mark)
    assert "…(" in line
    hostile.still_serving()
    logs.assert_safe(log_mark)


@pytest.mark.parametrize("where", ["abstract-syntax", "implementation-class"])
def test_uids_of_64_kib_in_the_association_request(hostile, where):
    log_mark = hostile.logs.mark()
    uid = "1.2.\n\x1b[2J../" + "9" * 65_000
    rq = request(abstract=uid) if where == "abstract-syntax" else request(implementation=uid)
    answer = associate_raw(hostile.port, rq)
    assert isinstance(answer, AssociateAC)
    results = [pc.result for pc in answer.presentation_contexts]
    # PS3.8 9.3.3.2: an abstract syntax nobody knows is refused context by context (3); the
    # Implementation Class UID is only the peer's name for itself.
    assert results == ([3] if where == "abstract-syntax" else [0])
    hostile.logs.wait_for(f"association {KNOWN} -> PACSNODE accepted", log_mark)
    hostile.still_serving()
    hostile.logs.assert_safe(log_mark)


# ---------------------------------------------------------------- C-FIND


def element(group: int, number: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element (4-byte length: a value of any size)."""
    value += b" " * (len(value) % 2)
    return struct.pack("<HHI", group, number, len(value)) + value


def find(port: int, identifier: bytes) -> list[tuple[int, str]]:
    """A C-FIND of a hand-encoded identifier by pacsnode's own client: each answer's (status, comment)."""

    async def run() -> list[tuple[int, str]]:
        context = ProposedContext(STUDY_FIND, (IMPLICIT_LE,))
        async with associate(
            HOST, port, called_ae_title="PACSNODE", calling_ae_title=KNOWN, contexts=[context]
        ) as assoc:
            found = assoc.negotiated.context_for(STUDY_FIND)
            assert found is not None
            command = c_find_rq(assoc.next_message_id(), STUDY_FIND, 0)
            return [
                (rsp.status or 0, rsp.error_comment or "")
                async for rsp, _ in assoc.request(found.context_id, command, identifier)
            ]

    return asyncio.run(run())


def test_a_megabyte_uid_in_a_c_find_key(hostile):
    logs, audit = hostile.logs, hostile.audit
    log_mark, audit_mark = logs.mark(), audit.mark()
    uid = b"1.2.\n\x1b[2J\xe2\x80\xa8../" + b"9" * (1 << 20)
    identifier = (
        element(0x0008, 0x0052, b"STUDY") + element(0x0010, 0x0020, b"") + element(0x0020, 0x000D, uid)
    )
    ((status, comment),) = find(hostile.port, identifier)
    # PS3.4 C.4.1.1.4: the identifier cannot be used: Unable to process, with a comment (bounded).
    assert status == 0xC000 and "(0020,000D)" in comment and len(comment) <= 64
    event = audit.wait(EventKind.QUERY, audit_mark)
    assert event.outcome is not Outcome.SUCCESS and event.objects[0].query == identifier
    xml = valid_xml(event)
    assert "QueryTruncated" in xml and len(xml) < BINARY_LIMIT * 2
    line = logs.wait_for("refused (0xC000): invalid key value: (0020,000D) '1.2.\\n\\x1b[2J", log_mark)
    assert len(line) < LINE_BOUND
    hostile.still_serving()
    logs.assert_safe(log_mark)


def test_control_characters_in_c_find_keys_are_refused_on_every_index(hostile):
    log_mark = hostile.logs.mark()
    level = element(0x0008, 0x0052, b"STUDY") + element(0x0020, 0x000D, b"")
    for patient_id in (b"A\x00B", b"*\x00*"):  # a NUL: PostgreSQL text cannot hold one
        ((status, comment),) = find(hostile.port, level + element(0x0010, 0x0020, patient_id))
        assert (status, comment) == (0xC000, "invalid key value: (0010,0020) contains NUL")
    for patient_id in (b"\n\x1b[2J", b"../../*"):  # no match, no error: the values are only compared
        assert find(hostile.port, level + element(0x0010, 0x0020, patient_id)) == [(0, "")]
    hostile.still_serving()
    hostile.logs.assert_safe(log_mark)


# ---------------------------------------------------------------- HTTP


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_megabyte_credentials_get_401(hostile, scheme):
    logs, audit = hostile.logs, hostile.audit
    log_mark, audit_mark = logs.mark(), audit.mark()
    user = "mallory\n\x1b[2J\u2028../" * (1 << 16)  # 1 MiB and more
    if scheme == "basic":
        value = "Basic " + base64.b64encode(f"{user}:secret".encode()).decode()
    else:
        value = "Bearer " + "A" * (1 << 20)
    response = httpx.get(
        hostile.node.http_url + "/dicom-web/studies", headers={"Authorization": value}, timeout=WAIT * 3
    )
    assert response.status_code == 401 and "Basic" in response.headers["WWW-Authenticate"]
    event = audit.wait(EventKind.USER_AUTHENTICATION, audit_mark)
    assert event.outcome is Outcome.MINOR_FAILURE
    xml = valid_xml(event)
    line = logs.wait_for("HTTP credentials from 127.0.0.1 refused: ", log_mark)
    if scheme == "basic":
        assert "wrong user name or password for 'mallory\\n\\x1b[2J\\u2028../" in line and "…(" in line
        assert "wrong user name or password for 'mallory\\n\\x1b[2J\\u2028../" in xml
    else:
        assert line.endswith("refused: unknown API token")
    hostile.still_serving()
    logs.assert_safe(log_mark)


def test_control_characters_in_a_header_get_400(hostile):
    log_mark = hostile.logs.mark()
    with socket.create_connection((HOST, int(hostile.node.http_url.rsplit(":", 1)[1])), WAIT) as sock:
        sock.settimeout(WAIT)
        sock.sendall(
            b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\x1b[2J\x00b\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")  # uvicorn's parser: not a header value
    # uvicorn logs through "uvicorn.error" (to the root's handlers, filtered); its access log is off.
    hostile.logs.wait_for("WARNING uvicorn.error: Invalid HTTP request received.", log_mark)
    assert not any(" uvicorn.access: " in record for record in hostile.logs.records)
    hostile.still_serving()
    hostile.logs.assert_safe(log_mark)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("PatientID=%0a%0d..%2F..%2Fetc%1b%5B2J%e2%80%a8", 204),  # a value that matches nothing
        ("00100020=..%2F*", 204),
        ("StudyInstanceUID=1.2%0a3%1b", 400),  # not a UID
        ("PatientName=*%00*", 400),  # NUL
        ("includefield=%0a%1b", 400),  # not an attribute
    ],
    ids=["breaks", "dot-segments", "uid", "nul", "includefield"],
)
def test_qido_parameters_with_breaks_and_dot_segments(hostile, query, status):
    logs, audit = hostile.logs, hostile.audit
    log_mark, audit_mark = logs.mark(), audit.mark()
    response = hostile.http("GET", f"/dicom-web/studies?{query}")
    assert response.status_code == status, response.text
    event = audit.wait(EventKind.QUERY, audit_mark)
    valid_xml(event)
    assert event.objects[0].object_id == "/dicom-web/studies"
    if status == 400:
        logs.wait_for("GET /dicom-web/studies -> 400 ", log_mark)
    hostile.still_serving()
    logs.assert_safe(log_mark)


def test_a_path_with_encoded_control_characters_and_dot_segments(hostile):
    log_mark = hostile.logs.mark()
    for path in ("/dicom-web/studies/1.2%0a3%1b/metadata", "/dicom-web/studies/..%2F..%2F..%2Fetc%0a/series"):
        response = hostile.http("GET", path)
        assert response.status_code in (400, 404), (path, response.status_code)
    hostile.logs.wait_for("GET /dicom-web/studies/", log_mark)
    hostile.still_serving()
    hostile.logs.assert_safe(log_mark)


def stow(hostile: Hostile, sop_instance_uid: str) -> httpx.Response:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID it is asked to write
        ds = make_instance(patient_id="HOSTILE\x1b1")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    headers = {"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"}
    return hostile.http("POST", "/dicom-web/studies", content=body, headers=headers)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, reading what it is sent
def test_stow_of_an_instance_whose_uid_holds_control_characters(hostile):
    log_mark = hostile.logs.mark()
    response = stow(hostile, "1.2.3\x00\n\x1b[2J../x")
    # PS3.18 10.5.3: 409, the instance in the Failed SOP Sequence; 0xA900 on SQLite and PostgreSQL alike
    # (PostgreSQL used to fail the whole group commit on the NUL: 0xA700 "index database unavailable").
    assert response.status_code == 409, response.text
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    hostile.logs.wait_for("STOW-RS: 0 stored, 1 failed", log_mark)
    hostile.still_serving()
    hostile.logs.assert_safe(log_mark)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, reading what it is sent
def test_peer_text_never_names_a_file(hostile):
    """`../` in a UID, an AE title, a user name: files are named by the node (PS3.10 ids, hashes)."""
    log_mark = hostile.logs.mark()
    uid = "../../../../HOSTILE"  # printable ASCII: stored, under a name of the node's making
    assert stow(hostile, uid).status_code == 200
    assert hostile.node.index.instance(uid) is not None
    associate_raw(hostile.port, request("PLACEHOLDER"), b"../../../HOSTILE")
    user = base64.b64encode(b"../../../HOSTILE:x").decode()
    httpx.get(hostile.node.http_url + "/api/audit", headers={"Authorization": f"Basic {user}"}, timeout=WAIT)
    hostile.still_serving()
    data = hostile.base / "data"
    assert list(hostile.base.iterdir()) == [data]  # nothing written beside the data folder
    for path in data.rglob("*"):
        relative = path.relative_to(data).as_posix()
        assert "HOSTILE" not in relative and ".." not in relative, relative
        assert path.resolve().is_relative_to(data.resolve())
    hostile.logs.assert_safe(log_mark)


# ---------------------------------------------------------------- HL7 v2 over MLLP


def hl7_exchange(port: int, message: bytes) -> list[str]:
    """Send one message over MLLP; the MSA fields of the acknowledgement."""
    with socket.create_connection((HOST, port), WAIT) as sock:
        sock.settimeout(WAIT)
        sock.sendall(frame(message))
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    segments = answer.strip(b"\x0b\x1c\r").decode("utf-8", "replace").split("\r")
    return next(s for s in segments if s.startswith("MSA|")).split("|")


def omi(control_id: str, sending_application: str = "RIS") -> bytes:
    """tests/hl7's OMI^O23 (UTF-8) with another MSH-10 (control ID) and MSH-3 (sending application)."""
    sample = (Path(__file__).resolve().parents[1] / "hl7" / "omi_o23_new_utf8.hl7").read_text("utf-8")
    msh, _, rest = sample.partition("\n")
    fields = msh.split("|")
    fields[2], fields[9] = sending_application, control_id
    return ("|".join(fields) + "\r" + rest.replace("\n", "\r")).encode("utf-8")


def test_hl7_control_ids_and_senders_with_control_characters(hostile):
    logs, audit = hostile.logs, hostile.audit
    log_mark, audit_mark = logs.mark(), audit.mark()
    control = "CTRL\x1b[2J\u2028../\x85"
    msa = hl7_exchange(hostile.hl7_port, omi(control, "RIS\x1b[31m../"))
    # HL7 v2.5.1 2.9.2 / 2.7.5: MSA-2 echoes MSH-10, in escape sequences (trailing NEL is whitespace).
    assert msa[1] == "AA" and msa[2] == "CTRL\\X1b\\[2J\\X2028\\../"
    event = audit.wait(EventKind.ORDER_RECORD, audit_mark)
    xml = valid_xml(event)
    assert 'UserID="RIS\\x1b[31m../|GENERAL HOSP"' in xml
    logs.wait_for("OMI^O23 CTRL\\x1b[2J\\u2028../: AA", log_mark)
    # A NUL is no text at all: the message is rejected (AR) before anything is written.
    msa = hl7_exchange(hostile.hl7_port, omi("NUL\x00ID"))
    assert msa[1] == "AR" and msa[3] == "the message contains a NUL character"
    logs.wait_for("NUL\\x00ID: AR", log_mark)
    hostile.still_serving()
    logs.assert_safe(log_mark)


# ---------------------------------------------------------------- the audit trail, read back


def test_the_audit_trail_keeps_the_escaped_text_and_finds_it(make_storage_node):
    """The node's own trail (index + GET /api/audit): the message as kept validates; the raw AE title
    given as a search filter finds it (filters are escaped as the kept values are)."""
    node = make_storage_node(node={"accept_unknown_peers": False}, http=True)
    calling = "EVIL\nAE\x1b\x00"
    answer = associate_raw(node.port, request("PLACEHOLDER"), calling.encode("latin-1"))
    assert isinstance(answer, AssociateRJ) and answer.reason == 3

    async def barrier() -> None:
        """The loop step that answered (and emitted the event) is over."""

    node.call(barrier)
    assert node.node.trail.flush(WAIT)
    query = urllib.parse.urlencode({"event": "Security Alert", "user": calling})
    response = httpx.get(f"{node.http_url}/api/audit?{query}", timeout=WAIT)
    assert response.status_code == 200, response.text
    (item,) = response.json()["items"]
    assert item["user_ids"][0] == "EVIL\\nAE\\x1b\\x00"
    doc = etree.fromstring(item["xml"].encode("utf-8"))
    assert SCHEMA.validate(doc), SCHEMA.error_log
    assert doc.find("ActiveParticipant").get("UserID") == "EVIL\\nAE\\x1b\\x00"
    assert not any(c in RAW for c in item["xml"])
    nul = httpx.get(f"{node.http_url}/api/audit?user=%00", timeout=WAIT)
    assert nul.status_code == 200 and nul.json()["items"] == []  # PostgreSQL answered 500
