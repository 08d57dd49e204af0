"""asyncio shell around the sans-IO PS3.8 Upper Layer and PS3.7 DIMSE cores."""
