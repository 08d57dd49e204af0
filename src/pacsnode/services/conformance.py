"""PS3.2 Annex A: the DICOM Conformance Statement, generated from the registered services and the settings."""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from pydantic import BaseModel

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, __version__
from pacsnode.config.settings import ENVIRONMENT, Settings
from pacsnode.data.uids import VERIFICATION_SOP_CLASS, uid_name
from pacsnode.dimse.status import Status, category, describe
from pacsnode.services.base import ServiceRegistration, ServiceRegistry
from pacsnode.ul.pdu import (
    DICOM_APPLICATION_CONTEXT,
    ContextResult,
    RejectReason,
    RejectResult,
    RejectSource,
)

__all__ = ["render_conformance"]

# PS3.4 B.5 / PS3.6 Annex A: the Storage SOP classes live under this root.
_STORAGE_UID_ROOT = "1.2.840.10008.5.1.4.1.1."

# What each setting means, for the configuration table; settings without a line still appear.
_SETTING_HELP: dict[tuple[str, str], str] = {
    ("node", "data"): "Directory holding the node's data.",
    ("node", "aet"): "The AE title of the node's single Application Entity.",
    ("node", "host"): "Address (or host name) the DICOM and HTTP listeners bind to.",
    ("node", "dicom_port"): "TCP port of the DICOM Upper Layer listener (0: chosen at start-up).",
    ("node", "http_port"): "TCP port reserved for HTTP services (none are described here).",
    ("network", "max_associations"): "Most simultaneous associations accepted.",
    ("network", "max_pdu_length"): "Maximum PDU length received, in bytes (PS3.8 D.1).",
    ("network", "artim_timeout"): "ARTIM timer, in seconds (PS3.8 9.1.5).",
    ("network", "idle_timeout"): "Seconds an association may stay idle before it is aborted.",
    ("network", "read_timeout"): "Seconds a partly received PDU or data set may stall before abort.",
    ("network", "shutdown_timeout"): "Seconds running associations may finish during shutdown.",
    ("network", "require_called_aet"): "Reject associations whose Called AE Title is not the node's.",
    ("network", "allowed_calling_aets"): "Calling AE Titles accepted (unset: any).",
    ("network", "transfer_syntax_preference"): "Transfer syntax UIDs the acceptor prefers, in order.",
    # PS3.15 B.9 (BCP 195): DICOM over TLS, and HTTPS.
    ("node", "plain_dicom"): "Listen for unencrypted DICOM on dicom_port (false: TLS only).",
    ("node", "tls_port"): "TCP port of the DICOM over TLS listener (unset: none; 0: chosen at start-up).",
    ("node", "tls_cert"): "PEM certificate (chain) of the node, for DICOM over TLS and HTTPS.",
    ("node", "tls_key"): "PEM private key of tls_cert.",
    ("node", "tls_ca"): "PEM CA certificates peers' certificates must chain to.",
    ("node", "tls_require_client_cert"): "Refuse a TLS peer without a valid certificate from tls_ca.",
    ("node", "tls_check_peer_name"): "The peer certificate must name its calling AE title or host.",
    ("web", "tls"): "Serve HTTPS instead of HTTP on http_port, with tls_cert and tls_key.",
    ("web", "tls_require_client_cert"): "HTTPS clients must present a certificate from tls_ca.",
    (
        "node",
        "accept_unknown_peers",
    ): "Accept calling AE titles without a [peers] table (unset: on loopback).",
    ("auth", "loopback_roles"): "HTTP roles of requests from loopback without credentials.",
    ("auth", "users"): "HTTP and User Identity users: scrypt password hash and roles.",
    ("auth", "tokens"): "HTTP API tokens: SHA-256 of the token and roles.",
    ("auth", "oidc_issuer"): "OpenID Connect issuer whose JWTs are accepted (iss).",
    ("auth", "oidc_audience"): "Audience (aud) those JWTs must name; empty: not checked.",
    ("auth", "oidc_jwks"): "The issuer's JWK Set: a URL or a file.",
    ("auth", "oidc_roles_claim"): "The JWT claim holding the roles (dotted path).",
    ("auth", "dimse_user_identity"): "User Identity Negotiation (PS3.7 D.3.3.7): off, optional or required.",
}

_CONFIG_FILE = "pacsnode.toml"
_CONFIG_ENV = "PACSNODE_CONFIG"

_HTML_CSS = """\
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; \
line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #999; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
code { font-size: 0.95em; }"""

# ------------------------------------------------------------------ Markdown building blocks

# CommonMark 2.4: any ASCII punctuation may be backslash-escaped; these are the ones that could
# change the meaning of text taken from the configuration or a registration.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+!|~&])")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _md(text: str) -> str:
    """Text from settings or registrations, escaped so Markdown shows it literally."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _code(text: str) -> str:
    """A CommonMark code span that shows ``text`` literally, whatever backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    return _UNESCAPED_PIPE.sub(r"\\|", " ".join(text.split()))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; every row must have the header's number of cells."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}: {row!r}")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def _bullets(items: Iterable[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _seconds(value: float) -> str:
    return f"{value:g} s"


class _Slugger:
    """Heading anchors as GitHub makes them, so the table of contents links work there and in HTML."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, text: str) -> str:
        base = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = self._seen.get(base, 0)
        self._seen[base] = count + 1
        return base if count == 0 else f"{base}-{count}"


class _Document:
    """Markdown blocks under automatically numbered headings, as PS3.2 Annex A numbers them."""

    TOC_DEPTH = 3

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.headings: list[tuple[int, str]] = []  # (depth, text); depth 0 is unnumbered
        self._numbers: list[int] = []
        self._toc_at: int | None = None

    def heading(self, level: int, text: str) -> None:
        """An unnumbered heading (title, overview, table of contents)."""
        self.blocks.append("#" * level + " " + text)
        self.headings.append((0, text))

    def section(self, depth: int, title: str) -> str:
        """Open section ``depth`` (1 is "2 Networking", 2 is "2.1 ...") and return its number."""
        if depth > len(self._numbers) + 1:
            raise ValueError(f"section depth {depth} skips a level")
        del self._numbers[depth:]
        if len(self._numbers) < depth:
            self._numbers.append(0)
        self._numbers[depth - 1] += 1
        number = ".".join(str(n) for n in self._numbers)
        text = f"{number} {title}"
        if depth + 1 <= 6:
            self.blocks.append("#" * (depth + 1) + " " + text)
            self.headings.append((depth, text))
        else:  # Markdown has six heading levels; PS3.2 numbering goes deeper.
            self.blocks.append(f"**{text}**")
        return number

    def add(self, *blocks: str) -> None:
        """Append paragraphs, tables or lists."""
        self.blocks.extend(b for b in blocks if b)

    def table_of_contents_here(self) -> None:
        """Mark where the table of contents goes; it is filled in when all headings are known."""
        self._toc_at = len(self.blocks)
        self.blocks.append("")

    def markdown(self) -> str:
        """The whole document."""
        blocks = list(self.blocks)
        if self._toc_at is not None:
            slug = _Slugger()
            lines = []
            for depth, text in self.headings:
                anchor = slug(text)
                if 0 < depth <= self.TOC_DEPTH:
                    lines.append("  " * (depth - 1) + f"- [{text}](#{anchor})")
            blocks[self._toc_at] = "\n".join(lines)
        return "\n\n".join(blocks) + "\n"


# ------------------------------------------------------------------ facts derived from the registry


def _is_storage(reg: ServiceRegistration) -> bool:
    return bool(re.match(r"PS3\.4 Annex B\b", reg.standard)) or any(
        sop.uid.startswith(_STORAGE_UID_ROOT) for sop in reg.sop_classes
    )


def _roles(reg: ServiceRegistration) -> str:
    return " and ".join(role for role, on in (("SCU", reg.scu), ("SCP", reg.scp)) if on) or "no role"


def _ts_text(uid: str) -> str:
    name = uid_name(uid)
    return f"{_md(name)} ({uid})" if name != uid else uid


def _presentation_rows(
    reg: ServiceRegistration, role: str, *, extended: bool
) -> list[tuple[str, str, str, str, str, str]]:
    """PS3.2 A.4.2.x: one row per (abstract syntax, transfer syntax); repeated cells left blank."""
    ext = "See SOP specific conformance" if extended and reg.extended_negotiation else "None"
    rows: list[tuple[str, str, str, str, str, str]] = []
    for sop in reg.sop_classes:
        syntaxes = reg.transfer_syntaxes or ("",)
        for i, ts in enumerate(syntaxes):
            first = i == 0
            rows.append(
                (
                    _md(sop.name) if first else "",
                    sop.uid if first else "",
                    _md(uid_name(ts)) if ts else "None",
                    ts,
                    role if first else "",
                    ext if first else "",
                )
            )
    return rows


_COMPACT_FROM = 8  # SOP classes from which one transfer syntax table serves them all


def _contexts(reg: ServiceRegistration, role: str, *, extended: bool) -> str:
    """The presentation context table; compact (SOP classes, then syntaxes) for a large service."""
    if len(reg.sop_classes) < _COMPACT_FROM:
        return _table(_PC_HEADER, _presentation_rows(reg, role, extended=extended))
    ext = "See SOP specific conformance" if extended and reg.extended_negotiation else "None"
    sops = _table(
        ("Abstract Syntax Name", "Abstract Syntax UID", "Role", "Extended Negotiation"),
        [(_md(sop.name), sop.uid, role, ext) for sop in reg.sop_classes],
    )
    syntaxes = _table(
        ("Transfer Syntax Name", "Transfer Syntax UID"),
        [(_md(uid_name(ts)), ts) for ts in reg.transfer_syntaxes],
    )
    return (
        f"{sops}\n\nEach of these {len(reg.sop_classes)} SOP classes is offered with every one of "
        f"these {len(reg.transfer_syntaxes)} transfer syntaxes:\n\n{syntaxes}"
    )


_PC_HEADER = (
    "Abstract Syntax Name",
    "Abstract Syntax UID",
    "Transfer Syntax Name",
    "Transfer Syntax UID",
    "Role",
    "Extended Negotiation",
)


def _status_table(codes: Sequence[tuple[int, str]]) -> str:
    return _table(
        ("Service Status", "Code", "Meaning", "When the node returns it"),
        (
            (category(code).value, f"0x{code:04X}", describe(code).split(": ", 1)[1], why)
            for code, why in codes
        ),
    )


def _listen_scope(host: str) -> str:
    if host in ("", "*"):
        return "every interface of the host"
    if host.lower() == "localhost":
        return "the loopback interface only, so only programs on the same host can connect"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"the addresses the host name {_md(host)} resolves to"
    if ip.is_unspecified:
        return f"every IPv{ip.version} interface of the host"
    if ip.is_loopback:
        return f"the IPv{ip.version} loopback interface only, so only programs on the same host can connect"
    return f"the IPv{ip.version} address {_md(host)}"


def _setting_value(value: object) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)


# ------------------------------------------------------------------ the statement


def render_conformance(
    registry: ServiceRegistry,
    settings: Settings,
    fmt: Literal["markdown", "html"] = "markdown",
    web: Sequence[tuple[str, str]] = (),
) -> str:
    """The node's PS3.2 conformance statement, listing exactly the services in ``registry``.

    ``web``: the sections (title, Markdown) of the DICOMweb services the node serves, if any.
    """
    doc = _Document()
    aet = _md(settings.node.aet)
    regs = list(registry.registrations)
    title = f"pacsnode {__version__} DICOM Conformance Statement"

    doc.heading(1, title)
    doc.add(
        _bullets(
            (
                f"Product: pacsnode, version {__version__}",
                f"Implementation Class UID: {IMPLEMENTATION_CLASS_UID}",
                f"Implementation Version Name: {_md(IMPLEMENTATION_VERSION_NAME)}",
                f"Application Entity Title: {aet}",
            )
        )
    )
    _overview(doc, regs, aet)
    doc.heading(2, "Table of Contents")
    doc.table_of_contents_here()
    _introduction(doc)
    _networking(doc, regs, settings)
    if web:
        # PS3.2 A.4 (Web Services): the RESTful services of PS3.18 the node offers as origin server.
        doc.section(1, "Web Services")
        for title, body in web:
            doc.section(2, title)
            doc.add(body)
    doc.section(1, "Media Interchange")
    doc.add(
        "Media interchange (PS3.10, PS3.11) is not supported in this release: the node reads and "
        "writes no DICOM media and supports no Media Storage Application Profile."
    )
    _character_sets(doc, regs)
    _security(doc, settings)

    markdown = doc.markdown()
    if fmt == "markdown":
        return markdown
    if fmt == "html":
        return _html_page(title, markdown)
    raise ValueError(f"unknown format {fmt!r}: use 'markdown' or 'html'")


def _overview(doc: _Document, regs: Sequence[ServiceRegistration], aet: str) -> None:
    # PS3.2 A.1: the overview and its table of network services.
    doc.heading(2, "Conformance Statement Overview")
    doc.add(
        f"pacsnode is a DICOM node: one application entity, {aet}, that takes part in the "
        "network services below over the DICOM Upper Layer (TCP/IP). This statement is generated "
        "by the running node from the services it has registered and from its configuration, so it "
        "lists exactly what this installation offers."
    )
    if not regs:
        doc.add("No network services are registered, so the node accepts no presentation context.")
    else:
        rows: list[tuple[str, str, str]] = []
        for reg in regs:
            rows.append((f"**{_md(reg.name)}** ({_md(reg.standard)})", "", ""))
            rows.extend((_md(sop.name), _yes(reg.scu), _yes(reg.scp)) for sop in reg.sop_classes)
        doc.add(
            "Table: Network Services",
            _table(("SOP Classes", "User of Service (SCU)", "Provider of Service (SCP)"), rows),
        )
    doc.add("The node supports no media services (no Media Storage Application Profile).")


def _introduction(doc: _Document) -> None:
    doc.section(1, "Introduction")
    doc.section(2, "Revision History")
    doc.add(
        _table(
            ("Document Version", "Product Version", "Description"),
            (
                (
                    __version__,
                    f"pacsnode {__version__}",
                    "Generated by the node from its running configuration.",
                ),
            ),
        )
    )
    doc.section(2, "Audience")
    doc.add(
        "This document is written for the people who integrate pacsnode with other DICOM "
        "equipment: integrators, system administrators, service engineers and the authors of "
        "other conformance statements. It assumes a working knowledge of the DICOM standard, "
        "in particular PS3.4, PS3.7 and PS3.8."
    )
    doc.section(2, "Remarks")
    doc.add(
        "This statement describes one node with the configuration it was generated from; another "
        "configuration produces a different statement. Conformance does not by itself guarantee "
        "interoperability: compare this statement with the peer's and test the connection. The "
        "sections follow the outline of PS3.2 Annex A."
    )
    doc.section(2, "Terms and Definitions")
    doc.add(
        _bullets(
            (
                "**Abstract Syntax**: the SOP class a presentation context is about.",
                "**Application Entity (AE)**: an end point of DICOM communication, named by an AE title.",
                "**Association**: a communication context between two AEs (PS3.8).",
                "**Presentation Context**: an abstract syntax with the transfer syntax agreed for it.",
                "**Service Class User / Provider (SCU / SCP)**: the role that invokes / performs operations.",
                "**SOP Class**: a service together with the information object it acts on (PS3.4).",
                "**Transfer Syntax**: the encoding of data sets on the wire (PS3.5).",
            )
        )
    )
    doc.section(2, "Abbreviations")
    doc.add(
        _bullets(
            (
                "AE: Application Entity",
                "ARTIM: Association Request/Reject/Release Timer",
                "DIMSE: DICOM Message Service Element",
                "PDU: Protocol Data Unit",
                "SCP / SCU: Service Class Provider / User",
                "SOP: Service-Object Pair",
                "TCP/IP: Transmission Control Protocol / Internet Protocol",
                "TLS: Transport Layer Security",
                "UID: Unique Identifier",
            )
        )
    )
    doc.section(2, "References")
    doc.add(
        "NEMA PS3, Digital Imaging and Communications in Medicine (DICOM): PS3.2 Conformance, "
        "PS3.4 Service Class Specifications, PS3.5 Data Structures and Encoding, PS3.7 Message "
        "Exchange, PS3.8 Network Communication Support, PS3.15 Security and System Management Profiles."
    )


def _networking(doc: _Document, regs: Sequence[ServiceRegistration], settings: Settings) -> None:
    aet = _md(settings.node.aet)
    net = settings.network
    scp_regs = [r for r in regs if r.scp]
    scu_regs = [r for r in regs if r.scu]

    doc.section(1, "Networking")
    doc.section(2, "Implementation Model")
    doc.section(3, "Application Data Flow")
    flow = [
        f"A remote AE that wants **{_md(r.name)}** ({_md(r.standard)}) requests an association with "
        f"{aet}; {aet} performs the operations as SCP and answers with their status."
        for r in scp_regs
    ] + [
        f"When an operator or another part of pacsnode asks for **{_md(r.name)}** with a remote AE, "
        f"{aet} requests an association with that AE and performs the operation as SCU."
        for r in scu_regs
    ]
    doc.add(
        f"The node has a single application entity, {aet}. Its real-world activities are:",
        _bullets(flow) if flow else "None: no service is registered.",
    )
    doc.section(3, "Functional Definition of AEs")
    doc.section(4, f"Functional Definition of {aet}")
    doc.add(
        f"{aet} runs in one pacsnode process. It listens for TCP connections on port "
        f"{settings.node.dicom_port} and serves up to {net.max_associations} associations at a time, "
        "all in one asyncio event loop. Each DIMSE request is dispatched, by the SOP class of its "
        "presentation context, to the handler of the registered service that provides that SOP class. "
        "Associations the AE initiates use the same Upper Layer and DIMSE implementation."
    )
    doc.section(3, "Sequencing of Real-World Activities")
    doc.add(
        "There are no sequencing constraints between the activities: every association is "
        "independent of the others. Within one association the AE performs operations one at a "
        "time, in the order the requests arrive."
    )

    doc.section(2, "AE Specifications")
    doc.section(3, f"{aet} AE Specification")
    doc.section(4, "SOP Classes")
    doc.add(f"{aet} provides Standard Conformance to the following SOP classes:")
    sop_rows = [(_md(sop.name), sop.uid, _yes(r.scu), _yes(r.scp)) for r in regs for sop in r.sop_classes]
    doc.add(
        _table(("SOP Class Name", "SOP Class UID", "SCU", "SCP"), sop_rows)
        if sop_rows
        else "None: no service is registered."
    )
    _association_policies(doc, settings)
    _initiation_policy(doc, scu_regs, settings)
    _acceptance_policy(doc, scp_regs, settings)
    _network_interfaces(doc, settings)
    _configuration(doc, settings)


def _association_policies(doc: _Document, settings: Settings) -> None:
    net = settings.network
    doc.section(4, "Association Policies")
    doc.section(5, "General")
    doc.add(
        "The DICOM standard application context name is the only one proposed and accepted; an "
        "A-ASSOCIATE-RQ with any other is rejected. A P-DATA-TF PDU longer than the maximum PDU "
        "size received aborts the association; PDUs the AE sends never exceed the maximum length "
        "the peer announced.",
        _table(
            ("Parameter", "Value"),
            (
                ("Application Context Name", DICOM_APPLICATION_CONTEXT),
                ("Maximum PDU size received (as acceptor)", f"{net.max_pdu_length} bytes"),
            ),
        ),
    )
    doc.section(5, "Number of Associations")
    doc.add(
        _table(
            ("Parameter", "Value"),
            (
                ("Maximum number of simultaneous associations accepted", str(net.max_associations)),
                ("Maximum number of simultaneous associations initiated", "Not limited by the AE"),
            ),
        ),
        f"An association requested while {net.max_associations} are already established is rejected "
        f"with A-ASSOCIATE-RJ, result rejected-transient ({int(RejectResult.TRANSIENT)}), source "
        f"DICOM UL service-provider, presentation related function "
        f"({int(RejectSource.SERVICE_PROVIDER_PRESENTATION)}), reason local-limit-exceeded "
        f"({int(RejectReason.LOCAL_LIMIT_EXCEEDED)}).",
    )
    doc.section(5, "Asynchronous Nature")
    doc.add(
        "Asynchronous operations are not supported: the AE performs one operation at a time on an "
        "association. It does not propose the Asynchronous Operations Window; when a requestor "
        "proposes one, the AE answers with 1 operation invoked and 1 operation performed.",
        _table(
            ("Parameter", "Value"),
            (("Maximum number of outstanding asynchronous transactions", "1 (invoked) / 1 (performed)"),),
        ),
    )
    doc.section(5, "Implementation Identifying Information")
    doc.add(
        _table(
            ("Parameter", "Value"),
            (
                ("Implementation Class UID", IMPLEMENTATION_CLASS_UID),
                ("Implementation Version Name", _md(IMPLEMENTATION_VERSION_NAME)),
            ),
        )
    )


def _initiation_policy(doc: _Document, scu_regs: Sequence[ServiceRegistration], settings: Settings) -> None:
    aet = _md(settings.node.aet)
    doc.section(4, "Association Initiation Policy")
    if not scu_regs:
        doc.add(f"{aet} initiates no associations: no registered service has the SCU role.")
        return
    doc.add(
        f"{aet} initiates an association when an operator or another part of pacsnode asks it to "
        "perform an operation with a remote AE; it releases the association when the operation is "
        "complete. The remote AE's title, address and port are given by the initiating operation, "
        "and so are the timers used while waiting for the peer (connection, ACSE and DIMSE timeouts)."
    )
    for reg in scu_regs:
        doc.section(5, f"Activity - {_md(reg.name)} as SCU")
        doc.section(6, "Description and Sequencing of Activities")
        doc.add(
            f"{aet} proposes one presentation context for each SOP class of {_md(reg.name)} "
            f"({_md(reg.standard)}), offering the transfer syntaxes below in the order listed. "
            + (
                reg.scu_notes
                or "It proposes no SCP/SCU Role Selection and no extended negotiation, then performs "
                "the requested operations and releases the association."
            )
        )
        doc.section(6, "Proposed Presentation Contexts")
        doc.add(_contexts(reg, "SCU", extended=False))
        doc.section(6, "SOP Specific Conformance")
        if reg.scp:
            doc.add(
                f"The response status returned by the peer is passed back to the operation that "
                f"initiated the association. The behaviour of {_md(reg.name)} as SCP is described "
                "under the Association Acceptance Policy."
            )
        else:
            doc.add(
                reg.notes
                or f"{_md(reg.name)} behaves as PS3.4 specifies for an SCU ({_md(reg.standard)}); the "
                "response status returned by the peer is passed back to the operation that initiated "
                "the association."
            )


def _acceptance_policy(doc: _Document, scp_regs: Sequence[ServiceRegistration], settings: Settings) -> None:
    aet = _md(settings.node.aet)
    net = settings.network
    doc.section(4, "Association Acceptance Policy")
    unknown = settings.node.accepts_unknown_peers()
    if net.require_called_aet:
        called = f"must be {aet}; any other Called AE Title is rejected"
    elif not unknown:
        called = f"must be {aet} while unknown calling AE titles are refused (access control, below)"
    else:
        called = "is not compared with the node's AE title: any valid AE title is accepted"
    if net.allowed_calling_aets is None:
        calling = "is not checked: any valid AE title is accepted"
    elif net.allowed_calling_aets:
        calling = "must be one of " + ", ".join(_md(t) for t in net.allowed_calling_aets)
    else:
        calling = "matches no entry of an empty list, so every association is rejected"
    doc.add(
        f"{aet} accepts associations on port {settings.node.dicom_port}, with these AE title checks:",
        _bullets(
            (
                f"Called AE title checking: the Called AE Title {called} "
                f"({_code(f'[network] require_called_aet = {_setting_value(net.require_called_aet)}')}).",
                f"Calling AE title checking: the Calling AE Title {calling} "
                f"({_code('[network] allowed_calling_aets')} "
                + (
                    "is not set)."
                    if net.allowed_calling_aets is None
                    else f"= {_code(_setting_value(net.allowed_calling_aets))})."
                ),
                "Access control (PS3.15 B.1): a Calling AE Title with a "
                f"{_code('[peers.X]')} table is accepted only from that table's host (address, host "
                f"name resolved at start-up, or network) and, with {_code('tls = true')}, only over TLS; "
                "a Calling AE Title without one is "
                + ("accepted" if unknown else "rejected")
                + f" ({_code('[node] accept_unknown_peers')}"
                + (
                    f" = {_setting_value(settings.node.accept_unknown_peers)})."
                    if settings.node.accept_unknown_peers is not None
                    else f" is not set: {'loopback' if unknown else 'network'} listen address)."
                ),
            )
        ),
        "It checks an A-ASSOCIATE-RQ in the order of this table and answers the first failed check "
        "with A-ASSOCIATE-RJ:",
        _table(
            ("Condition", "Result", "Source", "Reason/Diag."),
            (
                (
                    "Protocol version bit 0 not set",
                    f"{int(RejectResult.PERMANENT)} rejected-permanent",
                    f"{int(RejectSource.SERVICE_PROVIDER_ACSE)} DICOM UL service-provider (ACSE)",
                    f"{int(RejectReason.PROTOCOL_VERSION_NOT_SUPPORTED)} protocol-version-not-supported",
                ),
                (
                    "Application context name is not the DICOM one",
                    f"{int(RejectResult.PERMANENT)} rejected-permanent",
                    f"{int(RejectSource.SERVICE_USER)} DICOM UL service-user",
                    f"{int(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED)} "
                    "application-context-name-not-supported",
                ),
                (
                    "Called AE Title invalid" + (f", or not {aet}" if net.require_called_aet else ""),
                    f"{int(RejectResult.PERMANENT)} rejected-permanent",
                    f"{int(RejectSource.SERVICE_USER)} DICOM UL service-user",
                    f"{int(RejectReason.CALLED_AE_NOT_RECOGNIZED)} called-AE-title-not-recognized",
                ),
                (
                    "Calling AE Title invalid"
                    + (
                        ", or not an allowed calling AE title" if net.allowed_calling_aets is not None else ""
                    ),
                    f"{int(RejectResult.PERMANENT)} rejected-permanent",
                    f"{int(RejectSource.SERVICE_USER)} DICOM UL service-user",
                    f"{int(RejectReason.CALLING_AE_NOT_RECOGNIZED)} calling-AE-title-not-recognized",
                ),
                *_access_rows(settings),
                (
                    "The node is shutting down",
                    f"{int(RejectResult.TRANSIENT)} rejected-transient",
                    f"{int(RejectSource.SERVICE_PROVIDER_PRESENTATION)} DICOM UL service-provider "
                    "(presentation)",
                    f"{int(RejectReason.TEMPORARY_CONGESTION)} temporary-congestion",
                ),
                (
                    f"{net.max_associations} associations already established",
                    f"{int(RejectResult.TRANSIENT)} rejected-transient",
                    f"{int(RejectSource.SERVICE_PROVIDER_PRESENTATION)} DICOM UL service-provider "
                    "(presentation)",
                    f"{int(RejectReason.LOCAL_LIMIT_EXCEEDED)} local-limit-exceeded",
                ),
            ),
        ),
        "Each proposed presentation context is then answered on its own; a requestor may propose "
        "several contexts for the same SOP class and every acceptable one is accepted:",
        _table(
            ("Presentation context", "Result"),
            (
                ("Even presentation context ID", f"{int(ContextResult.NO_REASON)} no-reason"),
                (
                    "SOP class not provided as SCP by any registered service",
                    f"{int(ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED)} abstract-syntax-not-supported",
                ),
                (
                    "None of the proposed transfer syntaxes is supported",
                    f"{int(ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED)} transfer-syntaxes-not-supported",
                ),
                (
                    "SCP/SCU Role Selection asks only for roles the service does not allow",
                    f"{int(ContextResult.USER_REJECTION)} user-rejection",
                ),
                ("Otherwise", f"{int(ContextResult.ACCEPTANCE)} acceptance"),
            ),
        ),
    )
    _transfer_syntax_selection(doc, settings)
    _timers(doc, settings)
    if not scp_regs:
        doc.add(f"{aet} provides no service as SCP, so it accepts no presentation context.")
    for reg in scp_regs:
        _acceptance_activity(doc, reg, settings)


def _access_rows(settings: Settings) -> list[tuple[str, str, str, str]]:
    """The A-ASSOCIATE-RJ of access control (PS3.15 B.1) and User Identity (PS3.7 D.3.3.7)."""
    permanent = f"{int(RejectResult.PERMANENT)} rejected-permanent"
    user = f"{int(RejectSource.SERVICE_USER)} DICOM UL service-user"
    calling = (
        "A known AE (`[peers.X]`) calling from outside its host, or with `tls = true` over plain TCP"
        if settings.node.accepts_unknown_peers()
        else "A Calling AE Title without a `[peers.X]` table, a known AE calling from outside its host, "
        "or one with `tls = true` over plain TCP"
    )
    rows = []
    if not settings.node.accepts_unknown_peers():
        rows.append(
            (
                f"Called AE Title not {_md(settings.node.aet)} (access control)",
                permanent,
                user,
                f"{int(RejectReason.CALLED_AE_NOT_RECOGNIZED)} called-AE-title-not-recognized",
            )
        )
    rows.append(
        (
            calling,
            permanent,
            user,
            f"{int(RejectReason.CALLING_AE_NOT_RECOGNIZED)} calling-AE-title-not-recognized",
        )
    )
    mode = settings.auth.dimse_user_identity
    if mode != "off":
        rows.append(
            (
                (
                    "No user identity, or one that does not check out"
                    if mode == "required"
                    else "A user identity that does not check out"
                ),
                permanent,
                user,
                f"{int(RejectReason.NO_REASON_GIVEN)} no-reason-given",
            )
        )
    return rows


def _transfer_syntax_selection(doc: _Document, settings: Settings) -> None:
    preference = settings.network.transfer_syntax_preference
    doc.section(5, "Transfer Syntax Selection Policy")
    if not preference:
        doc.add(
            "Of the transfer syntaxes proposed in a presentation context that the service supports, the "
            "AE accepts the first in the requestor's order of proposal "
            "(`[network] transfer_syntax_preference` is empty)."
        )
        return
    doc.add(
        "The AE accepts the first transfer syntax of the configured preference list "
        "(`[network] transfer_syntax_preference`) that the requestor proposed and the service "
        "supports; when none of them was proposed, it accepts the first supported transfer syntax in "
        "the requestor's order of proposal. The preference list is:",
        "\n".join(f"{i}. {_ts_text(uid)}" for i, uid in enumerate(preference, 1)),
    )


def _timers(doc: _Document, settings: Settings) -> None:
    net = settings.network
    doc.section(5, "Timers")
    doc.add(
        "Timers of associations the AE accepts (PS3.8 9.1.5 and local policy):",
        _table(
            ("Timer", "Value", "Behaviour"),
            (
                (
                    "ARTIM",
                    _seconds(net.artim_timeout),
                    "Time allowed for the peer to send its A-ASSOCIATE-RQ after connecting, and to "
                    "close the connection after a release or an abort; on expiry the connection is closed.",
                ),
                (
                    "Idle",
                    _seconds(net.idle_timeout),
                    "An established association with nothing received and no operation in progress "
                    "for this long is aborted (A-ABORT).",
                ),
                (
                    "Read",
                    _seconds(net.read_timeout),
                    "A partly received PDU or data set with no further bytes for this long aborts "
                    "the association (A-ABORT).",
                ),
                (
                    "Shutdown",
                    _seconds(net.shutdown_timeout),
                    "When the node stops, running associations may finish for this long and are "
                    "then aborted; new ones are rejected (temporary congestion).",
                ),
            ),
        ),
    )


def _acceptance_activity(doc: _Document, reg: ServiceRegistration, settings: Settings) -> None:
    aet = _md(settings.node.aet)
    name = _md(reg.name)
    doc.section(5, f"Activity - {name} as SCP")
    doc.section(6, "Description and Sequencing of Activities")
    doc.add(
        f"{aet} accepts presentation contexts for the SOP classes of {name} ({_md(reg.standard)}) "
        "and performs each request as SCP. A request on a context whose SOP class has no handler is "
        f"answered with status 0x{Status.SOP_CLASS_NOT_SUPPORTED:04X}; an unexpected error while "
        f"performing a request is answered with 0x{Status.PROCESSING_FAILURE:04X} (processing "
        "failure) and the association stays open."
    )
    doc.section(6, "Accepted Presentation Contexts")
    role = "SCP"
    if reg.requestor_may_be_scp:
        role = "SCP; SCU when the requestor takes the SCP role by SCP/SCU Role Selection"
    doc.add(_contexts(reg, role, extended=True))
    if reg.requestor_may_be_scp:
        doc.add(
            "SCP/SCU Role Selection (PS3.7 D.3.3.4): the requestor may propose the SCP role for "
            "these SOP classes and the AE agrees to the roles proposed."
        )
    else:
        doc.add(
            "SCP/SCU Role Selection (PS3.7 D.3.3.4): the requestor may only be SCU; a proposal of the "
            "SCP role alone is refused (user-rejection)."
        )
    doc.section(6, "SOP Specific Conformance")
    doc.add(reg.notes or f"{name} conforms to {_md(reg.standard)} as SCP, with no further specialisation.")
    codes = _status_codes(reg)
    if codes:
        doc.add(f"Status codes {aet} returns:", _status_table(codes))
    doc.add(
        "Extended negotiation: " + reg.extended_negotiation
        if reg.extended_negotiation
        else "Extended negotiation: none. SOP Class Extended Negotiation sub-items are ignored."
    )


def _status_codes(reg: ServiceRegistration) -> list[tuple[int, str]]:
    return list(reg.status_codes)


def _network_interfaces(doc: _Document, settings: Settings) -> None:
    node = settings.node
    port = str(node.dicom_port) if node.dicom_port else "an ephemeral port chosen by the system at start-up"
    doc.section(2, "Network Interfaces")
    doc.section(3, "Physical Network Interface")
    doc.add(
        "The node uses the TCP/IP stack and network interfaces of its host operating system "
        "(PS3.8 Section 9); it imposes no particular physical interface."
    )
    doc.section(3, "Additional Protocols")
    doc.add(
        "None. Host names in the configuration are resolved by the operating system; the node uses "
        "no DHCP, DNS-SD or NTP of its own."
    )
    doc.section(3, "IPv4 and IPv6 Support")
    doc.add(
        f"Both IPv4 and IPv6 are supported. The DICOM listener is bound to {_md(node.host)} port {port}, "
        f"that is {_listen_scope(node.host)}. TCP_NODELAY is set on every association's socket, so "
        "the last PDU of a message is sent without waiting for an acknowledgement."
    )


def _configuration(doc: _Document, settings: Settings) -> None:
    node = settings.node
    doc.section(2, "Configuration")
    doc.section(3, "AE Title/Presentation Address Mapping")
    doc.section(4, "Local AE Titles")
    doc.add(
        _table(
            ("Application Entity", "AE Title", "TCP/IP Port", "Bound address"),
            (("pacsnode", _md(node.aet), str(node.dicom_port), _md(node.host)),),
        )
    )
    doc.section(4, "Remote AE Title/Presentation Address Mapping")
    doc.add(*_remote_aes(settings))
    doc.section(3, "Parameters")
    doc.add(
        f"Settings are read from a TOML file ({_CONFIG_FILE}, or the file named by the "
        f"{_CONFIG_ENV} environment variable), then from environment variables, then from "
        "command-line options; a later source overrides an earlier one. Values in effect:",
        _table(
            ("Setting", "Value", "Environment variable", "Meaning"),
            _settings_rows(settings),
        ),
    )


def _remote_aes(settings: Settings) -> list[str]:
    """PS3.2 Remote AE Title/Presentation Address Mapping: the [peers] tables."""
    text = (
        "Remote AEs are `[peers.X]` tables, keyed by AE title: where the AE may call from (an address, "
        "a host name resolved when the node starts, or a network), the port it listens on (for C-MOVE "
        "destinations, Storage Commitment reports, MPPS forwarding and notifications), whether "
        "associations with it use TLS, and the services it may use (see Security)."
    )
    if not settings.peers:
        return [text, "No remote AE is configured."]
    rows = [
        (
            _md(title),
            _md(peer.host),
            str(peer.port) if peer.port is not None else "none",
            _yes(peer.tls),
            ", ".join(peer.allow) or "none",
        )
        for title, peer in settings.peers.items()
    ]
    return [text, _table(("AE Title", "Host", "Port", "TLS", "Services it may use"), rows)]


def _settings_rows(settings: Settings) -> list[tuple[str, str, str, str]]:
    env = {where: var for var, where in ENVIRONMENT.items()}
    rows: list[tuple[str, str, str, str]] = []
    for table in type(settings).model_fields:
        section = getattr(settings, table)
        if not isinstance(section, BaseModel):
            continue
        for key in type(section).model_fields:
            rows.append(
                (
                    f"`[{table}] {key}`",
                    _md(_setting_value(getattr(section, key))),
                    env.get((table, key), "none"),
                    _SETTING_HELP.get((table, key), ""),
                )
            )
    return rows


def _character_sets(doc: _Document, regs: Sequence[ServiceRegistration]) -> None:
    doc.section(1, "Support of Character Sets")
    storage = [r for r in regs if _is_storage(r)]
    command_only = all(sop.uid == VERIFICATION_SOP_CLASS for r in regs for sop in r.sop_classes)
    if command_only:
        doc.add(
            "At this release the node exchanges only DIMSE command sets on the wire; they carry no "
            "text in a Specific Character Set. No character set is interpreted. AE titles use the "
            "default repertoire (ISO_IR 6)."
        )
    if any(r.scp for r in storage):
        doc.add(
            "Data sets are stored as received: whatever Specific Character Set (0008,0005) they "
            "declare, for example ISO_IR 100 (Latin alphabet No. 1), ISO_IR 192 (Unicode in UTF-8) "
            "or ISO 2022 IR 87 (Japanese), is kept unchanged. The node neither converts nor validates "
            "character sets."
        )
    if any(r.scu and not r.scp for r in storage):
        doc.add("Data sets the node sends are sent as stored, without character set conversion.")
    if not command_only and not storage:
        doc.add(
            "The node interprets no Specific Character Set (0008,0005) of the data sets it exchanges; "
            "any specialisation is described in the SOP specific conformance of the service concerned."
        )


def _security(doc: _Document, settings: Settings) -> None:
    doc.section(1, "Security")
    doc.section(2, "Security Profiles")
    doc.add(*_tls_profile(settings))
    doc.add(*_audit_profile(settings))
    doc.section(2, "Association Level Security")
    doc.add(*_access_control(settings))
    doc.section(2, "Application Level Security")
    doc.add(
        "None: there is no de-identification (the audit trail is under Security Profiles). Association "
        "events are written to the node's log."
    )


def _audit_profile(settings: Settings) -> list[str]:
    """PS3.2 Security Profiles: the Audit Trail Message Format Profile (PS3.15 A.5) and its transport."""
    audit = settings.audit
    if not audit.enabled:
        return [
            "The Audit Trail Message Format Profile (PS3.15 A.5) is supported but disabled in this "
            f"configuration ({_code('[audit] enabled = false')}): no audit messages are made."
        ]
    events = (
        "Application Activity (start, stop), Begin Transferring DICOM Instances and DICOM Instances "
        "Transferred (C-MOVE, C-GET, WADO-RS, WADO-URI: Read; C-STORE, STOW-RS: Create), Query (C-FIND, "
        "Modality Worklist, QIDO-RS, admin API reads), DICOM Instances Accessed (a series or instance "
        "deleted), DICOM Study Deleted, Import (pacsnode import), Order Record (worklist items from the "
        "admin API and HL7 orders), Patient Record (HL7 ADT updates and merges, patient deletion), "
        "Procedure Record (MPPS N-CREATE, N-SET), Security Alert, User Authentication and Audit Log Used"
    )
    if not audit.syslog_host:
        transport = (
            f"No collector is configured ({_code('[audit] syslog_host')} is empty): messages are only kept."
        )
    else:
        profile = {
            "tls": "the Audit Trail Message Transmission Profile - SYSLOG-TLS (PS3.15 A.6, RFC 5425)",
            "udp": "the Audit Trail Message Transmission Profile - SYSLOG-UDP (PS3.15 A.7, RFC 5426); a "
            "message larger than one datagram is not sent",
            "tcp": "syslog over TCP (RFC 6587 octet counting)",
        }[audit.syslog_transport]
        transport = (
            f"They are sent to {_md(audit.syslog_host)}:{audit.syslog_port} with {profile}, as RFC 5424 "
            "messages (facility authpriv, MSGID IHE+RFC-3881), in order, at least once: while the "
            "collector cannot be reached they wait in the index and are sent when it can, after a "
            "restart too."
        )
    return [
        f"The node supports the Audit Trail Message Format Profile (PS3.15 A.5): it reports {events}, "
        "each as a DICOM audit message that validates against the schema of PS3.15 A.5.1, with the "
        "outcome of the operation (4 when it partly or wholly failed). Every message is kept in the "
        f"node's index database (searchable at {_code('GET /api/audit')}) "
        + (f"for {audit.keep_days} days. " if audit.keep_days else "without time limit. ")
        + transport,
        "Identifiers (PS3.15 A.5.2.1): the AuditSourceID is "
        + (_md(audit.source_id) if audit.source_id else f"the node's AE title ({_md(settings.node.aet)})")
        + ", AuditSourceTypeCode 4 (application server). The node is the participant with its AE title as "
        "UserID (AlternativeUserID AETITLES=, UserName pacsnode); a remote AE has its calling AE title "
        "and its IP address; an HTTP client its authenticated user name, or its IP address without "
        "credentials; an HL7 sender its MSH-3|MSH-4; the user of a command-line tool the operating-system "
        "user name.",
    ]


def _access_control(settings: Settings) -> list[str]:
    """PS3.2 Association Level Security: access control (PS3.15 B.1), User Identity (PS3.7 D.3.3.7)."""
    net, node = settings.network, settings.node
    unknown = node.accepts_unknown_peers()
    why = (
        f"{_code(f'[node] accept_unknown_peers = {_setting_value(node.accept_unknown_peers)}')}"
        if node.accept_unknown_peers is not None
        else f"the default while the node listens on {'loopback only' if unknown else 'the network'}"
    )
    known = len(settings.peers) + len(set(net.allowed_calling_aets or ()) - set(settings.peers))
    texts = [
        "Access control (PS3.15 B.1): every remote AE with a "
        f"{_code('[peers.X]')} table is a known AE, accepted only from its configured address, host name "
        "(resolved when the node starts) or network, and only over TLS when it has "
        f"{_code('tls = true')} ({known} known AE{'s' if known != 1 else ''} in this configuration). "
        + (
            f"Calling AE titles without a table are accepted ({why})."
            if unknown
            else f"Calling AE titles without a table are rejected ({why}), and the Called AE Title must be "
            f"{_md(node.aet)}."
        )
        + " Each refusal is answered with A-ASSOCIATE-RJ as listed under the Association Acceptance "
        "Policy, logged and reported as a Security Alert (PS3.15 A.5.3.11, Node Authentication).",
        "Each known AE may use only the services of its "
        f"{_code('allow')} list (echo, store, find, move, get, worklist, mpps, commit); any other "
        "request is answered with status 0124H (Refused: Not authorized) with an Error Comment, the "
        "association continues, and the refusal is reported as a Security Alert (Use of Restricted "
        "Function). AE titles and addresses are no proof of identity: use TLS with client certificates "
        "where that matters.",
    ]
    mode = settings.auth.dimse_user_identity
    if mode == "off":
        texts.append(
            "User Identity Negotiation (PS3.7 D.3.3.7): user identity sub-items are ignored (not verified, "
            f"no positive response); {_code('[auth] dimse_user_identity')} is off."
        )
    else:
        texts.append(
            f"User Identity Negotiation (PS3.7 D.3.3.7), {_code(f'[auth] dimse_user_identity = {mode}')}: "
            + (
                "every association must carry a user identity of type 2 (username and passcode) or 5 (JWT) "
                "that checks out"
                if mode == "required"
                else "an association may carry none; one sent must check out: type 1 (a configured "
                "username), 2 (username and passcode) or 5 (JWT); types 3 and 4 are ignored"
            )
            + ". Passcodes are checked against the scrypt hashes of the configured users, JWTs against "
            "the keys of the configured OpenID Connect issuer (signature, issuer, audience, expiry). "
            "Otherwise the association is rejected (rejected-permanent, DICOM UL service-user, "
            "no-reason-given). An accepted identity gets a positive response, with an empty server "
            "response, when the requestor asks for one. Each check is reported as User Authentication "
            "(PS3.15 A.5.3.12)."
        )
    return texts


def _tls_profile(settings: Settings) -> list[str]:
    """PS3.2 Security Profiles: the BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.9)."""
    node = settings.node
    suites = (
        "TLS 1.2 cipher suites TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 and TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "
        "and the TLS 1.3 cipher suites of OpenSSL (all AEAD); no TLS compression, no renegotiation"
    )
    tls_peers = sorted(title for title, peer in settings.peers.items() if peer.tls)
    outgoing = (
        f"Associations the node opens to {', '.join(_md(t) for t in tls_peers)} "
        f"({_code('[peers.X] tls = true')}) use TLS, the peer's certificate verified against "
        f"{_code('[node] tls_ca')}."
        if tls_peers
        else "Associations the node opens use TLS to the remote AEs configured with "
        f"{_code('[peers.X] tls = true')} (none in this configuration)."
    )
    if node.tls_port is None:
        return [
            "The BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.9) is supported but not enabled "
            f"in this configuration: associations accepted on port {node.dicom_port} are unencrypted TCP "
            f"connections. Setting {_code('[node] tls_port')} (with {_code('tls_cert')}, {_code('tls_key')} "
            f"and {_code('tls_ca')}) adds a listener for DICOM over TLS: TLS 1.2 and 1.3 only, {suites}.",
            outgoing,
        ]
    plain = (
        f"Port {node.dicom_port} accepts unencrypted TCP connections as well."
        if node.plain_dicom
        else f"There is no unencrypted DICOM port ({_code('[node] plain_dicom = false')})."
    )
    clients = (
        "Every peer must present a certificate issued by a CA of the configured CA file; OpenSSL checks "
        "its chain and validity period (mutual authentication)."
        if node.tls_require_client_cert
        else "A peer may present a certificate; if it does, it must be issued by a configured CA and be "
        "valid."
    )
    names = (
        " The peer's certificate must also name (subjectAltName DNS or IP, or common name) its calling AE "
        "title or its host, else the association is rejected (A-ASSOCIATE-RJ, calling AE title not "
        "recognized)."
        if node.tls_check_peer_name
        else ""
    )
    return [
        f"The node supports the BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.9) on port "
        f"{node.tls_port}: TLS 1.2 and 1.3 only, {suites}. {plain}",
        f"{clients}{names} A failed TLS handshake closes the connection and is reported as a Security Alert "
        "(PS3.15 A.5.3.11, event type Node Authentication).",
        outgoing,
    ]


# ------------------------------------------------------------------ HTML


def _heading_ids(state: StateCore) -> None:
    # Same anchors as the table of contents links (GitHub's rule), in document order.
    slug = _Slugger()
    tokens = state.tokens
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and i + 1 < len(tokens):
            token.attrSet("id", slug(tokens[i + 1].content))


def _html_page(title: str, markdown: str) -> str:
    md = MarkdownIt("commonmark").enable("table")
    md.core.ruler.push("heading_ids", _heading_ids)
    body = md.render(markdown)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "<head>\n"
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>\n{_HTML_CSS}\n</style>\n"
        "</head>\n"
        "<body>\n"
        f"{body}"
        "</body>\n"
        "</html>\n"
    )
