"""Storage Commitment benchmark: N-ACTION to N-EVENT-REPORT, pacsnode vs Orthanc (PS3.4 Annex J)."""
