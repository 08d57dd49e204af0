"""C-ECHO benchmark: pacsnode vs DCMTK storescp, Orthanc and pynetdicom (PS3.7 9.1.5)."""
