"""PS3.15 A.5 audit trail: DICOM audit messages, kept locally and sent by syslog (RFC 5424)."""
