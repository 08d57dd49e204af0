"""Tables generated from the DICOM standard (see each module's header for source and edition)."""
