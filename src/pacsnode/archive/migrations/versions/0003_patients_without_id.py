"""Patients without a Patient ID are not merged: the identity is unique only for non-empty IDs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Replace the unique constraint on (patient_id, issuer) by a unique index of non-empty IDs."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # SQLite drops a constraint by rebuilding the table (ArchiveIndex.migrate turns
        # foreign keys off around migrations and checks them after, as SQLite advises).
        with op.batch_alter_table("patients", recreate="always") as batch:
            batch.drop_constraint("uq_patients_identity", type_="unique")
    else:
        op.drop_constraint("uq_patients_identity", "patients", type_="unique")
    op.create_index("ix_patients_id", "patients", ["patient_id"])
    op.create_index(
        "ux_patients_identity",
        "patients",
        ["patient_id", "issuer_of_patient_id"],
        unique=True,
        sqlite_where=sa.text("patient_id != ''"),
        postgresql_where=sa.text("patient_id != ''"),
    )


def downgrade() -> None:
    """Back to one record per (patient_id, issuer); fails if ID-less patients were split."""
    op.drop_index("ux_patients_identity", "patients")
    op.drop_index("ix_patients_id", "patients")
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table("patients", recreate="always") as batch:
            batch.create_unique_constraint("uq_patients_identity", ["patient_id", "issuer_of_patient_id"])
    else:
        op.create_unique_constraint(
            "uq_patients_identity", "patients", ["patient_id", "issuer_of_patient_id"]
        )
