"""C-STORE ingest benchmark: pacsnode (SQLite, PostgreSQL) vs DCMTK storescp and Orthanc (PS3.4 Annex B)."""
