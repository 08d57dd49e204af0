"""pacsnode: a complete DICOM node (ISO 12052 / the DICOM standard, PS3.1-PS3.20)."""

__version__ = "0.1.0"

# PS3.7 D.3.3.2: our Implementation Class UID and Version Name.  The root is a
# UUID-derived OID (PS3.5 B.2), so it needs no registration.
IMPLEMENTATION_CLASS_UID = "2.25.279343245671342893216573802128843410433"
IMPLEMENTATION_VERSION_NAME = "PACSNODE_010"
