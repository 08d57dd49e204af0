"""PS3.18 DICOMweb and the admin HTTP API."""
