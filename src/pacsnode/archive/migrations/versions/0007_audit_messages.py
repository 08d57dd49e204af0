"""The audit trail (PS3.15 A.5): each audit message, kept for search and until sent by syslog.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create audit_messages."""
    op.create_table(
        "audit_messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_code", sa.String(16), nullable=False),
        sa.Column("event_types", sa.String(255), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("user_ids", sa.Text, nullable=False),
        sa.Column("patient_ids", sa.Text, nullable=False),
        sa.Column("study_uids", sa.Text, nullable=False),
        sa.Column("source_address", sa.String(255), nullable=False),
        sa.Column("xml", sa.Text, nullable=False),
        sa.Column("sent", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_messages_at", "audit_messages", ["at"])
    op.create_index("ix_audit_messages_sent", "audit_messages", ["sent", "id"])


def downgrade() -> None:
    """Drop audit_messages."""
    op.drop_table("audit_messages")
