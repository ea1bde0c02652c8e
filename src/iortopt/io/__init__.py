"""Reading and writing plan data (zarr stores, and later DICOM-RT)."""
