"""Hostile text (control characters, `../`, megabyte values) in log records and audit messages: escaped, cut,
never a forged line nor an invalid or oversized message (pacsnode.config.logsafe, pacsnode.audit.message)."""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from lxml import etree

from pacsnode.audit import builders as b
from pacsnode.audit.message import BINARY_LIMIT, TEXT_LIMIT, VALUE_LIMIT, AuditSource, render, schema_path
from pacsnode.audit.store import row_of
from pacsnode.audit.syslog import UDP_MAX, syslog_message
from pacsnode.config.logsafe import (
    ARG_LIMIT,
    MESSAGE_LIMIT,
    WHOLE,
    LogSafeFilter,
    clean,
    escape,
    format_exception,
    install,
)
from pacsnode.security.access import association_refused, user_authentication

SCHEMA = etree.RelaxNG(etree.parse(schema_path()))
SOURCE = AuditSource("PACSNODE")
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"  # `pacsnode serve`'s (cli/main.py)
# What may not appear raw in a log line or an audit message (line breaks only between traceback lines).
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
FORGED = "EVIL\r\n2024-01-01 00:00:00,000 WARNING pacsnode.net: forged\x1b[2J\u2028\x85../../etc/passwd"
MEGABYTE = "1.2.\x00\n" + "9" * (1 << 20)


# ---------------------------------------------------------------- escaping and cutting


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("\x00\x07\x1b[31m", "\\x00\\x07\\x1b[31m"),
        ("\x7f", "\\x7f"),
        ("\x85\x9b", "\\x85\\x9b"),  # C1: NEL, CSI
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\u202e\u2066\u200f", "\\u202e\\u2066\\u200f"),  # bidi overrides, isolates, marks
        ("\ud800", "\\ud800"),  # a lone surrogate (a stream could not even encode it)
        ("../../etc/passwd", "../../etc/passwd"),  # printable: shown as it is
        ("Müller^Jürgen 1.2.3\\4", "Müller^Jürgen 1.2.3\\4"),  # text, accents and backslashes stay
    ],
)
def test_escape_writes_control_characters_out(raw, shown):
    assert escape(raw) == shown
    assert not RAW.search(escape(raw))


def test_escape_may_keep_tabs_and_line_breaks():
    assert escape("a\tb\r\nc\x00\x1b", keep_breaks=True) == "a\tb\r\nc\\x00\\x1b"


def test_clean_cuts_to_the_limit_and_says_how_long_the_text_was():
    assert clean("x" * 20, 20) == "x" * 20
    assert clean("x" * 21, 20) == "x" * 20 + "…(21 chars)"
    cut = clean(MEGABYTE, 40)
    assert cut.startswith("1.2.\\x00\\n999") and cut.endswith(f"…({len(MEGABYTE)} chars)")
    assert len(cut) <= 40 + len(f"…({len(MEGABYTE)} chars)")


def test_clean_keeps_whole_escapes_within_the_limit():
    text = "\x1b" * 10  # 40 characters once escaped
    cut = clean(text, 10)
    assert cut == "\\x1b\\x1b…(10 chars)"  # never half an escape
    assert clean("", 5) == ""


# ---------------------------------------------------------------- the log filter


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through a handler with the filter and the serve format, into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(LogSafeFilter())
    logger = logging.getLogger("pacsnode.test.hostile")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def assert_safe(lines: list[str], bound: int = MESSAGE_LIMIT + 200) -> None:
    """No raw control character, no line over ``bound`` (str.splitlines splits at every kind of break)."""
    for line in lines:
        assert not RAW.search(line), repr(line[:300])
        assert len(line) <= bound, f"{len(line)} characters: {line[:200]!r}"


def test_arguments_cannot_forge_a_line(logged):
    logger, stream = logged
    logger.warning("%s: rejected association %s -> %s (reason %d)", "127.0.0.1:4000", FORGED, "PACSNODE", 3)
    (line,) = _lines(stream)  # one record, one line
    assert (
        "EVIL\\r\\n2024-01-01 00:00:00,000 WARNING pacsnode.net: forged\\x1b[2J\\u2028\\x85../../etc" in line
    )
    assert line.endswith("-> PACSNODE (reason 3)")
    assert_safe([line])


def test_repr_numbers_and_mappings(logged):
    logger, stream = logged
    logger.info("%r %d %.1f %x %s", "a\nb\u2028", 7, 2.25, 255, None)
    logger.info("%(user)s logged in from %(port)d", {"user": "u\x1bser", "port": 104})
    first, second = _lines(stream)
    assert first.endswith("'a\\nb\\u2028' 7 2.2 ff None")
    assert second.endswith("u\\x1bser logged in from 104")


def test_a_long_argument_is_cut_and_the_message_bounded(logged):
    logger, stream = logged
    logger.info("user %s refused", MEGABYTE)
    logger.info("many %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s", *["y" * 10_000] * 18)
    logger.info("x" * 100_000)  # a message made by the caller (an f-string): cut as a whole
    lines = _lines(stream)
    assert len(lines) == 3
    assert f"…({len(MEGABYTE)} chars) refused" in lines[0]
    assert len(lines[0]) < ARG_LIMIT + 100
    assert "y" * ARG_LIMIT + "…(10000 chars) y" in lines[1]
    assert re.search(r"…\(\d+ chars\)$", lines[1]) and len(lines[1]) <= MESSAGE_LIMIT + 100
    assert lines[2].endswith("…(100000 chars)")
    assert_safe(lines)


def test_the_message_template_is_escaped_too(logged):
    logger, stream = logged
    logger.error("Exception in ASGI application\n")  # uvicorn's: a trailing line break is dropped
    logger.info("first\nsecond %s", "arg")
    assert _lines(stream)[0].endswith(": Exception in ASGI application")
    assert _lines(stream)[1].endswith(": first\\nsecond arg")


def test_objects_shown_through_str_and_repr(logged):
    logger, stream = logged
    logger.info("failed: %s / %r / %s", ValueError("bad\nUID"), ValueError("x\x1b"), b"raw\nbytes")
    (line,) = _lines(stream)
    assert line.endswith("failed: bad\\nUID / ValueError('x\\x1b') / b'raw\\nbytes'")


def test_a_bad_format_is_left_to_logging(logged):
    logger, stream = logged

    class Count:
        def __int__(self) -> int:
            return 3

    logger.info("%d item(s)", Count())  # formats with the original argument
    assert _lines(stream)[0].endswith(": 3 item(s)")


def test_whole_records_are_escaped_but_not_cut(logged):
    logger, stream = logged
    xml = "<AuditMessage>" + "x" * 20_000 + "\x1b</AuditMessage>"
    logger.error("audit message not kept: %s", xml, extra=WHOLE)
    (line,) = _lines(stream)
    assert line.endswith("x" * 20_000 + "\\x1b</AuditMessage>")


def test_a_record_is_rewritten_once_whatever_the_number_of_handlers(logged):
    logger, stream = logged
    other = io.StringIO()
    second = logging.StreamHandler(other)
    second.addFilter(LogSafeFilter(arg_limit=5))
    logger.addHandler(second)
    try:
        logger.info("%s", "ab\ncdefgh" * 100)
    finally:
        logger.removeHandler(second)
    assert other.getvalue().rstrip("\n") == _lines(stream)[0].split(": ", 1)[1]  # not escaped twice, nor cut


def test_a_traceback_keeps_its_frames_but_an_exception_message_is_one_line(logged):
    logger, stream = logged
    try:
        try:
            raise KeyError("inner\n2024-01-01 00:00:00,000 ERROR forged")
        except KeyError as exc:
            raise ValueError(f"bad UID {FORGED}") from exc
    except ValueError:
        logger.exception("C-FIND from %s failed", "AE\n")
    lines = _lines(stream)
    assert lines[0].endswith("C-FIND from AE\\n failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith('  File "') and "test_hostile_text.py" in line for line in lines)
    assert any(line.strip().startswith('raise ValueError(f"bad UID {FORGED}")') for line in lines)
    assert "The above exception was the direct cause of the following exception:" in lines
    assert "KeyError: 'inner\\n2024-01-01 00:00:00,000 ERROR forged'" in lines
    assert lines[-1].startswith("ValueError: bad UID EVIL\\r\\n2024-01-01")
    # Nothing but the record's first line starts with a timestamp.
    assert [line for line in lines if re.match(r"\d{4}-\d\d-\d\d ", line)] == lines[:1]
    assert_safe(lines)


def test_format_exception_of_a_long_message():
    try:
        raise RuntimeError("x" * 50_000)
    except RuntimeError as exc:
        text = format_exception((RuntimeError, exc, exc.__traceback__), limit=1000)
    assert text.splitlines()[-1].endswith("…(50014 chars)")
    assert_safe(text.splitlines(), 1100)


def test_stack_info_lines_are_escaped(logged):
    logger, stream = logged
    logger.info("here", stack_info=True)
    lines = _lines(stream)
    assert lines[1] == "Stack (most recent call last):"
    assert_safe(lines)


def test_install_puts_one_filter_on_each_root_handler():
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        install()
        install()
        assert sum(isinstance(f, LogSafeFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("server", [True, False], ids=["serve", "tools"])
def test_the_cli_installs_the_filter(server):
    from pacsnode.cli.main import _setup_logging

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        _setup_logging(1, server=server)
        assert root.handlers
        assert all(any(isinstance(f, LogSafeFilter) for f in h.filters) for h in root.handlers)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


# ---------------------------------------------------------------- audit messages


def _valid(event) -> tuple[str, etree._Element]:
    xml = render(event, SOURCE)
    doc = etree.fromstring(xml.encode("utf-8"))
    assert SCHEMA.validate(doc), f"{SCHEMA.error_log}\n{xml[:2000]}"
    assert not RAW.search(xml.replace("\ufffd", ""))
    assert "\n" not in xml
    framed = syslog_message(xml, at=datetime.now(UTC), failure=True, hostname="h", procid="1")
    assert len(framed) < UDP_MAX // 2  # well within a datagram, however large the values
    return xml, doc


def test_security_alert_for_a_hostile_calling_ae_title():
    calling = "EVIL\nAE\x1b[2J\x00"
    event = association_refused(calling, "PACSNODE", "127.0.0.1", "PACSNODE", f"{calling!r} is unknown")
    xml, doc = _valid(event)
    requestor = doc.find("ActiveParticipant")
    assert requestor.get("UserID") == "EVIL\\nAE\\x1b[2J\\x00"
    assert requestor.get("AlternativeUserID") == "AETITLES=EVIL\\nAE\\x1b[2J\\x00"
    assert "EVIL\nAE" not in xml and "&#10;" not in xml


def test_user_authentication_with_a_megabyte_user_name():
    event = user_authentication(MEGABYTE, "::1", "PACSNODE", success=False, description=f"bad {MEGABYTE!r}")
    _, doc = _valid(event)
    requestor = doc.find("ActiveParticipant")
    for attribute in ("UserID", "UserName"):
        value = requestor.get(attribute)
        assert value.startswith("1.2.\\x00\\n999") and value.endswith(f"…({len(MEGABYTE)} chars)")
        assert len(value) <= VALUE_LIMIT + 20
    description = doc.findtext("EventIdentification/EventOutcomeDescription")
    assert len(description) <= TEXT_LIMIT + 20 and description.endswith("chars)")


def test_a_query_of_a_megabyte_is_cut_and_says_so():
    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " + MEGABYTE.encode()
    finder = b.dicom_peer("FIND\x1bER", "127.0.0.1:4000")
    event = b.query(
        finder, b.node_actor("PACSNODE"), "1.2.840.10008.5.1.4.1.2.2.1", identifier, "1.2.840.10008.1.2"
    )
    _, doc = _valid(event)
    obj = doc.find("ParticipantObjectIdentification")
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery")) == identifier[:BINARY_LIMIT]
    details = {
        d.get("type"): base64.b64decode(d.get("value")) for d in obj.findall("ParticipantObjectDetail")
    }
    assert details["QueryTruncated"] == f"first {BINARY_LIMIT} of {len(identifier)} bytes".encode()
    assert doc.find("ActiveParticipant").get("UserID") == "FIND\\x1bER"


def test_a_web_query_with_encoded_breaks_and_dot_segments():
    target = "/dicom-web/studies/..%2F../\x1b?PatientID=%0a%0d..%2F..%2Fetc&limit=\u2028"
    event = b.web_query(b.http_actor("mallory\n", "192.0.2.7"), b.node_actor("PACSNODE"), target)
    _, doc = _valid(event)
    obj = doc.find("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectID") == "/dicom-web/studies/..%2F../\\x1b"
    assert doc.find("ActiveParticipant").get("UserID") == "mallory\\n"


def test_free_text_keeps_its_lines_as_references_but_not_its_control_characters():
    event = user_authentication("u", "::1", "PACSNODE", success=False, description="one\ntwo\x1b\x00\u2028")
    xml, doc = _valid(event)
    assert doc.findtext("EventIdentification/EventOutcomeDescription") == "one\ntwo\\x1b\\x00\\u2028"
    assert "one&#10;two" in xml


def test_the_trail_indexes_the_escaped_values():
    event = association_refused("A\nB", "PACSNODE", "127.0.0.1", "PACSNODE", "unknown")
    row = row_of(event, render(event, SOURCE))
    assert row["user_ids"] == "|A\\nB|PACSNODE|"
    long = row_of(user_authentication(MEGABYTE, "::1", "N", success=False), "<x/>")
    assert len(long["user_ids"]) < VALUE_LIMIT + 50 and "\x00" not in long["user_ids"]
