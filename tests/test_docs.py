"""The docs stay true: the committed conformance statement is what the code generates."""

from __future__ import annotations

from pathlib import Path

from pacsnode.config.settings import load_settings
from pacsnode.services.catalog import default_registry
from pacsnode.services.conformance import render_conformance
from pacsnode.web.capabilities import conformance_sections

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_committed_conformance_statement_is_current() -> None:
    settings = load_settings(None, {}, environ={})
    registry = default_registry(settings, describe_storage=True)
    generated = render_conformance(registry, settings, web=conformance_sections(settings))
    committed = (DOCS / "conformance-statement.md").read_text(encoding="utf-8")
    assert committed == generated, "regenerate with: pacsnode conformance > docs/conformance-statement.md"


def test_every_doc_page_is_linked_from_the_index() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"({page.name})" in index, page.name
