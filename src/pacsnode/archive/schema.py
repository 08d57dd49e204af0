"""The index schema: PS3.4 C.6 Patient > Study > Series > Instance, with C-FIND and QIDO-RS keys."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Keys follow PS3.4 C.6.1.1 (Patient Root / Study Root query levels) and PS3.18
# Table 6.7.1-2a (QIDO-RS default and required matching attributes).  Text is
# stored as decoded Unicode (the Specific Character Set applied); the files keep
# the bytes exactly as received.

patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", String(64), nullable=False, default=""),  # (0010,0020) LO
    Column("issuer_of_patient_id", String(64), nullable=False, default=""),  # (0010,0021) LO
    Column("patient_name", String(324), nullable=False, default=""),  # (0010,0010) PN, all groups
    Column("patient_birth_date", String(8), nullable=False, default=""),  # (0010,0030) DA
    Column("patient_sex", String(16), nullable=False, default=""),  # (0010,0040) CS
)
Index("ix_patients_name", patients.c.patient_name)
Index("ix_patients_id", patients.c.patient_id)  # PatientID matching (C-FIND, QIDO-RS)
# One record per Patient ID (and issuer); patients without an ID get one record per study.
Index(
    "ux_patients_identity",
    patients.c.patient_id,
    patients.c.issuer_of_patient_id,
    unique=True,
    sqlite_where=patients.c.patient_id != "",
    postgresql_where=patients.c.patient_id != "",
)

# PS3.4 C.2.2.2.1: each component group of a Patient's Name (alphabetic, ideographic,
# phonetic), case- and accent-folded, so that a name query of any script and any case
# finds the patient through an index.  Binary collation ("C" on PostgreSQL) so that a
# prefix is a plain range of the index.
NAME_KEY = String(324).with_variant(String(324, collation="C"), "postgresql")
patient_name_keys = Table(
    "patient_name_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey("patients.id"), nullable=False),
    Column("name_key", NAME_KEY, nullable=False),
)
Index("ix_patient_name_keys_key", patient_name_keys.c.name_key)
Index("ix_patient_name_keys_patient", patient_name_keys.c.patient_fk)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey("patients.id"), nullable=False),
    Column("study_instance_uid", String(64), nullable=False, unique=True),  # (0020,000D) UI
    Column("study_date", String(8), nullable=False, default=""),  # (0008,0020) DA
    Column("study_time", String(16), nullable=False, default=""),  # (0008,0030) TM
    Column("accession_number", String(64), nullable=False, default=""),  # (0008,0050) SH
    Column("study_id", String(16), nullable=False, default=""),  # (0020,0010) SH
    Column("study_description", String(64), nullable=False, default=""),  # (0008,1030) LO
    Column("referring_physician_name", String(324), nullable=False, default=""),  # (0008,0090) PN
    # Computed attributes (PS3.4 C.6.1.1.3 / C.6.2.1.2).
    Column("modalities_in_study", String(256), nullable=False, default=""),  # (0008,0061)
    Column("sop_classes_in_study", Text, nullable=False, default=""),  # (0008,0062)
    Column("number_of_study_related_series", Integer, nullable=False, default=0),  # (0020,1206)
    Column("number_of_study_related_instances", Integer, nullable=False, default=0),  # (0020,1208)
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_studies_patient", studies.c.patient_fk)
Index("ix_studies_date", studies.c.study_date)
Index("ix_studies_accession", studies.c.accession_number)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_fk", Integer, ForeignKey("studies.id"), nullable=False),
    Column("series_instance_uid", String(64), nullable=False, unique=True),  # (0020,000E) UI
    Column("modality", String(16), nullable=False, default=""),  # (0008,0060) CS
    Column("series_number", Integer, nullable=True),  # (0020,0011) IS
    Column("series_description", String(64), nullable=False, default=""),  # (0008,103E) LO
    Column("series_date", String(8), nullable=False, default=""),  # (0008,0021) DA
    Column("series_time", String(16), nullable=False, default=""),  # (0008,0031) TM
    Column("body_part_examined", String(16), nullable=False, default=""),  # (0018,0015) CS
    Column("performed_procedure_step_start_date", String(8), nullable=False, default=""),  # (0040,0244)
    Column("performed_procedure_step_start_time", String(16), nullable=False, default=""),  # (0040,0245)
    Column("station_name", String(16), nullable=False, default=""),  # (0008,1010) SH
    Column("institution_name", String(64), nullable=False, default=""),  # (0008,0080) LO
    Column("number_of_series_related_instances", Integer, nullable=False, default=0),  # (0020,1209)
)
Index("ix_series_study", series.c.study_fk)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_fk", Integer, ForeignKey("series.id"), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),  # (0008,0018) UI
    Column("sop_class_uid", String(64), nullable=False),  # (0008,0016) UI
    Column("instance_number", Integer, nullable=True),  # (0020,0013) IS
    Column("transfer_syntax_uid", String(64), nullable=False),  # (0002,0010) as stored
    Column("specific_character_set", String(256), nullable=False, default=""),  # (0008,0005)
    Column("rows", Integer, nullable=True),  # (0028,0010)
    Column("columns", Integer, nullable=True),  # (0028,0011)
    Column("number_of_frames", Integer, nullable=True),  # (0028,0008)
    Column("content_date", String(8), nullable=False, default=""),  # (0008,0023)
    Column("content_time", String(16), nullable=False, default=""),  # (0008,0033)
    # Storage facts, not DICOM attributes.
    Column("path", String(256), nullable=False, unique=True),  # relative to the data folder
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),  # of the data set bytes as received
    Column("source_ae_title", String(16), nullable=False, default=""),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
Index("ix_instances_series", instances.c.series_fk)
Index("ix_instances_received", instances.c.received_at)

# Append-only change log: what was created, replaced or deleted, in order.
changes = Table(
    "changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)

# Files to delete once their transaction committed (the old file of a replaced
# instance): written in the same transaction, cleared after the delete, replayed
# at start-up, so a crash in between never leaves the file behind.
trash = Table(
    "trash",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path", String(256), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Non-patient objects (PS3.3 A.44 Hanging Protocol, A.58 Color Palette, A.61-A.63
# implant templates, defined procedure protocols, protocol approvals, inventories):
# stored like any instance, but outside the Patient > Study > Series hierarchy.
non_patient_objects = Table(
    "non_patient_objects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("path", String(256), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source_ae_title", String(16), nullable=False, default=""),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

# PS3.4 Annex K: the scheduled procedure steps of the Modality Worklist, each kept whole
# (its data set, Explicit VR Little Endian, text in UTF-8) with the keys a list shows.
worklist_items = Table(
    "worklist_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("status", String(16), nullable=False, default="SCHEDULED"),  # SCHEDULED or CANCELED
    Column("accession_number", String(64), nullable=False, default=""),  # (0008,0050)
    Column("patient_id", String(64), nullable=False, default=""),  # (0010,0020)
    Column("patient_name", String(324), nullable=False, default=""),  # (0010,0010)
    Column("sps_id", String(64), nullable=False, default=""),  # (0040,0009)
    Column("modality", String(16), nullable=False, default=""),  # (0008,0060) in the step
    Column("station_aet", String(64), nullable=False, default=""),  # (0040,0001)
    Column("start_date", String(8), nullable=False, default=""),  # (0040,0002)
    Column("start_time", String(16), nullable=False, default=""),  # (0040,0003)
    Column("dataset", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_worklist_items_status", worklist_items.c.status)

# PS3.4 Annex F: Modality Performed Procedure Steps, each kept whole with its status.
performed_steps = Table(
    "performed_steps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # IN PROGRESS, COMPLETED, DISCONTINUED
    Column("dataset", LargeBinary, nullable=False),  # Explicit VR Little Endian
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# A study is stable once no instance arrived for [ian] stable_after seconds: when it last
# became so, and with how many instances (a study with newer instances is waited for again).
study_stability = Table(
    "study_stability",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("stable_at", DateTime(timezone=True), nullable=False),
    Column("instances", Integer, nullable=False),
)

# PS3.4 Annex R: the Instance Availability Notifications of stable studies, one per subscriber,
# written with the study-stable change and kept until delivered (PENDING, SENT or FAILED).
ian_notifications = Table(
    "ian_notifications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False),
    Column("subscriber", String(16), nullable=False),  # AE title of a [peers.X]
    Column("sop_instance_uid", String(64), nullable=False),  # of the N-CREATE (SCU-assigned)
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("detail", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_ian_notifications_status", ian_notifications.c.status)

# PS3.15 A.5: the audit trail. Each DICOM audit message (its XML as sent), with the keys it is
# searched by; kept until sent to the [audit] collector, and for [audit] keep_days.
audit_messages = Table(
    "audit_messages",
    metadata,
    Column("id", Integer, primary_key=True),  # the order messages are sent in
    Column("at", DateTime(timezone=True), nullable=False),  # EventDateTime
    Column("event_code", String(16), nullable=False),  # EventID (PS3.16 CID 400), e.g. 110112
    Column("event_types", String(255), nullable=False, default=""),  # EventTypeCodes, "|110120|"
    Column("action", String(1), nullable=False),  # EventActionCode C R U D E
    Column("outcome", Integer, nullable=False),  # EventOutcomeIndicator 0 4 8 12
    Column("user_ids", Text, nullable=False, default=""),  # ActiveParticipant UserIDs, "|A|B|"
    Column("patient_ids", Text, nullable=False, default=""),  # Patient IDs of the objects, "|P1|"
    Column("study_uids", Text, nullable=False, default=""),  # Study Instance UIDs, "|1.2|"
    Column("source_address", String(255), nullable=False, default=""),  # the requestor's address
    Column("xml", Text, nullable=False),  # the AuditMessage
    Column("sent", Integer, nullable=False, default=0),  # 0 to send, 1 sent, 2 cannot be sent
    Column("attempts", Integer, nullable=False, default=0),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=False, default=""),
)
Index("ix_audit_messages_at", audit_messages.c.at)
Index("ix_audit_messages_sent", audit_messages.c.sent, audit_messages.c.id)

# Which data folder this index belongs to (archive/ownership.py): one row, claimed by the first
# archive that opens the index; an archive of another folder refuses to open.
archive_owner = Table(
    "archive_owner",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1: one owner
    Column("folder_id", String(36), nullable=False),  # the UUID in the folder's pacsnode.id
    Column("folder", Text, nullable=False),  # where it was last opened (for messages only)
    Column("claimed_at", DateTime(timezone=True), nullable=False),
)
