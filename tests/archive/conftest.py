"""Fixtures of the archive tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pacsnode.archive.ingest import Archive
from peerkit import storage_settings


@pytest.fixture
async def archive(tmp_path: Path, index_url: str) -> AsyncIterator[Archive]:
    """A started Archive (committer running) over a fresh data folder and index."""
    store = Archive(storage_settings(tmp_path / "data", index_url))
    await store.start()
    yield store
    await store.close()
