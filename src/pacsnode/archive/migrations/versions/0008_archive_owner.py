"""The data folder an index belongs to (archive/ownership.py): one row, claimed at the next start.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create archive_owner (empty: the archive that opens the index next claims it)."""
    op.create_table(
        "archive_owner",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("folder_id", sa.String(36), nullable=False),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop archive_owner."""
    op.drop_table("archive_owner")
