"""C-GET / C-MOVE benchmark: a CT study from pacsnode and Orthanc into DCMTK (PS3.4 C.4.2, C.4.3)."""
