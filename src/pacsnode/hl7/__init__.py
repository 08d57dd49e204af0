"""HL7 v2 (v2.3.1 to v2.5.1 and later) over MLLP: orders and patient updates for the worklist and index."""
