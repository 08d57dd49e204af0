"""PS3.8 DICOM Upper Layer protocol for TCP/IP, sans-IO: PDU codec, state machine, negotiation."""
