"""Patient, study and frame of reference shared by every object of one study.

Exported RTDOSE and RTPLAN copy these from the imported CT (so a clinical system files them with
the patient's images); plans on built-in phantoms get a fresh study with a phantom patient.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from iortopt import __version__
from iortopt.dicom.files import required_text
from iortopt.dicom.uids import new_uid

#: (keyword, default) of the patient and general study attributes copied from the input study.
PATIENT_STUDY_KEYWORDS = (
    ("PatientName", ""),
    ("PatientID", ""),
    ("PatientBirthDate", ""),
    ("PatientSex", ""),
    ("StudyDate", ""),
    ("StudyTime", ""),
    ("StudyID", ""),
    ("AccessionNumber", ""),
    ("ReferringPhysicianName", ""),
    ("StudyDescription", ""),
)


@dataclass(frozen=True)
class StudyRef:
    """What exported objects share with the input study (strings, JSON-friendly).

    ``rtstruct_uid`` is the SOP Instance UID of the imported RTSTRUCT ("" for none) and
    ``roi_numbers`` maps planning structure names to its ROI Numbers (for the DVH references).
    """

    study_uid: str
    frame_of_reference_uid: str
    patient: dict[str, str] = field(default_factory=dict)
    patient_position: str = ""
    rtstruct_uid: str = ""
    roi_numbers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> StudyRef:
        return cls(**values)

    @classmethod
    def from_dataset(cls, ds: Dataset, where: str | Path = "DICOM dataset", **extra) -> StudyRef:
        """Study, frame of reference and patient attributes of an image or RTSTRUCT.

        Raises:
            InputFileError: naming ``where`` (the file) when the Study Instance UID is missing.
        """
        patient = {k: str(ds.get(k, default) or "") for k, default in PATIENT_STUDY_KEYWORDS}
        return cls(
            study_uid=required_text(ds, "StudyInstanceUID", where),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
            patient=patient,
            patient_position=str(ds.get("PatientPosition", "") or ""),
            **extra,
        )


def new_study(case_name: str) -> StudyRef:
    """A fresh study for a plan without DICOM input (built-in phantom)."""
    now = dt.datetime.now()
    return StudyRef(
        study_uid=new_uid(),
        frame_of_reference_uid=new_uid(),
        patient={
            "PatientName": "iortopt^phantom",
            "PatientID": case_name[:64],
            "StudyDate": now.strftime("%Y%m%d"),
            "StudyTime": now.strftime("%H%M%S"),
            "StudyID": "1",
            "StudyDescription": f"iortopt phantom {case_name}"[:64],
        },
    )


def add_common_modules(ds: Dataset, study: StudyRef, modality: str, description: str) -> None:
    """Patient, general study, RT series, frame of reference, general equipment and the SOP
    common creation date/time (type 1 and 2 attributes)."""
    now = dt.datetime.now()
    for keyword, default in PATIENT_STUDY_KEYWORDS:
        setattr(ds, keyword, study.patient.get(keyword, default))
    ds.StudyInstanceUID = study.study_uid
    ds.Modality = modality
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = description[:64]
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "iortopt"
    ds.ManufacturerModelName = "iortopt"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.ContentDate = ds.InstanceCreationDate
    ds.ContentTime = ds.InstanceCreationTime
