"""Test helpers: synthetic brachy RTPLANs in the styles of clinical planning systems, a minimal
RTSTRUCT with applicator paths, and an independent TG-43 dose (numpy, straight from the packaged
TOML tables) that plays the TPS.

The independent TG-43 is written from the AAPM TG-43U1 formulas, not from iortopt's engine:
line-source geometry G_L = beta / (L r sin theta) (1 / (r^2 - L^2/4) on the axis), g_L(r) by
linear interpolation (end values held), F(r, theta) by bilinear interpolation done by hand in
(theta, r), missing F entries filled with the nearest value along r at the same angle.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from importlib import resources

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
#: The study and frame of reference of the synthetic plans and structure sets.
STUDY_UID = "1.2.826.0.1.3680043.8.498.91"
FRAME_UID = "1.2.826.0.1.3680043.8.498.92"


# --- independent TG-43 ---


def packaged_tables(key: str) -> dict:
    """The packaged TOML document of dataset ``key`` (e.g. ``mHDR-v2_HEBD2012``)."""
    resource = resources.files("iortopt") / "data" / "sources" / f"{key}.toml"
    with resource.open("rb") as fh:
        return tomllib.load(fh)


def _interp_linear(x, xs, ys):
    x = min(max(x, xs[0]), xs[-1])
    i = min(max(int(np.searchsorted(xs, x, side="right")) - 1, 0), len(xs) - 2)
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] * (1 - t) + ys[i + 1] * t


def _filled_f(doc: dict) -> np.ndarray:
    f = np.array(doc["anisotropy_function"]["F"], float)
    for row in f:
        ok = np.flatnonzero(np.isfinite(row))
        for j in np.flatnonzero(~np.isfinite(row)):
            row[j] = row[ok[np.argmin(np.abs(ok - j))]]
    return f


def _bilinear(theta, r, thetas, rs, table):
    theta = min(max(theta, thetas[0]), thetas[-1])
    r = min(max(r, rs[0]), rs[-1])
    i = min(max(int(np.searchsorted(thetas, theta, side="right")) - 1, 0), len(thetas) - 2)
    j = min(max(int(np.searchsorted(rs, r, side="right")) - 1, 0), len(rs) - 2)
    u = (theta - thetas[i]) / (thetas[i + 1] - thetas[i])
    v = (r - rs[j]) / (rs[j + 1] - rs[j])
    return (
        table[i, j] * (1 - u) * (1 - v)
        + table[i + 1, j] * u * (1 - v)
        + table[i, j + 1] * (1 - u) * v
        + table[i + 1, j + 1] * u * v
    )


def tg43_dose_gy(points_mm, positions_mm, axes, times_s, sk_U: float, key: str) -> np.ndarray:
    """Dose (Gy) at points from dwells (TG-43U1 2-D line source; module docstring)."""
    doc = packaged_tables(key)
    lam = doc["source"]["dose_rate_constant_cGy_h-1_U-1"]
    length = doc["source"]["active_length_cm"]
    g_r = np.array(doc["radial_dose_function"]["r_cm"], float)
    g = np.array(doc["radial_dose_function"]["g_line"], float)
    thetas = np.array(doc["anisotropy_function"]["theta_deg"], float)
    f_r = np.array(doc["anisotropy_function"]["r_cm"], float)
    f = _filled_f(doc)
    g_ref = 2.0 * np.arctan(length / 2.0) / length  # G_L(1 cm, 90 deg)
    out = np.zeros(len(points_mm))
    for p, point in enumerate(np.asarray(points_mm, float)):
        total = 0.0
        for position, axis, t in zip(positions_mm, axes, times_s, strict=True):
            axis = np.asarray(axis, float) / np.linalg.norm(axis)
            d = (point - np.asarray(position, float)) / 10.0
            r = float(np.linalg.norm(d))
            cos_t = float(np.dot(d, axis)) / r
            theta = float(np.degrees(np.arccos(np.clip(cos_t, -1, 1))))
            z, y = r * cos_t, r * np.sqrt(max(1 - cos_t * cos_t, 0.0))
            if y < 1e-9:
                geometry = 1.0 / (r * r - length * length / 4)
            else:
                beta = np.arctan2(z + length / 2, y) - np.arctan2(z - length / 2, y)
                geometry = beta / (length * y)
            rate = lam * geometry / g_ref * _interp_linear(r, g_r, g)
            rate *= _bilinear(theta, r, thetas, f_r, f)
            total += rate * sk_U * t / 3600.0 * 0.01
        out[p] = total
    return out


# --- DICOM builders ---


def _file_dataset(sop_class: str) -> Dataset:
    meta = FileMetaDataset()
    uid = generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    return ds


def write_rtstruct(path, rois, *, study_uid: str, frame_uid: str) -> None:
    """RTSTRUCT with ROIs ``(number, name, kind, data)``: kind ``volume`` (data: list of closed
    axial polygons (K, 3) mm) or ``path`` (data: (K, 3) mm points, one OPEN_NONPLANAR contour)."""
    ds = _file_dataset(RT_STRUCT)
    ds.Modality = "RTSTRUCT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = frame_uid
    ds.StructureSetLabel = "test"
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi_items, contour_items, observations = Sequence(), Sequence(), Sequence()
    for number, name, kind, data in rois:
        item = Dataset()
        item.ROINumber = number
        item.ROIName = name
        item.ReferencedFrameOfReferenceUID = frame_uid
        roi_items.append(item)
        contours = Sequence()
        polygons = data if kind == "volume" else [np.asarray(data, float)]
        for polygon in polygons:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR" if kind == "volume" else "OPEN_NONPLANAR"
            contour.NumberOfContourPoints = len(polygon)
            contour.ContourData = [f"{v:.4f}" for v in np.asarray(polygon, float).ravel()]
            contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = contours
        contour_items.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "PTV" if kind == "volume" else "BRACHY_CHANNEL"
        observations.append(observation)
    ds.StructureSetROISequence = roi_items
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = observations
    ds.save_as(path, enforce_file_format=True)


def square_prism(centre_mm, half_mm: float, z_planes_mm) -> list[np.ndarray]:
    """Closed axial squares (one per plane) of a box ROI."""
    cx, cy = centre_mm[0], centre_mm[1]
    out = []
    for z in z_planes_mm:
        out.append(
            np.array(
                [
                    [cx - half_mm, cy - half_mm, z],
                    [cx + half_mm, cy - half_mm, z],
                    [cx + half_mm, cy + half_mm, z],
                    [cx - half_mm, cy + half_mm, z],
                ]
            )
        )
    return out


def channel_spec(positions_mm, times_s, **extra) -> dict:
    """A channel: dwell positions (K, 3) mm and times (K,) s of one pulse, plus options:
    ``orientation`` (K, 3), ``relative_mm`` (K,), ``no_3d`` (write only relative positions),
    ``roi_number`` (standard reference to an RTSTRUCT or embedded ROI),
    ``pulses``/``interval_s`` (PDR), ``afterloader_id``, ``applicator_id``, ``weights_scale``
    (the cumulative weights are seconds x this: checks the final-weight normalisation)."""
    return {
        "positions": np.asarray(positions_mm, float),
        "times": np.asarray(times_s, float),
        **extra,
    }


def _ds(value: float) -> str:
    return f"{value:.10g}"[:16]


def build_plan(
    channels: list[dict],
    *,
    manufacturer: str,
    model: str,
    isotope: str = "Ir-192",
    sk_U: float = 40000.0,
    half_life_days: float = 73.83,
    reference: dt.datetime | None = dt.datetime(2026, 3, 1, 8, 0, 0),
    plan_time: dt.datetime | None = dt.datetime(2026, 3, 5, 9, 30, 0),
    treatment_type: str = "HDR",
    fractions: int = 1,
    setup_dose_gy: float = 7.0,
    points: list[tuple[str, tuple[float, float, float]]] = (),
    point_doses: list[list[float]] | None = None,
    encoding: str = "coefficient",
    study_uid: str | None = None,
    frame_uid: str | None = None,
    with_trak: bool = True,
    embedded_paths: dict[int, np.ndarray] | None = None,
) -> Dataset:
    """A brachy RTPLAN. ``point_doses[c][p]``: the dose (Gy, one pulse of one fraction) channel
    ``c`` gives point ``p``; written as Cumulative Dose Reference Coefficients of each channel's
    last control point (``encoding="coefficient"``) or summed into Target Prescription Dose
    (``"target"``). ``embedded_paths``: ROI number -> catheter path, written as Oncentra does, in
    an embedded structure set under the private element (300F,1000)."""
    ds = _file_dataset(RT_PLAN)
    ds.Modality = "RTPLAN"
    ds.Manufacturer = manufacturer
    ds.StudyInstanceUID = study_uid or STUDY_UID
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = frame_uid or FRAME_UID
    ds.RTPlanLabel = "test"
    if plan_time is not None:
        ds.RTPlanDate = plan_time.strftime("%Y%m%d")
        ds.RTPlanTime = plan_time.strftime("%H%M%S")
    ds.RTPlanGeometry = "PATIENT"
    ds.BrachyTreatmentTechnique = "INTERSTITIAL"
    ds.BrachyTreatmentType = treatment_type
    refs = Sequence()
    for p, (name, xyz) in enumerate(points):
        ref = Dataset()
        ref.DoseReferenceNumber = p + 1
        ref.DoseReferenceStructureType = "POINT"
        ref.DoseReferenceDescription = name
        ref.DoseReferencePointCoordinates = [_ds(v) for v in xyz]
        ref.DoseReferenceType = "TARGET"
        if encoding == "target" and point_doses is not None:
            ref.TargetPrescriptionDose = _ds(sum(point_doses[c][p] for c in range(len(channels))))
        refs.append(ref)
    ds.DoseReferenceSequence = refs
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = fractions
    group.NumberOfBeams = 0
    group.NumberOfBrachyApplicationSetups = 1
    setup_ref = Dataset()
    setup_ref.ReferencedBrachyApplicationSetupNumber = 1
    setup_ref.BrachyApplicationSetupDose = _ds(setup_dose_gy)
    group.ReferencedBrachyApplicationSetupSequence = Sequence([setup_ref])
    ds.FractionGroupSequence = Sequence([group])
    source = Dataset()
    source.SourceNumber = 1
    source.SourceType = "LINE"
    source.SourceModelID = model
    source.SourceIsotopeName = isotope
    source.SourceIsotopeHalfLife = _ds(half_life_days)
    source.ReferenceAirKermaRate = _ds(sk_U)
    if reference is not None:
        source.SourceStrengthReferenceDate = reference.strftime("%Y%m%d")
        source.SourceStrengthReferenceTime = reference.strftime("%H%M%S")
    ds.SourceSequence = Sequence([source])
    setup = Dataset()
    setup.ApplicationSetupType = "FLETCHER_SUIT"
    setup.ApplicationSetupNumber = 1
    total_time = sum(float(c["times"].sum()) for c in channels)
    if with_trak:
        setup.TotalReferenceAirKerma = _ds(sk_U * total_time / 3600.0)
    items = Sequence()
    for c, spec in enumerate(channels):
        items.append(_channel_item(c, spec, points, point_doses, encoding, setup_dose_gy))
    setup.ChannelSequence = items
    ds.ApplicationSetupSequence = Sequence([setup])
    if embedded_paths:
        contours = Sequence()
        for number, points in embedded_paths.items():
            contour = Dataset()
            contour.ContourGeometricType = "OPEN_NONPLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.4f}" for v in np.asarray(points, float).ravel()]
            roi = Dataset()
            roi.ReferencedROINumber = number
            roi.ContourSequence = Sequence([contour])
            contours.append(roi)
        embedded = Dataset()
        embedded.ROIContourSequence = contours
        ds.add_new(0x300F0010, "LO", "ONCENTRA TEST")
        ds.add_new(0x300F1000, "SQ", Sequence([embedded]))
    return ds


def _channel_item(c, spec, points, point_doses, encoding, setup_dose_gy) -> Dataset:
    times = spec["times"]
    scale = spec.get("weights_scale", 1.0)
    cumulative = np.concatenate([[0.0], np.cumsum(times)]) * scale
    channel = Dataset()
    channel.ChannelNumber = c + 1
    channel.ChannelTotalTime = _ds(times.sum())
    channel.SourceMovementType = "STEPWISE"
    channel.ReferencedSourceNumber = 1
    channel.AfterloaderChannelID = spec.get("afterloader_id", str(c + 1))
    channel.SourceApplicatorID = spec.get("applicator_id", f"app {c + 1}")
    if "roi_number" in spec:
        channel.ReferencedROINumber = spec["roi_number"]
    if "pulses" in spec:
        channel.NumberOfPulses = spec["pulses"]
        channel.PulseRepetitionInterval = _ds(spec.get("interval_s", 3600.0))
    channel.NumberOfControlPoints = 2 * len(times)
    channel.FinalCumulativeTimeWeight = _ds(cumulative[-1])
    cps = Sequence()
    for k in range(len(times)):
        for j in (0, 1):
            cp = Dataset()
            cp.ControlPointIndex = 2 * k + j
            if "relative_mm" in spec:
                cp.ControlPointRelativePosition = _ds(spec["relative_mm"][k])
            if not spec.get("no_3d"):
                cp.ControlPoint3DPosition = [_ds(v) for v in spec["positions"][k]]
            if "orientation" in spec:
                cp.ControlPointOrientation = [float(v) for v in spec["orientation"][k]]
            cp.CumulativeTimeWeight = _ds(cumulative[k + j])
            cps.append(cp)
    if encoding == "coefficient" and point_doses is not None:
        refs = Sequence()
        for p in range(len(points)):
            ref = Dataset()
            ref.ReferencedDoseReferenceNumber = p + 1
            ref.CumulativeDoseReferenceCoefficient = _ds(point_doses[c][p] / setup_dose_gy)
            refs.append(ref)
        cps[-1].BrachyReferencedDoseReferenceSequence = refs
    channel.BrachyControlPointSequence = cps
    return channel
