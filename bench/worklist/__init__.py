"""Modality Worklist C-FIND latency benchmark: pacsnode vs DCMTK wlmscpfs (PS3.4 Annex K)."""
