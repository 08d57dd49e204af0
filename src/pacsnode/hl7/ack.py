"""HL7 v2.5.1 2.9.2 original-mode acknowledgements: ACK with MSH, MSA and an ERR segment (Table 0357)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import hl7

from pacsnode.hl7.message import Hl7Error, value

# HL7 v2.5.1 Table 0357: the text of each code this node sends.
ERROR_TEXTS = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
# A message we cannot read gets an ACK in these encoding characters and version.
_DEFAULT = hl7.parse("MSH|^~\\&|")
_DEFAULT_VERSION = "2.5.1"


def control_id() -> str:
    """A new MSH-10 Message Control ID (HL7 v2.5.1 2.15.9.10: unique for the sender; 20 characters)."""
    return uuid.uuid4().hex[:20].upper()


def _now() -> str:
    # HL7 v2.5.1 2.A.74 DTM: YYYYMMDDHHMMSS+ZZZZ.
    return datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")


def acknowledge(
    header: Any,
    code: str,
    error: Hl7Error | None = None,
    *,
    application: str = "",
    facility: str = "",
    message: Any = None,
) -> str:
    """The ACK to a message whose MSH segment we read (``message``: the parsed message, for escaping).

    MSH-3/4 are ours (``application``/``facility``; by default what the sender named in
    MSH-5/6), MSH-5/6 the sender's MSH-3/4; MSH-9 is ACK^<trigger>^ACK, MSH-10 new, MSH-11
    and MSH-12 (and MSH-18) echo the message's.  MSA-2 is the message's control ID.
    """
    fsep = str(header(1))
    enc = str(header(2))
    comp = enc[0] if enc else "^"
    owner = message if message is not None else _owner(header)

    def raw(n: int) -> str:
        return str(header(n)) if n < len(header) else ""

    version = value(header, 12, 1) or _DEFAULT_VERSION
    fields = [
        "MSH",
        enc,
        owner.escape(application) if application else raw(5),  # HL7 v2.5.1 2.9.2: swap sender/receiver
        owner.escape(facility) if facility else raw(6),
        raw(3),
        raw(4),
        _now(),
        "",
        f"ACK{comp}{value(header, 9, 2)}{comp}ACK",  # HL7 v2.5.1 2.15.9.9
        control_id(),
        raw(11),
        raw(12),
        "",
        "",
        "",
        "",
        "",
        raw(18),
    ]
    segments = [fsep.join(fields).rstrip(fsep)]
    segments.extend(_msa_err(owner, fsep, enc, code, value(header, 10), error, version))
    return "\r".join(segments) + "\r"


def reject(error: Hl7Error, *, application: str = "PACSNODE", facility: str = "") -> str:
    """A minimal AR for a message without a readable MSH: our header, MSA-1 AR, an ERR segment."""
    fsep, enc = "|", "^~\\&"
    fields = ["MSH", enc, _DEFAULT.escape(application), _DEFAULT.escape(facility), "", "", _now(), ""]
    fields += ["ACK", control_id(), "P", _DEFAULT_VERSION]
    segments = [fsep.join(fields)]
    segments.extend(_msa_err(_DEFAULT, fsep, enc, error.ack, "", error, _DEFAULT_VERSION))
    return "\r".join(segments) + "\r"


def _owner(header: Any) -> Any:
    """A message with this header's separators (what hl7's escape() needs)."""
    return hl7.parse(str(header))


def _msa_err(
    owner: Any, fsep: str, enc: str, code: str, control: str, error: Hl7Error | None, version: str
) -> list[str]:
    comp, sub = enc[0], enc[3] if len(enc) > 3 else "&"
    msa = ["MSA", code, owner.escape(control)]
    if error is not None:
        msa.append(owner.escape(error.text[:80]))  # MSA-3 Text Message (v2.3.1; kept in v2.5.1)
    segments = [fsep.join(msa)]
    if error is None:
        return segments
    label = ERROR_TEXTS.get(error.code, "")
    where = comp.join([error.segment, str(error.sequence) if error.segment else "", _n(error.field)]).rstrip(
        comp
    )
    text = owner.escape(error.text[:200])
    if _before_25(version):
        # HL7 v2.3.1 ERR-1 Error Code and Location (ELD): segment^sequence^field^code&text&table.
        ced = sub.join([str(error.code), owner.escape(label), "HL70357"])
        segments.append(
            fsep.join(["ERR", comp.join([error.segment, str(error.sequence), _n(error.field), ced])])
        )
    else:
        # HL7 v2.5.1 ERR: -2 location, -3 code (CWE, Table 0357), -4 severity E, -8 user message.
        cwe = comp.join([str(error.code), owner.escape(label), "HL70357"])
        segments.append(fsep.join(["ERR", "", where, cwe, "E", "", "", "", text]))
    return segments


def _n(number: int) -> str:
    return str(number) if number else ""


def _before_25(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) < (2, 5)
    except ValueError:
        return False
