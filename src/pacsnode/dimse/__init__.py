"""PS3.7 DIMSE message exchange, sans-IO: command sets, fragmentation, reassembly, status."""
