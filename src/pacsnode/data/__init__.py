"""Thin layer over pydicom: data sets, UIDs and transfer syntaxes (PS3.5, PS3.6, PS3.10)."""
