"""DICOM-RT in and out: CT series and RTSTRUCT to a planning case; RTDOSE and RTPLAN out.

    ct.read_ct_series(folder)              -> CtSeries   grid, HU, UIDs (axial, HFS/FFS/...)
    rtstruct.read_structure_set(path)      -> StructureSet   ROI contours in patient mm
    rtstruct.rasterise_roi(contours, grid) -> fractional occupancy (even-odd holes)
    case_import.import_case(section)       -> Case        the ``[case.dicom]`` config section
    rtdose.write_rtdose / read_rtdose       32-bit dose grid with DoseGridScaling and DVHs
    rtplan.write_brachy_plan / write_electron_plan / read_brachy_dwells
    rtplan.read_electron_beam              angles, Patient Position, isocentre, beam axis
    beam_geometry.angles_from_axis         IEC 61217 gantry/collimator/couch of an LPS axis
    patient_frame.PatientFrame             a case's frame -> LPS (points, dose grid)
    export.hdr_writer / electron_writer     the ``[output] dicom = true`` files of a plan
    synthetic.write_synthetic_study        a small consistent study for tests and demos
    phantom_study.write_phantom_study      a voxel phantom (grid, HU, occupancies) as CT + RTSTRUCT

Only axial image orientations are supported (head-first or feet-first, supine or prone); oblique,
sagittal and coronal series are rejected with a message saying so.
"""
