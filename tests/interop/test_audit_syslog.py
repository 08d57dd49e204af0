"""The audit trail against a real syslog receiver: Debian's rsyslog, started by the test, over TCP (RFC 6587)
and TLS (RFC 5425, gtls with a client certificate). Each message arrives whole, is RFC 5424 with the IHE
ATNA MSGID, and its XML validates against the PS3.15 A.5.1 schema; a message emitted while rsyslog was
down arrives once it is up.

rsyslog writes each message (input name, then the raw message) to a named pipe the test reads, so the
test waits on data. A record is one line: audit messages are one line (PS3.15 A.5.1 XML with line
breaks as character references).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from pacsnode.audit.message import schema_path
from pacsnode.audit.syslog import BOM
from pacsnode.config.settings import AuditSettings, Settings
from peerkit import (
    HOST,
    WAIT,
    echo_ok,
    free_port,
    make_instance,
    new_uid,
    pynetdicom_store,
    running,
    start_threaded_node,
    storage_settings,
    wait_for_port,
)
from tlskit import make_pki

pytestmark = pytest.mark.interop

SCHEMA = etree.RelaxNG(etree.parse(schema_path()))
RECEIVE = 30.0  # bound on waiting for a message (the trail retries a refused connection after 1 s)

CONFIG = """\
global(
  workDirectory="{work}"
  maxMessageSize="64k"
  parser.escapeControlCharactersOnReceive="off"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
template(name="record" type="string" string="%inputname% %rawmsg%\\n")
module(load="imtcp")
ruleset(name="audit") {{
  action(type="ompipe" pipe="{fifo}" template="record")
}}
input(type="imtcp" port="{tcp}" name="tcp" ruleset="audit")
input(type="imtcp" port="{tls}" name="tls" ruleset="audit"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
"""


def _rsyslogd() -> str:
    path = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip("rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls)")
    return path


class Received:
    """One message as rsyslog got it: the input (tcp, tls), the RFC 5424 header fields, the XML."""

    def __init__(self, record: bytes) -> None:
        self.input, _, raw = record.partition(b" ")
        header, bom, self.xml = raw.partition(BOM)
        assert bom, f"no BOM before the message: {raw[:200]!r}"
        fields = header.decode("ascii").split(" ")
        self.pri, self.timestamp, self.hostname, self.app, self.procid, self.msgid, self.sd = fields[:7]
        self.doc = etree.fromstring(self.xml)
        assert SCHEMA.validate(self.doc), f"{SCHEMA.error_log}\n{self.xml!r}"

    @property
    def source(self) -> str:
        return str(self.doc.find("AuditSourceIdentification").get("AuditSourceID"))

    @property
    def event(self) -> str:
        code = self.doc.find("EventIdentification/EventID").get("csd-code")
        types = [t.get("csd-code") for t in self.doc.findall("EventIdentification/EventTypeCode")]
        return "/".join([code, *types])


class Pipe:
    """The read end of rsyslog's named pipe: whole records as they come."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        # Opened (non-blocking) before rsyslog starts, so that its writer finds a reader.
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.buffer = b""
        self.records: list[Received] = []

    def until(self, done: Callable[[list[Received]], bool], timeout: float = RECEIVE) -> list[Received]:
        """Read records until ``done(records)``; fail after ``timeout`` seconds without it."""
        deadline = time.monotonic() + timeout
        while not done(self.records):
            left = deadline - time.monotonic()
            assert left > 0, f"rsyslog received only {[(r.source, r.event) for r in self.records]}"
            readable, _, _ = select.select([self.fd], [], [], left)
            if readable:
                with contextlib.suppress(BlockingIOError):
                    self.buffer += os.read(self.fd, 1 << 16)
            while b"\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition(b"\n")
                self.records.append(Received(line))
        return self.records

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """rsyslog's configuration and pipe, ready; ``start()`` runs rsyslogd (stopped after the test)."""
    rsyslogd = _rsyslogd()
    pki = make_pki(tmp_path / "pki")
    pipe = Pipe(tmp_path / "audit.fifo")
    ports = {"tcp": free_port(), "tls": free_port()}
    config = tmp_path / "rsyslog.conf"
    config.write_text(
        CONFIG.format(
            work=tmp_path,
            ca=pki.ca,
            cert=pki.server_cert,
            key=pki.server_key,
            fifo=tmp_path / "audit.fifo",
            **ports,
        )
    )
    with contextlib.ExitStack() as outer:
        runs: list[contextlib.ExitStack] = []

        def start() -> None:
            run = outer.enter_context(contextlib.ExitStack())
            proc = run.enter_context(
                running([rsyslogd, "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")])
            )
            wait_for_port(ports["tcp"], proc)
            runs.append(run)

        def stop() -> None:
            runs.pop().close()  # rsyslogd terminated and waited for

        yield {"start": start, "stop": stop, "pipe": pipe, "pki": pki, **ports}
    pipe.close()


def _node(tmp_path: Path, aet: str, audit: dict[str, Any]) -> Any:
    settings: Settings = storage_settings(tmp_path / aet, "", aet=aet)
    settings = settings.model_copy(update={"audit": AuditSettings(syslog_host=HOST, **audit)})
    return start_threaded_node(settings)


def _find(node: Any, patient_id: str) -> int:
    ae = AE(ae_title="FINDSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, node.port, ae_title=node.ae_title)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = patient_id
    q.StudyInstanceUID = ""
    answers = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    return len(answers) - 1


def _of(source: str, *events: str) -> Callable[[list[Received]], bool]:
    def done(records: list[Received]) -> bool:
        got = [r.event for r in records if r.source == source]
        return all(got.count(e) >= events.count(e) for e in events)

    return done


def test_rsyslog_receives_valid_audit_messages_over_tcp_and_tls(
    tmp_path: Path, collector: dict[str, Any]
) -> None:
    pipe: Pipe = collector["pipe"]
    # Over TCP, to an rsyslog not yet running: Application Start waits in the node's trail.
    tcp_node = _node(tmp_path, "AUDITTCP", {"syslog_port": collector["tcp"], "syslog_transport": "tcp"})
    try:
        trail = tcp_node.node.trail
        assert trail.wait_until(lambda t: t.send_failures >= 1, RECEIVE)
        collector["start"]()
        trail.retry_now()
        pipe.until(_of("AUDITTCP", "110100/110120"))
        assert echo_ok(HOST, tcp_node.port, "AUDITTCP")  # C-ECHO: nothing to audit
        study = new_uid()
        datasets = [make_instance(study=study, patient_id="SYSLOG-1") for _ in range(2)]
        statuses = [s.status for s in pynetdicom_store(HOST, tcp_node.port, datasets, called="AUDITTCP")]
        assert statuses == [0, 0]
        assert _find(tcp_node, "SYSLOG-1") == 1
        pipe.until(_of("AUDITTCP", "110100/110120", "110104", "110112"))
        # The collector goes away; what happens meanwhile waits in the trail and arrives after.
        failures = trail.send_failures
        collector["stop"]()
        assert _find(tcp_node, "SYSLOG-1") == 1
        assert _find(tcp_node, "SYSLOG-2") == 0
        assert trail.wait_until(lambda t: t.send_failures > failures, RECEIVE)
        collector["start"]()
        trail.retry_now()
        pipe.until(_of("AUDITTCP", "110100/110120", "110104", "110112", "110112", "110112"))
    finally:
        tcp_node.close()
    records = pipe.until(
        _of("AUDITTCP", "110100/110120", "110104", "110112", "110112", "110112", "110100/110121")
    )

    # Over TLS, with a client certificate rsyslog checks (x509/certvalid) and rsyslog's checked by us.
    pki = collector["pki"]
    tls = {
        "syslog_port": collector["tls"],
        "syslog_transport": "tls",
        "syslog_ca": pki.ca,
        "syslog_cert": pki.client_cert,
        "syslog_key": pki.client_key,
    }
    tls_node = _node(tmp_path, "AUDITTLS", tls)
    try:
        assert _find(tls_node, "NOBODY") == 0
    finally:
        tls_node.close()
    records = pipe.until(_of("AUDITTLS", "110100/110120", "110112", "110100/110121"))

    for record in records:
        assert record.input == (b"tcp" if record.source == "AUDITTCP" else b"tls")
        # RFC 5424: authpriv (10) notice (5) for a success; VERSION 1; IHE ATNA MSGID; no SD.
        assert record.pri == "<85>1" and record.app == "pacsnode" and record.procid == str(os.getpid())
        assert record.msgid == "IHE+RFC-3881" and record.sd == "-"
        assert record.timestamp.endswith("+00:00")
    stored = next(r for r in records if r.event == "110104")
    assert stored.doc.find("EventIdentification").get("EventActionCode") == "C"
    study_object = stored.doc.find("ParticipantObjectIdentification")
    assert study_object.get("ParticipantObjectID") == study
    assert study_object.find("ParticipantObjectDescription/SOPClass").get("NumberOfInstances") == "2"
    query = next(r for r in records if r.event == "110112" and r.source == "AUDITTCP")
    assert query.doc.find("ActiveParticipant").get("UserID") == "FINDSCU"
    assert not any(
        r.event.startswith("110100") and r.doc.find("EventIdentification").get("EventOutcomeIndicator") != "0"
        for r in records
    )
