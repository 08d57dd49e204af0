"""Stable studies and the Instance Availability Notifications still to send (PS3.4 Annex R).

Revision ID: 0006
Revises: 0005

Every study already in the archive is taken as stable at the time of the upgrade: its
content was complete before stability was tracked, so no notification is sent for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create study_stability (filled from studies) and ian_notifications."""
    op.create_table(
        "study_stability",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("stable_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("instances", sa.Integer, nullable=False),
    )
    op.execute(
        "INSERT INTO study_stability (study_instance_uid, stable_at, instances) "
        "SELECT study_instance_uid, updated_at, number_of_study_related_instances FROM studies"
    )
    op.create_table(
        "ian_notifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("subscriber", sa.String(16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ian_notifications_status", "ian_notifications", ["status"])


def downgrade() -> None:
    """Drop ian_notifications and study_stability."""
    op.drop_table("ian_notifications")
    op.drop_table("study_stability")
