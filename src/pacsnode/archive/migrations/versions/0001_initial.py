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

TABLES_0_1 = ("patients", "studies", "series", "instances", "changes", "trash", "non_patient_objects")


def upgrade() -> None:
    """Create the tables as pacsnode 0.1 defines them.

    This first revision builds the schema module's tables of 0.1 by name; any
    later change to those tables must come as a new revision with explicit
    operations, and this one must then be frozen to a copy of the 0.1 tables.
    """
    from pacsnode.archive.schema import metadata

    metadata.create_all(op.get_bind(), tables=[metadata.tables[name] for name in TABLES_0_1])


def downgrade() -> None:
    """Drop every table."""
    from pacsnode.archive.schema import metadata

    metadata.drop_all(op.get_bind(), tables=[metadata.tables[name] for name in TABLES_0_1])
