"""The first index schema: patients, studies, series, instances, changes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The tables of pacsnode 0.1, frozen: later changes come as later revisions.
METADATA_0_1 = sa.MetaData()

patients = sa.Table(
    "patients",
    METADATA_0_1,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("patient_id", sa.String(64), nullable=False, default=""),  # (0010,0020) LO
    sa.Column("issuer_of_patient_id", sa.String(64), nullable=False, default=""),  # (0010,0021) LO
    sa.Column("patient_name", sa.String(324), nullable=False, default=""),  # (0010,0010) PN, all groups
    sa.Column("patient_birth_date", sa.String(8), nullable=False, default=""),  # (0010,0030) DA
    sa.Column("patient_sex", sa.String(16), nullable=False, default=""),  # (0010,0040) CS
    sa.UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patients_identity"),
)
sa.Index("ix_patients_name", patients.c.patient_name)

studies = sa.Table(
    "studies",
    METADATA_0_1,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("patient_fk", sa.Integer, sa.ForeignKey("patients.id"), nullable=False),
    sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),  # (0020,000D) UI
    sa.Column("study_date", sa.String(8), nullable=False, default=""),  # (0008,0020) DA
    sa.Column("study_time", sa.String(16), nullable=False, default=""),  # (0008,0030) TM
    sa.Column("accession_number", sa.String(64), nullable=False, default=""),  # (0008,0050) SH
    sa.Column("study_id", sa.String(16), nullable=False, default=""),  # (0020,0010) SH
    sa.Column("study_description", sa.String(64), nullable=False, default=""),  # (0008,1030) LO
    sa.Column("referring_physician_name", sa.String(324), nullable=False, default=""),  # (0008,0090) PN
    # Computed attributes (PS3.4 C.6.1.1.3 / C.6.2.1.2).
    sa.Column("modalities_in_study", sa.String(256), nullable=False, default=""),  # (0008,0061)
    sa.Column("sop_classes_in_study", sa.Text, nullable=False, default=""),  # (0008,0062)
    sa.Column("number_of_study_related_series", sa.Integer, nullable=False, default=0),  # (0020,1206)
    sa.Column("number_of_study_related_instances", sa.Integer, nullable=False, default=0),  # (0020,1208)
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_studies_patient", studies.c.patient_fk)
sa.Index("ix_studies_date", studies.c.study_date)
sa.Index("ix_studies_accession", studies.c.accession_number)

series = sa.Table(
    "series",
    METADATA_0_1,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_fk", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),  # (0020,000E) UI
    sa.Column("modality", sa.String(16), nullable=False, default=""),  # (0008,0060) CS
    sa.Column("series_number", sa.Integer, nullable=True),  # (0020,0011) IS
    sa.Column("series_description", sa.String(64), nullable=False, default=""),  # (0008,103E) LO
    sa.Column("series_date", sa.String(8), nullable=False, default=""),  # (0008,0021) DA
    sa.Column("series_time", sa.String(16), nullable=False, default=""),  # (0008,0031) TM
    sa.Column("body_part_examined", sa.String(16), nullable=False, default=""),  # (0018,0015) CS
    sa.Column("performed_procedure_step_start_date", sa.String(8), nullable=False, default=""),  # (0040,0244)
    sa.Column(
        "performed_procedure_step_start_time", sa.String(16), nullable=False, default=""
    ),  # (0040,0245)
    sa.Column("station_name", sa.String(16), nullable=False, default=""),  # (0008,1010) SH
    sa.Column("institution_name", sa.String(64), nullable=False, default=""),  # (0008,0080) LO
    sa.Column("number_of_series_related_instances", sa.Integer, nullable=False, default=0),  # (0020,1209)
)
sa.Index("ix_series_study", series.c.study_fk)
sa.Index("ix_series_modality", series.c.modality)

instances = sa.Table(
    "instances",
    METADATA_0_1,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("series_fk", sa.Integer, sa.ForeignKey("series.id"), nullable=False),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),  # (0008,0018) UI
    sa.Column("sop_class_uid", sa.String(64), nullable=False),  # (0008,0016) UI
    sa.Column("instance_number", sa.Integer, nullable=True),  # (0020,0013) IS
    sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),  # (0002,0010) as stored
    sa.Column("specific_character_set", sa.String(256), nullable=False, default=""),  # (0008,0005)
    sa.Column("rows", sa.Integer, nullable=True),  # (0028,0010)
    sa.Column("columns", sa.Integer, nullable=True),  # (0028,0011)
    sa.Column("number_of_frames", sa.Integer, nullable=True),  # (0028,0008)
    sa.Column("content_date", sa.String(8), nullable=False, default=""),  # (0008,0023)
    sa.Column("content_time", sa.String(16), nullable=False, default=""),  # (0008,0033)
    # Storage facts, not DICOM attributes.
    sa.Column("path", sa.String(256), nullable=False, unique=True),  # relative to the data folder
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),  # of the data set bytes as received
    sa.Column("source_ae_title", sa.String(16), nullable=False, default=""),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_instances_series", instances.c.series_fk)
sa.Index("ix_instances_received", instances.c.received_at)

# Append-only change log: what was created, replaced or deleted, in order.
changes = sa.Table(
    "changes",
    METADATA_0_1,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False),
    sa.Column("series_instance_uid", sa.String(64), nullable=False),
    sa.Column("study_instance_uid", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)

# Files to delete once their transaction committed (the old file of a replaced
# instance): written in the same transaction, cleared after the delete, replayed
# at start-up, so a crash in between never leaves the file behind.
trash = sa.Table(
    "trash",
    METADATA_0_1,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.String(256), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# Non-patient objects (PS3.3 A.44 Hanging Protocol, A.58 Color Palette, A.61-A.63
# implant templates, defined procedure protocols, protocol approvals, inventories):
# stored like any instance, but outside the Patient > Study > Series hierarchy.
non_patient_objects = sa.Table(
    "non_patient_objects",
    METADATA_0_1,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
    sa.Column("path", sa.String(256), nullable=False, unique=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("source_ae_title", sa.String(16), nullable=False, default=""),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)


def upgrade() -> None:
    """Create the tables as pacsnode 0.1 defined them."""
    METADATA_0_1.create_all(op.get_bind())


def downgrade() -> None:
    """Drop every table."""
    METADATA_0_1.drop_all(op.get_bind())
