"""The Modality Worklist's scheduled procedure steps (PS3.4 Annex K).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create worklist_items."""
    op.create_table(
        "worklist_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("accession_number", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("sps_id", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("station_aet", sa.String(64), nullable=False),
        sa.Column("start_date", sa.String(8), nullable=False),
        sa.Column("start_time", sa.String(16), nullable=False),
        sa.Column("dataset", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_worklist_items_status", "worklist_items", ["status"])


def downgrade() -> None:
    """Drop worklist_items."""
    op.drop_table("worklist_items")
