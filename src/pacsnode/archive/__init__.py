"""The archive: ingest pipeline, query engine, index and blob store."""
