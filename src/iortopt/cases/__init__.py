"""Case building: the Case type, built-in phantoms and DICOM import produce the same Case."""
