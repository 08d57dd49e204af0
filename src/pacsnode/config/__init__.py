"""Node configuration, modelled on PS3.15 Annex H (Device, Network AE, Connection)."""
