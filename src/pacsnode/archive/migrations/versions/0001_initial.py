"""The first index schema: patients, studies, series, instances, changes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the tables as pacsnode 0.1 defines them.

    This first revision builds the schema module's tables; any later change to
    schema.py must come as a new revision with explicit operations, and this one
    must then be frozen to a copy of the 0.1 tables.
    """
    from pacsnode.archive.schema import metadata

    metadata.create_all(op.get_bind())


def downgrade() -> None:
    """Drop every table."""
    from pacsnode.archive.schema import metadata

    metadata.drop_all(op.get_bind())
