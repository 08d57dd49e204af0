"""Benchmarks of pacsnode against real DICOM peers, printing ratios."""
