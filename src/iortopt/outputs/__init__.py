"""Outputs: plan files (zarr, summary, figures), DICOM export, result checks."""
