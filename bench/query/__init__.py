"""C-FIND latency benchmark: pacsnode at 10k/100k/1M instances vs Orthanc (PS3.4 C.4.1)."""
