"""Tests of the PS3.2 conformance statement generated from the registry and the settings."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from pacsnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.config.settings import NetworkSettings, NodeSettings, Settings
from pacsnode.data.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    uid_name,
)
from pacsnode.services.base import ServiceRegistration, ServiceRegistry, SOPClass
from pacsnode.services.conformance import render_conformance
from pacsnode.services.verification import verification_service

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DEFLATED = "1.2.840.10008.1.2.1.99"


def verification_registry() -> ServiceRegistry:
    registry = ServiceRegistry()
    registry.register(verification_service())
    return registry


def storage_scu() -> ServiceRegistration:
    """A made-up service the conformance module has never heard of."""
    return ServiceRegistration(
        name="Example Forwarding",
        standard="PS3.4 Annex B",
        sop_classes=(SOPClass(CT_IMAGE_STORAGE, "CT Image Storage"),),
        transfer_syntaxes=(JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN),
        scp=False,
        scu=True,
        notes="Forwards every instance once; failures are retried by the operator.",
    )


def storage_scp() -> ServiceRegistration:
    return ServiceRegistration(
        name="Example Storage",
        standard="PS3.4 Annex B",
        sop_classes=(SOPClass(MR_IMAGE_STORAGE, "MR Image Storage"),),
        transfer_syntaxes=(EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, DEFLATED),
        scp=True,
        scu=False,
        requestor_may_be_scp=True,
        notes="Keeps every instance received; a duplicate SOP Instance UID replaces the earlier one.",
        extended_negotiation="Level 2 storage is announced when the requestor asks for it.",
    )


def custom_settings() -> Settings:
    return Settings(
        node=NodeSettings(aet="ARCHIVE7", host="0.0.0.0", dicom_port=4242, http_port=8080),
        network=NetworkSettings(
            max_associations=7,
            max_pdu_length=65_536,
            artim_timeout=12.5,
            idle_timeout=321.0,
            read_timeout=45.0,
            require_called_aet=True,
            allowed_calling_aets=["MODALITY1", "WORKSTATION"],
            transfer_syntax_preference=[IMPLICIT_VR_LITTLE_ENDIAN],
        ),
    )


def section(markdown: str, title: str) -> str:
    """The text of the first heading containing ``title``, up to the next heading at its level or above."""
    lines = markdown.splitlines()
    for start, line in enumerate(lines):
        match = re.match(r"(#+) ", line)
        if match and title in line:
            level = len(match.group(1))
            out = [line]
            for following in lines[start + 1 :]:
                nxt = re.match(r"(#+) ", following)
                if nxt and len(nxt.group(1)) <= level:
                    break
                out.append(following)
            return "\n".join(out)
    raise AssertionError(f"no heading containing {title!r}")


def table_blocks(markdown: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def cells(row: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", row.strip())
    assert parts[0] == "" and parts[-1] == "", f"row must start and end with a pipe: {row!r}"
    return [p.strip() for p in parts[1:-1]]


# ------------------------------------------------------------------ content from the registry


def test_lists_every_sop_class_and_transfer_syntax_of_the_registry() -> None:
    registry = verification_registry()
    text = render_conformance(registry, Settings())
    for reg in registry.registrations:
        for sop in reg.sop_classes:
            assert sop.uid in text
            assert sop.name in text
        for ts in reg.transfer_syntaxes:
            assert ts in text
            assert uid_name(ts) in text
    accepted = section(text, "Activity - Verification as SCP")
    for ts in verification_service().transfer_syntaxes:
        # one row per transfer syntax, with its name and UID
        assert re.search(rf"\| {re.escape(uid_name(ts))} \| {re.escape(ts)} \|", accepted)


def test_overview_table_is_derived_from_the_registry() -> None:
    text = render_conformance(verification_registry(), Settings())
    overview = section(text, "Conformance Statement Overview")
    assert "| Verification SOP Class | Yes | Yes |" in overview
    assert "Image Storage" not in overview


def test_a_new_registration_appears_without_code_changes() -> None:
    registry = verification_registry()
    registry.register(storage_scu())
    text = render_conformance(registry, Settings())

    overview = section(text, "Conformance Statement Overview")
    assert "| CT Image Storage | Yes | No |" in overview
    assert "Example Forwarding" in overview

    sop_table = section(text, "SOP Classes")
    assert f"| CT Image Storage | {CT_IMAGE_STORAGE} | Yes | No |" in sop_table

    initiation = section(text, "Association Initiation Policy")
    assert "Activity - Example Forwarding as SCU" in initiation
    assert CT_IMAGE_STORAGE in initiation
    assert JPEG_BASELINE in initiation and "JPEG Baseline (Process 1)" in initiation
    assert "Forwards every instance once" in initiation  # notes are the SOP specific text

    acceptance = section(text, "Association Acceptance Policy")
    assert CT_IMAGE_STORAGE not in acceptance  # SCU only: never accepted


def test_scp_registration_fields_drive_the_acceptance_section() -> None:
    registry = verification_registry()
    registry.register(storage_scp())
    text = render_conformance(registry, Settings())
    acceptance = section(text, "Association Acceptance Policy")
    activity = section(acceptance, "Activity - Example Storage as SCP")
    for ts in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, DEFLATED):
        assert ts in activity
    assert MR_IMAGE_STORAGE in activity
    assert "Keeps every instance received" in activity
    assert "Level 2 storage is announced" in activity
    assert "SCU when the requestor takes the SCP role" in activity
    assert "See SOP specific conformance" in activity
    # the Verification status table does not leak into other services
    assert "0x0211" not in activity
    initiation = section(text, "Association Initiation Policy")
    assert MR_IMAGE_STORAGE not in initiation


def test_verification_status_codes() -> None:
    text = render_conformance(verification_registry(), Settings())
    activity = section(text, "Activity - Verification as SCP")
    assert "| Success | 0x0000 |" in activity


def test_no_scu_service_means_no_initiation() -> None:
    registry = ServiceRegistry()
    registry.register(storage_scp())
    text = render_conformance(registry, Settings())
    assert "initiates no associations" in section(text, "Association Initiation Policy")


def test_empty_registry_renders() -> None:
    text = render_conformance(ServiceRegistry(), Settings())
    assert "No network services are registered" in text
    assert "accepts no presentation context" in text


# ------------------------------------------------------------------ content from the settings


def test_settings_are_reflected() -> None:
    settings = custom_settings()
    text = render_conformance(verification_registry(), settings)
    assert "#### 2.2.1 ARCHIVE7 AE Specification" in text
    assert "| pacsnode | ARCHIVE7 | 4242 | 0.0.0.0 |" in text
    assert "| Maximum PDU size received (as acceptor) | 65536 bytes |" in text
    assert "| Maximum number of simultaneous associations accepted | 7 |" in text
    assert "7 associations already established" in text
    assert "must be ARCHIVE7" in text
    assert "`[network] require_called_aet = true`" in text
    assert "MODALITY1, WORKSTATION" in text
    assert "| ARTIM | 12.5 s |" in text
    assert "| Idle | 321 s |" in text
    assert "| Read | 45 s |" in text
    assert "every IPv4 interface" in text
    preference = section(text, "Transfer Syntax Selection Policy")
    assert f"1. Implicit VR Little Endian ({IMPLICIT_VR_LITTLE_ENDIAN})" in preference
    params = section(text, "Parameters")
    assert "| `[node] dicom_port` | 4242 | PACSNODE_DICOM_PORT |" in params
    assert "| `[network] max_pdu_length` | 65536 |" in params


def test_default_settings() -> None:
    text = render_conformance(verification_registry(), Settings())
    assert "| Maximum PDU size received (as acceptor) | 262144 bytes |" in text
    assert "is not compared with the node's AE title" in text
    assert "`[network] require_called_aet = false`" in text
    assert "requestor's order of proposal" in text
    assert "loopback" in text
    assert IMPLEMENTATION_CLASS_UID in text
    assert IMPLEMENTATION_VERSION_NAME.replace("_", "\\_") in text
    assert "1.2.840.10008.3.1.1.1" in text


def test_fixed_sections_say_what_is_true() -> None:
    text = render_conformance(verification_registry(), Settings())
    assert "not supported in this release" in section(text, "Media Interchange")
    charsets = section(text, "Support of Character Sets")
    assert "No character set is interpreted" in charsets
    assert "stored as received" not in charsets
    security = section(text, "Security")
    assert "TLS Secure Transport Connection Profile (PS3.15 B.9) is supported but not enabled" in security
    assert "user identity sub-items are ignored" in security
    assert "Calling AE titles without a table are accepted" in security  # on loopback, by default
    assert "supports the Audit Trail Message Format Profile (PS3.15 A.5)" in security
    assert "No collector is configured" in security


def test_character_sets_with_a_storage_scp() -> None:
    registry = verification_registry()
    registry.register(storage_scp())
    charsets = section(render_conformance(registry, Settings()), "Support of Character Sets")
    assert "stored as received" in charsets
    assert "ISO_IR 100" in charsets
    assert "only DIMSE command sets" not in charsets


def test_ae_title_with_markdown_characters_is_escaped() -> None:
    settings = Settings(node=NodeSettings(aet="A|B*C_D"))
    text = render_conformance(verification_registry(), settings)
    assert "A\\|B\\*C\\_D" in text
    html = render_conformance(verification_registry(), settings, "html")
    assert "A|B*C_D AE Specification" in html
    check_tables(text)


def test_output_is_deterministic() -> None:
    registry, settings = verification_registry(), custom_settings()
    assert render_conformance(registry, settings) == render_conformance(registry, settings)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render_conformance(verification_registry(), Settings(), "pdf")  # type: ignore[arg-type]


# ------------------------------------------------------------------ form


def check_tables(markdown: str) -> None:
    blocks = table_blocks(markdown)
    assert blocks
    for block in blocks:
        width = len(cells(block[0]))
        assert len(block) >= 2
        assert all(re.fullmatch(r"-{3,}", c) for c in cells(block[1])), block[1]
        for row in block:
            assert len(cells(row)) == width, f"{row!r} has not {width} cells"
    # and a CommonMark + tables parser sees every one of them as a table
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    assert sum(t.type == "table_open" for t in tokens) == len(blocks)


REGISTRIES = {
    "verification": lambda: verification_registry(),
    "with-storage": lambda: ServiceRegistry([verification_service(), storage_scu(), storage_scp()]),
    "empty": lambda: ServiceRegistry(),
}


@pytest.mark.parametrize("name", sorted(REGISTRIES))
@pytest.mark.parametrize("settings", [Settings(), custom_settings()], ids=["default", "custom"])
def test_markdown_tables_have_consistent_columns(name: str, settings: Settings) -> None:
    check_tables(render_conformance(REGISTRIES[name](), settings))


VOID = {"meta", "br", "hr", "img", "input", "link"}


class TreeChecker(HTMLParser):
    """Checks every element is closed in order, and collects what the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.seen: set[str] = set()
        self.title = ""
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.charset = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag == "a" and (values.get("href") or "").startswith("#"):
            self.links.append((values["href"] or "")[1:])
        if tag == "meta" and values.get("charset"):
            self.charset = values["charset"] or ""
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "title":
            self.title += data


@pytest.mark.parametrize("name", sorted(REGISTRIES))
def test_html_is_a_well_formed_page(name: str) -> None:
    page = render_conformance(REGISTRIES[name](), custom_settings(), fmt="html")
    assert page.startswith("<!DOCTYPE html>")
    checker = TreeChecker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert {"html", "head", "title", "style", "body", "table", "h1", "h2"} <= checker.seen
    assert checker.title == "pacsnode 0.1.0 DICOM Conformance Statement"
    assert checker.charset.lower() == "utf-8"
    # every table-of-contents link lands on a heading
    assert checker.links
    assert set(checker.links) <= checker.ids
