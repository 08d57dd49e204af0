"""Patient name keys: each component group of a name, folded, for indexed name queries (PS3.4 C.2.2.2.1).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create patient_name_keys and fill it from the patients already indexed."""
    from pacsnode.archive.matching import name_keys
    from pacsnode.archive.schema import NAME_KEY

    table = op.create_table(
        "patient_name_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("patient_fk", sa.Integer, sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("name_key", NAME_KEY, nullable=False),
    )
    op.create_index("ix_patient_name_keys_key", "patient_name_keys", ["name_key"])
    op.create_index("ix_patient_name_keys_patient", "patient_name_keys", ["patient_fk"])
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, patient_name FROM patients")).all()
    keys = [{"patient_fk": pk, "name_key": key} for pk, name in rows for key in name_keys(name or "")]
    if keys:
        op.bulk_insert(table, keys)


def downgrade() -> None:
    """Drop patient_name_keys."""
    op.drop_table("patient_name_keys")
