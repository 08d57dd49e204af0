"""Alembic environment for the index: runs on the connection the caller hands over."""

from __future__ import annotations

from alembic import context

from pacsnode.archive.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("pacsnode runs its migrations through ArchiveIndex.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
