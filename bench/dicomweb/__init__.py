"""DICOMweb benchmark: QIDO-RS and WADO-RS, pacsnode vs Orthanc with its DICOMweb plugin (PS3.18)."""
