"""Reading clinical brachytherapy RTPLANs (HDR and PDR) into pure data: :func:`read_brachy_plan`.

Systems whose conventions are handled: Oncentra (Nucletron / Elekta), BrachyVision (Varian
Eclipse), SagiPlan (Eckert & Ziegler BEBIG) and iortopt's own export
(:mod:`iortopt.dicom.rtplan`). The rules, in the order the reader applies them:

Plan kind. The file must be an RTPLAN with an RT Brachy Application Setups module
(ApplicationSetupSequence); an external-beam plan (BeamSequence only) is refused. Brachy
Treatment Type HDR and PDR are read; LDR, MANUAL and others are refused.

Vendor. From the Manufacturer (0008,0070): ``nucletron``/``elekta`` -> oncentra, ``varian`` ->
brachyvision, ``bebig``/``eckert`` -> sagiplan, ``iortopt`` -> iortopt, else ``unknown``. The
vendor changes one rule only: see "Strength the TPS used".

Source. The channel's Referenced Source Number picks the Source Sequence item. Reference Air
Kerma Rate (300A,022A) is S_K in U (1 U = 1 uGy m^2 h^-1 = 1 cGy cm^2 h^-1), valid at Source
Strength Reference Date/Time; a missing or non-positive value is refused. Source Isotope Half
Life (days) is kept when given (else the dataset's is used for the decay, with a warning). The
isotope and Source Model ID are kept as written; mapping them to a TG-43 dataset is
:func:`resolve_source` (a known model alias -> the packaged dataset; otherwise the user names one;
a named dataset whose model differs from the plan's is an error, never a guess).

Dates. The plan date-time is RT Plan Date/Time. A date before 1950 (19000101 and the like) or a
missing one counts as an anonymised placeholder and is warned about; so is a plan dated before
the source's reference date.

Strength the TPS used. A TPS computes the dwell times and doses with the strength as written, so
the check uses Reference Air Kerma Rate as written (``sk_tps_U``). iortopt's own export writes the
calibration S_K there but computed its dose with the strength at treatment, which it states as
Total Reference Air Kerma / total dwell time: for vendor ``iortopt`` that ratio is used.

Dwells. Control points are read in order. Two consecutive control points at the same position
(within 0.01 mm) are a dwell of time (w1 - w0) x Channel Total Time / Final Cumulative Time Weight
(the final weight normalises the weights; when Final Cumulative Time Weight is absent or 0 the
last control point's weight is used).
Consecutive control points at different positions with increasing weight (a moving source) are
refused. Zero-time dwells are dropped after the axes are found. Positions: Control Point 3D
Position (300A,02D4) in patient coordinates mm. A control point with only a Control Point
Relative Position is placed on the channel's applicator path (below) at that arc length from the
path's first point; with no applicator path the plan is refused (relative positions alone do not
say where the dwells are).

Applicator path of a channel. Oncentra Brachy embeds a structure set in its RTPLAN under the
private element (300F,1000) (items with a ROIContourSequence whose contours are the catheter
paths; open-source readers such as pyTG43 use it). The path is, in this order: (a) the ROI the
channel's Referenced ROI Number (300C,0006) names, in the RTSTRUCT given (which must share the
plan's frame of reference), else in the embedded structure set: its contour points in order (any
contour type), joined into one polyline; (b) without a usable number, the one embedded path that
all the channel's dwells lie on (within 1 mm); none when zero or several do (the order of the
embedded ROIs is not the channel order in every Oncentra version).

Source axis per dwell, in this order (the rule used is kept per dwell, ``axis_rules``):
``orientation``: Control Point Orientation (300A,0412) of the dwell's first control point when
present and non-zero; ``applicator``: the direction of the applicator-path segment nearest to the
dwell, pointing towards the path's first point; ``neighbours``: the direction from the next dwell
to the previous one of the channel (central difference; one-sided at the ends), i.e. towards the
channel's first dwell; ``fallback``: a single-dwell channel with none of these gets the patient
z axis (0, 0, 1) and a warning (the TG-43 anisotropy then only approximates the true dose).

PDR. Number of Pulses (300A,028A) and Pulse Repetition Interval (300A,028C) of every channel are
required; Channel Total Time and the dwell times are those of one pulse.

Dose references. Dose Reference Sequence items with Dose Reference Point Coordinates (300A,0018)
are the points a second check can compute. The TPS's dose at a point (:func:`tps_point_dose_gy`):
the standard form, when any channel's last control point references the point, is the sum over
channels of Cumulative Dose Reference Coefficient x Brachy Application Setup Dose x fractions
(x pulses for PDR); otherwise the vendor form, Target Prescription Dose x fractions (x pulses for
PDR: it is one delivery's dose); otherwise none.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from iortopt.dicom.files import read_dataset, tag_text
from iortopt.errors import InputFileError

#: Two control points closer than this (mm) are at the same position (a dwell).
SAME_POSITION_MM = 0.01
#: Dates before this year are anonymisation placeholders (19000101, 00010101, ...).
PLACEHOLDER_BEFORE_YEAR = 1950
FALLBACK_AXIS = (0.0, 0.0, 1.0)
#: A channel without a Referenced ROI Number lies on an embedded applicator path when every one
#: of its dwells is within this distance (mm) of it.
PATH_MATCH_MM = 1.0
AXIS_RULES = ("orientation", "applicator", "neighbours", "fallback")


@dataclass(frozen=True)
class PlanSource:
    """The plan's source: S_K (U) as written, valid at ``reference_datetime`` (None: absent)."""

    number: int
    model: str
    manufacturer: str
    isotope: str
    half_life_days: float | None  # None: not in the plan (the dataset's is used)
    active_length_mm: float
    sk_U: float
    reference_datetime: dt.datetime | None


@dataclass(frozen=True, eq=False)
class Channel:
    """One channel: dwells (K, 3) mm, times (K,) s of one pulse, axes (K, 3) unit, the rule that
    gave each axis, and the coefficients of its last control point (dose reference number ->
    Cumulative Dose Reference Coefficient)."""

    number: int
    setup_number: int
    afterloader_channel_id: str
    source_applicator_id: str
    referenced_roi_number: int | None
    channel_total_time_s: float
    n_pulses: int
    pulse_interval_s: float | None
    positions_mm: np.ndarray
    times_s: np.ndarray
    axes: np.ndarray
    axis_rules: tuple[str, ...]
    coefficients: dict[int, float]


@dataclass(frozen=True)
class DoseReference:
    """A Dose Reference item: coordinates mm (None: not a point) and its Target Prescription
    Dose (Gy, None when absent)."""

    number: int
    name: str
    xyz_mm: tuple[float, float, float] | None
    target_prescription_gy: float | None


@dataclass(frozen=True, eq=False)
class BrachyPlan:
    """A brachy RTPLAN as data (see the module docstring for every rule)."""

    path: str
    vendor: str
    treatment_type: str
    plan_datetime: dt.datetime | None
    source: PlanSource
    sk_tps_U: float
    sk_rule: str
    channels: tuple[Channel, ...]
    dose_references: tuple[DoseReference, ...]
    n_fractions: int
    setup_dose_gy: dict[int, float]
    total_reference_air_kerma_plan: float | None
    warnings: tuple[str, ...]
    frame_of_reference_uid: str = ""

    @property
    def positions_mm(self) -> np.ndarray:
        return np.concatenate([c.positions_mm for c in self.channels]).reshape(-1, 3)

    @property
    def axes(self) -> np.ndarray:
        return np.concatenate([c.axes for c in self.channels]).reshape(-1, 3)

    @property
    def times_s(self) -> np.ndarray:
        """Dwell times of one pulse (one fraction for HDR), s."""
        return np.concatenate([c.times_s for c in self.channels])

    @property
    def pulses(self) -> np.ndarray:
        """Per dwell: the number of pulses of its channel (1 for HDR)."""
        return np.concatenate([np.full(len(c.times_s), c.n_pulses) for c in self.channels])

    @property
    def n_dwells(self) -> int:
        return int(sum(len(c.times_s) for c in self.channels))


def _where(path: Path, *parts: str) -> str:
    return ": ".join([str(path), *parts])


def _float(item: Dataset, keyword: str, where: str, *, required: bool = False) -> float | None:
    value = item.get(keyword, None)
    if value in (None, "", b""):
        if required:
            raise InputFileError(
                f"{where}: required attribute {keyword} {tag_text(keyword)} is missing or empty"
            )
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputFileError(
            f"{where}: attribute {keyword} {tag_text(keyword)} is {value!r}; expected a number"
        ) from None
    if not np.isfinite(number):
        raise InputFileError(f"{where}: attribute {keyword} {tag_text(keyword)} is not finite")
    return number


def _triplet(item: Dataset, keyword: str, where: str) -> np.ndarray | None:
    value = item.get(keyword, None)
    if value in (None, "", b""):
        return None
    try:
        out = np.asarray([float(v) for v in value], float)
    except (TypeError, ValueError):
        out = np.array([np.nan])
    if out.shape != (3,) or not np.all(np.isfinite(out)):
        raise InputFileError(
            f"{where}: attribute {keyword} {tag_text(keyword)} is {value!r}; expected 3 numbers"
        )
    return out


def parse_dicom_datetime(date: str, time: str = "") -> dt.datetime | None:
    """A DA (+ optional TM) pair as a naive datetime; None when the date is empty or invalid."""
    date = str(date or "").strip()
    if not re.fullmatch(r"\d{8}", date):
        return None
    time = str(time or "").strip().split(".")[0].replace(":", "")
    time = (time + "000000")[:6] if re.fullmatch(r"\d{2,6}", time or "x") else "000000"
    try:
        return dt.datetime.strptime(date + time, "%Y%m%d%H%M%S")
    except ValueError:
        try:
            return dt.datetime.strptime(date, "%Y%m%d")
        except ValueError:
            return None


def is_placeholder(when: dt.datetime | None) -> bool:
    """Whether a date is missing or an anonymisation placeholder (before 1950)."""
    return when is None or when.year < PLACEHOLDER_BEFORE_YEAR


def vendor_of(ds: Dataset) -> str:
    """The planning system's convention from the Manufacturer (see the module docstring)."""
    maker = str(ds.get("Manufacturer", "") or "").lower()
    for key, vendor in (
        ("iortopt", "iortopt"),
        ("nucletron", "oncentra"),
        ("elekta", "oncentra"),
        ("varian", "brachyvision"),
        ("bebig", "sagiplan"),
        ("eckert", "sagiplan"),
    ):
        if key in maker:
            return vendor
    return "unknown"


def _sources(ds: Dataset, path: Path) -> dict[int, PlanSource]:
    if not ds.get("SourceSequence"):
        raise InputFileError(
            _where(path, "required attribute SourceSequence (300A,0210) is missing or empty")
        )
    out = {}
    for i, item in enumerate(ds.SourceSequence):
        where = _where(path, f"SourceSequence item {i}")
        sk = _float(item, "ReferenceAirKermaRate", where, required=True)
        if sk <= 0:
            raise InputFileError(
                f"{where}: ReferenceAirKermaRate (300A,022A) is {sk}; expected S_K > 0 in U "
                "(uGy m^2 h^-1)"
            )
        half_life = _float(item, "SourceIsotopeHalfLife", where)
        if half_life is not None and half_life <= 0:
            raise InputFileError(f"{where}: SourceIsotopeHalfLife (300A,0228) is {half_life}")
        number = int(item.get("SourceNumber", i + 1) or i + 1)
        out[number] = PlanSource(
            number=number,
            model=str(item.get("SourceModelID", "") or "").strip(),
            manufacturer=str(item.get("SourceManufacturer", "") or "").strip(),
            isotope=str(item.get("SourceIsotopeName", "") or "").strip(),
            half_life_days=half_life,
            active_length_mm=_float(item, "ActiveSourceLength", where) or 0.0,
            sk_U=sk,
            reference_datetime=parse_dicom_datetime(
                item.get("SourceStrengthReferenceDate", ""),
                item.get("SourceStrengthReferenceTime", ""),
            ),
        )
    return out


def applicator_roi_paths(
    rtstruct_path: str | Path | None, plan_frame_uid: str = ""
) -> dict[int, np.ndarray]:
    """ROI number -> (K, 3) mm polyline of all its contour points in order (any geometric type:
    applicators are usually OPEN_NONPLANAR or POINT contours, which the structure-set reader for
    volumes skips).

    Raises:
        InputFileError: not an RTSTRUCT, malformed contour data, or a frame of reference other
            than ``plan_frame_uid`` (when both are given).
    """
    if rtstruct_path is None:
        return {}
    path = Path(rtstruct_path)
    ds = read_dataset(path)
    if ds.get("Modality") != "RTSTRUCT" and "ROIContourSequence" not in ds:
        raise InputFileError(f"{path}: not an RTSTRUCT (Modality {ds.get('Modality')!r})")
    frames = {
        str(f.get("FrameOfReferenceUID", "") or "")
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
    } | {str(ds.get("FrameOfReferenceUID", "") or "")}
    frames -= {""}
    if plan_frame_uid and frames and plan_frame_uid not in frames:
        raise InputFileError(
            f"{path}: the RTSTRUCT is in frame of reference {sorted(frames)}, the RTPLAN in "
            f"{plan_frame_uid}; they do not belong to the same study"
        )
    return contour_paths(ds, str(path))


def contour_paths(ds: Dataset, where: str) -> dict[int, np.ndarray]:
    """Referenced ROI Number -> all contour points of the ROI in order, (K, 3) mm, from the
    ROIContourSequence of ``ds`` (an RTSTRUCT, or Oncentra's embedded structure set)."""
    paths = {}
    for i, item in enumerate(ds.get("ROIContourSequence", []) or []):
        if item.get("ReferencedROINumber", None) in (None, ""):
            continue
        points = []
        for k, contour in enumerate(item.get("ContourSequence", []) or []):
            data = contour.get("ContourData", None) or []
            try:
                values = np.asarray([float(v) for v in data], float)
            except (TypeError, ValueError):
                values = np.array([np.nan])
            if values.size % 3 or not np.all(np.isfinite(values)):
                raise InputFileError(
                    f"{where}: ROIContourSequence item {i} contour {k}: ContourData must be "
                    "x, y, z triplets"
                )
            points.append(values.reshape(-1, 3))
        if points:
            paths[int(item.ReferencedROINumber)] = np.concatenate(points)
    return paths


#: Oncentra's private element holding an embedded structure set with the applicator paths.
ONCENTRA_APPLICATORS_TAG = 0x300F1000


def embedded_applicator_paths(ds: Dataset, path: Path) -> dict[int, np.ndarray]:
    """ROI number -> path of the structure set Oncentra embeds in its RTPLAN (private element
    (300F,1000), a sequence whose items carry a ROIContourSequence); {} when absent."""
    if ONCENTRA_APPLICATORS_TAG not in ds:
        return {}
    element = ds[ONCENTRA_APPLICATORS_TAG]
    if element.VR != "SQ":
        return {}
    paths = {}
    for item in element.value:
        paths |= contour_paths(item, f"{path}: private (300F,1000)")
    return paths


def _polyline(points: np.ndarray | None) -> np.ndarray | None:
    if points is None or len(points) < 2:
        return None
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-9])
    points = points[keep]
    return points if len(points) >= 2 else None


def distance_to_path_mm(path_mm: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Distance (mm) of each point (N, 3) to the polyline (K, 3)."""
    a, ab = path_mm[:-1], np.diff(path_mm, axis=0)
    rel = points_mm[:, None, :] - a[None]
    t = np.clip(np.einsum("nkj,kj->nk", rel, ab) / np.einsum("kj,kj->k", ab, ab), 0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(nearest - points_mm[:, None, :], axis=-1).min(axis=1)


def _applicator_path(channel, roi_paths, embedded, positions_mm) -> np.ndarray | None:
    """The channel's applicator path (module docstring, rules a and b), or None."""
    roi = channel.get("ReferencedROINumber", None)
    if roi not in (None, ""):
        path = _polyline(roi_paths.get(int(roi), embedded.get(int(roi))))
        if path is not None:
            return path
    if positions_mm is None or not embedded:
        return None
    hits = []
    for candidate in embedded.values():
        path = _polyline(candidate)
        if path is not None and distance_to_path_mm(path, positions_mm).max() <= PATH_MATCH_MM:
            hits.append(path)
    return hits[0] if len(hits) == 1 else None


def point_at_arc_length(path_mm: np.ndarray, arc_mm: float) -> np.ndarray:
    """The point of a polyline at arc length ``arc_mm`` from its first point (clamped to it)."""
    lengths = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path_mm, axis=0), axis=1))])
    return np.array([np.interp(arc_mm, lengths, path_mm[:, k]) for k in range(3)])


def segment_axis(path_mm: np.ndarray, point_mm: np.ndarray) -> np.ndarray:
    """Unit direction of the path segment nearest to ``point_mm``, towards the path's first
    point."""
    a, b = path_mm[:-1], path_mm[1:]
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", point_mm - a, ab) / np.einsum("ij,ij->i", ab, ab), 0, 1)
    nearest = a + t[:, None] * ab
    k = int(np.argmin(np.linalg.norm(nearest - point_mm, axis=1)))
    return -ab[k] / np.linalg.norm(ab[k])


def neighbour_axes(positions_mm: np.ndarray) -> np.ndarray:
    """Per dwell, the unit direction from the next dwell to the previous one (towards the first
    dwell; one-sided at the ends; positions repeated are skipped). (K, 3); rows of nan where
    every dwell is at the same place."""
    k = len(positions_mm)
    out = np.full((k, 3), np.nan)
    for i in range(k):
        before = [j for j in range(i - 1, -1, -1) if _apart(positions_mm[j], positions_mm[i])]
        after = [j for j in range(i + 1, k) if _apart(positions_mm[j], positions_mm[i])]
        tip_side = positions_mm[before[0]] if before else positions_mm[i]
        back_side = positions_mm[after[0]] if after else positions_mm[i]
        direction = tip_side - back_side
        norm = np.linalg.norm(direction)
        if norm > SAME_POSITION_MM:
            out[i] = direction / norm
    return out


def _apart(p: np.ndarray, q: np.ndarray) -> bool:
    return bool(np.linalg.norm(p - q) > SAME_POSITION_MM)


def _control_points(channel, where, path_mm):
    """(positions (M, 3), weights (M,), orientations list) of a channel's control points."""
    cps = list(channel.get("BrachyControlPointSequence", []) or [])
    if not cps:
        raise InputFileError(f"{where}: BrachyControlPointSequence (300A,02D0) is missing or empty")
    positions, weights, orientations = [], [], []
    for i, cp in enumerate(cps):
        here = f"{where}: control point {i}"
        position = _triplet(cp, "ControlPoint3DPosition", here)
        if position is None:
            relative = _float(cp, "ControlPointRelativePosition", here)
            if relative is None:
                raise InputFileError(
                    f"{here}: neither ControlPoint3DPosition (300A,02D4) nor "
                    "ControlPointRelativePosition (300A,02D2)"
                )
            if path_mm is None:
                raise InputFileError(
                    f"{here}: only a ControlPointRelativePosition (300A,02D2), no "
                    "ControlPoint3DPosition (300A,02D4), and the channel has no applicator "
                    "geometry (no RTSTRUCT ROI, no applicator sequence): the dwell positions are "
                    "unknown; give --rtstruct with the channel's applicator ROI"
                )
            position = point_at_arc_length(path_mm, relative)
        positions.append(position)
        weights.append(_float(cp, "CumulativeTimeWeight", here, required=True))
        orientations.append(_triplet(cp, "ControlPointOrientation", here))
    weights = np.asarray(weights, float)
    if np.any(np.diff(weights) < -1e-9):
        raise InputFileError(f"{where}: CumulativeTimeWeight (300A,02D6) decreases")
    return np.asarray(positions), weights, orientations, cps


def _coefficients(cp: Dataset) -> dict[int, float]:
    out = {}
    for ref in cp.get("BrachyReferencedDoseReferenceSequence", []) or []:
        number = ref.get("ReferencedDoseReferenceNumber", None)
        value = ref.get("CumulativeDoseReferenceCoefficient", None)
        if number not in (None, "") and value not in (None, ""):
            out[int(number)] = float(value)
    return out


def _all_3d_positions(channel) -> np.ndarray | None:
    """The 3-D positions of every control point, or None when any lacks one."""
    points = []
    for cp in channel.get("BrachyControlPointSequence", []) or []:
        value = cp.get("ControlPoint3DPosition", None)
        if not value or len(value) != 3:
            return None
        try:
            points.append([float(v) for v in value])
        except (TypeError, ValueError):
            return None
    return np.asarray(points, float) if points else None


def _read_channel(
    channel, setup_number, where, roi_paths, embedded, treatment_type, warnings
) -> Channel:
    path_mm = _applicator_path(channel, roi_paths, embedded, _all_3d_positions(channel))
    positions, weights, orientations, cps = _control_points(channel, where, path_mm)
    total = _float(channel, "ChannelTotalTime", where, required=True)
    if total < 0:
        raise InputFileError(f"{where}: ChannelTotalTime (300A,0286) is negative ({total})")
    final = _float(channel, "FinalCumulativeTimeWeight", where) or float(weights[-1])
    scale = total / final if final > 0 else 0.0
    dwell_pos, dwell_time, dwell_orient = [], [], []
    for i in range(len(positions) - 1):
        same = not _apart(positions[i], positions[i + 1])
        dw = weights[i + 1] - weights[i]
        if same:
            dwell_pos.append(positions[i])
            dwell_time.append(dw * scale)
            dwell_orient.append(orientations[i])
        elif dw > 1e-9:
            raise InputFileError(
                f"{where}: control points {i} and {i + 1} are at different positions with "
                "increasing CumulativeTimeWeight (a moving source); only stepwise dwells are "
                "supported"
            )
    if len(positions) == 1:  # a lone control point: no time can be attached to it
        raise InputFileError(f"{where}: one control point only; a dwell needs a pair")
    dwell_pos = np.asarray(dwell_pos, float).reshape(-1, 3)
    neighbours = neighbour_axes(dwell_pos)
    axes, rules = [], []
    for k, position in enumerate(dwell_pos):
        orient = dwell_orient[k]
        if orient is not None and np.linalg.norm(orient) > 1e-9:
            axes.append(orient / np.linalg.norm(orient))
            rules.append("orientation")
        elif path_mm is not None:
            axes.append(segment_axis(path_mm, position))
            rules.append("applicator")
        elif np.all(np.isfinite(neighbours[k])):
            axes.append(neighbours[k])
            rules.append("neighbours")
        else:
            axes.append(np.asarray(FALLBACK_AXIS))
            rules.append("fallback")
    number = int(channel.get("ChannelNumber", 0) or 0)
    times = np.asarray(dwell_time, float)
    active = times > 0
    if "fallback" in [r for r, a in zip(rules, active, strict=True) if a]:
        warnings.append(
            f"channel {number}: a single dwell with no Control Point Orientation and no "
            f"applicator path; its source axis is taken as the patient z axis {FALLBACK_AXIS} "
            "(anisotropy approximate)"
        )
    n_pulses, interval = 1, None
    if treatment_type == "PDR":
        pulses = _float(channel, "NumberOfPulses", where, required=True)
        if pulses < 1 or pulses != int(pulses):
            raise InputFileError(f"{where}: NumberOfPulses (300A,028A) is {pulses}; expected >= 1")
        n_pulses = int(pulses)
        interval = _float(channel, "PulseRepetitionInterval", where, required=True)
    roi = channel.get("ReferencedROINumber", None)
    return Channel(
        number=number,
        setup_number=setup_number,
        afterloader_channel_id=str(channel.get("AfterloaderChannelID", "") or ""),
        source_applicator_id=str(channel.get("SourceApplicatorID", "") or ""),
        referenced_roi_number=None if roi in (None, "") else int(roi),
        channel_total_time_s=total,
        n_pulses=n_pulses,
        pulse_interval_s=interval,
        positions_mm=dwell_pos[active],
        times_s=times[active],
        axes=np.asarray(axes, float).reshape(-1, 3)[active],
        axis_rules=tuple(r for r, a in zip(rules, active, strict=True) if a),
        coefficients=_coefficients(cps[-1]),
    )


def _dose_references(ds: Dataset, path: Path) -> tuple[DoseReference, ...]:
    refs = []
    for i, item in enumerate(ds.get("DoseReferenceSequence", []) or []):
        where = _where(path, f"DoseReferenceSequence item {i}")
        xyz = _triplet(item, "DoseReferencePointCoordinates", where)
        number = int(item.get("DoseReferenceNumber", i + 1) or i + 1)
        name = str(item.get("DoseReferenceDescription", "") or f"point {number}")
        refs.append(
            DoseReference(
                number,
                name,
                None if xyz is None else tuple(float(v) for v in xyz),
                _float(item, "TargetPrescriptionDose", where),
            )
        )
    return tuple(refs)


def _fractions(ds: Dataset, path: Path) -> tuple[int, dict[int, float]]:
    groups = ds.get("FractionGroupSequence", []) or []
    if not groups:
        return 1, {}
    group = groups[0]
    where = _where(path, "FractionGroupSequence item 0")
    n = _float(group, "NumberOfFractionsPlanned", where) or 1
    doses = {}
    for item in group.get("ReferencedBrachyApplicationSetupSequence", []) or []:
        dose = _float(item, "BrachyApplicationSetupDose", where)
        if dose is not None:
            doses[int(item.get("ReferencedBrachyApplicationSetupNumber", 1) or 1)] = dose
    return int(n), doses


def _date_warnings(plan_time, source: PlanSource) -> list[str]:
    out = []
    if is_placeholder(plan_time):
        out.append(
            "the plan date (RTPlanDate) is missing or a placeholder "
            f"({plan_time.date().isoformat() if plan_time else 'absent'}; anonymised?): give the "
            "treatment time with --treatment for the decay"
        )
    if is_placeholder(source.reference_datetime):
        ref = source.reference_datetime
        out.append(
            "the source strength reference date (SourceStrengthReferenceDate) is missing or a "
            f"placeholder ({ref.date().isoformat() if ref else 'absent'}); the decay to the "
            "treatment time is unknown"
        )
    elif plan_time is not None and not is_placeholder(plan_time):
        if plan_time < source.reference_datetime:
            out.append(
                f"the plan ({plan_time.isoformat()}) is dated before the source strength "
                f"reference date ({source.reference_datetime.isoformat()})"
            )
    return out


def read_brachy_plan(path: str | Path, rtstruct: str | Path | None = None) -> BrachyPlan:
    """Read an HDR/PDR brachy RTPLAN (rules in the module docstring).

    Args:
        path: the RTPLAN file.
        rtstruct: the RTSTRUCT holding the channels' applicator ROIs (optional).

    Raises:
        InputFileError: not a brachy RTPLAN, an unsupported treatment type, or a required
            attribute missing or malformed (named with its tag).
    """
    path = Path(path)
    ds = read_dataset(path)
    if ds.get("Modality") not in (None, "", "RTPLAN") or "SOPClassUID" not in ds:
        raise InputFileError(f"{path}: not an RTPLAN (Modality {ds.get('Modality')!r})")
    if "ApplicationSetupSequence" not in ds:
        kind = "an external-beam plan (Beam Sequence)" if "BeamSequence" in ds else "no"
        raise InputFileError(
            f"{path}: not a brachytherapy RTPLAN: ApplicationSetupSequence (300A,0230) is "
            f"missing ({kind} RT Brachy Application Setups module)"
        )
    treatment_type = str(ds.get("BrachyTreatmentType", "") or "").upper()
    if treatment_type not in ("HDR", "PDR"):
        raise InputFileError(
            f"{path}: BrachyTreatmentType (300A,0202) is {treatment_type or 'absent'!r}; only "
            "HDR and PDR plans can be checked"
        )
    sources = _sources(ds, path)
    frame = str(ds.get("FrameOfReferenceUID", "") or "")
    roi_paths = applicator_roi_paths(rtstruct, frame)
    embedded = embedded_applicator_paths(ds, path)
    warnings: list[str] = []
    channels, trak, setup_numbers = [], 0.0, []
    used_sources = set()
    for s, setup in enumerate(ds.ApplicationSetupSequence):
        setup_number = int(setup.get("ApplicationSetupNumber", s + 1) or s + 1)
        setup_numbers.append(setup_number)
        value = _float(setup, "TotalReferenceAirKerma", _where(path, f"setup {s}"))
        trak = None if value is None or trak is None else trak + value
        for c, channel in enumerate(setup.get("ChannelSequence", []) or []):
            where = _where(path, f"ApplicationSetupSequence item {s}", f"ChannelSequence item {c}")
            number = int(channel.get("ReferencedSourceNumber", 0) or 0) or min(sources)
            if number not in sources:
                raise InputFileError(
                    f"{where}: ReferencedSourceNumber (300C,000E) {number} is not in the "
                    f"SourceSequence ({sorted(sources)})"
                )
            used_sources.add(number)
            channels.append(
                _read_channel(
                    channel, setup_number, where, roi_paths, embedded, treatment_type, warnings
                )
            )
    if not channels or not any(len(c.times_s) for c in channels):
        raise InputFileError(f"{path}: no channel has a dwell with time > 0")
    if len(used_sources) > 1:
        raise InputFileError(f"{path}: channels use several sources {sorted(used_sources)}")
    source = sources[used_sources.pop()]
    plan_time = parse_dicom_datetime(ds.get("RTPlanDate", ""), ds.get("RTPlanTime", ""))
    warnings = _date_warnings(plan_time, source) + warnings
    n_fractions, setup_dose = _fractions(ds, path)
    vendor = vendor_of(ds)
    sk, rule = source.sk_U, "Reference Air Kerma Rate as written"
    total_time = float(sum(c.times_s.sum() for c in channels))
    if vendor == "iortopt" and trak and total_time > 0:
        sk = trak * 3600.0 / total_time
        rule = "iortopt export: Total Reference Air Kerma / total dwell time"
    return BrachyPlan(
        path=str(path),
        vendor=vendor,
        treatment_type=treatment_type,
        plan_datetime=plan_time,
        source=source,
        sk_tps_U=sk,
        sk_rule=rule,
        channels=tuple(channels),
        dose_references=_dose_references(ds, path),
        n_fractions=n_fractions,
        setup_dose_gy=setup_dose,
        total_reference_air_kerma_plan=trak if trak else None,
        warnings=tuple(warnings),
        frame_of_reference_uid=frame,
    )


def tps_point_dose_gy(plan: BrachyPlan, ref: DoseReference) -> tuple[float | None, str]:
    """The TPS's total dose (Gy, all fractions and pulses) at a dose reference and which encoding
    gave it (``coefficient``, ``target_prescription_dose`` or ``none``); module docstring."""
    pulses = max(c.n_pulses for c in plan.channels)
    if any(ref.number in c.coefficients for c in plan.channels):
        total = 0.0
        for c in plan.channels:
            setup_dose = plan.setup_dose_gy.get(c.setup_number)
            if setup_dose is None:
                raise InputFileError(
                    f"{plan.path}: BrachyApplicationSetupDose (300A,00A4) of setup "
                    f"{c.setup_number} is missing; needed for the Cumulative Dose Reference "
                    "Coefficients"
                )
            total += c.coefficients.get(ref.number, 0.0) * setup_dose * c.n_pulses
        return total * plan.n_fractions, "coefficient"
    if ref.target_prescription_gy is not None:
        return ref.target_prescription_gy * plan.n_fractions * pulses, "target_prescription_dose"
    return None, "none"


# --- source data: the plan's model and isotope against TG-43 datasets ---

#: Normalised model-name aliases (lowercase letters and digits only) -> packaged model name.
MODEL_ALIASES = {
    "mhdrv2": "mHDR-v2",
    "mhdrv2r": "mHDR-v2",
    "microselectronv2": "mHDR-v2",
    "microselectronhdrv2": "mHDR-v2",
    "microselectronv2r": "mHDR-v2",
    "mhdrv1": "mHDR-v1",
    "microselectronv1": "mHDR-v1",
    "microselectronhdrv1": "mHDR-v1",
    "flexisource": "Flexisource",
    "flexisourceir192": "Flexisource",
    "gammamedplus": "GammaMedPlus",
    "gammamedhdrplus": "GammaMedPlus",
    "gammamedplushdr": "GammaMedPlus",
    "gammamed12i": "GammaMed12i",
    "gammamedhdr12i": "GammaMed12i",
    "vs2000": "VS2000",
    "varisourcevs2000": "VS2000",
    "varisource2000": "VS2000",
    "varisourceclassic": "VariSource-classic",
    "gi192m11": "BEBIG-GI192M11",
    "bebiggi192m11": "BEBIG-GI192M11",
    "ir2a852": "BEBIG-GI192M11",
    "m19": "M-19",
}


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def normalise_isotope(name: str) -> str:
    """``Ir-192``, ``IRIDIUM-192``, ``192Ir`` -> ``ir192`` (letters of the element symbol and
    mass number); "" when empty."""
    text = _normalise(name)
    symbols = {"iridium": "ir", "cobalt": "co", "iodine": "i", "palladium": "pd", "cesium": "cs"}
    for word, symbol in symbols.items():
        text = text.replace(word, symbol)
    match = re.fullmatch(r"([a-z]+)(\d+)|(\d+)([a-z]+)", text)
    if not match:
        return text
    return (match.group(1) or match.group(4)) + (match.group(2) or match.group(3))


def model_of(source: PlanSource) -> str | None:
    """The packaged model name the plan's Source Model ID stands for, or None (unknown)."""
    text = _normalise(source.model)
    if not text:
        return None
    if text in MODEL_ALIASES:
        return MODEL_ALIASES[text]
    hits = {model for alias, model in MODEL_ALIASES.items() if len(alias) >= 4 and alias in text}
    return hits.pop() if len(hits) == 1 else None


def resolve_source(source: PlanSource, requested: str | None):
    """The TG-43 dataset for the plan's source, and warnings.

    ``requested`` (``--source``: a packaged key/model name or a TOML file) wins, but its model
    must be the one the plan's Source Model ID stands for (when that is known) and its isotope
    the plan's; without it the plan's model must map to a packaged dataset.

    Raises:
        ConfigError: naming ``--source``: a mismatch, or an unknown model with no ``--source``.
        SourceDataError: ``requested`` is not a dataset (unknown name, invalid file).
    """
    from iortopt.errors import ConfigError
    from iortopt.physics.sources import load_source

    plan_model = model_of(source)
    warnings = []
    if requested is None:
        if plan_model is None:
            raise ConfigError(
                f"--source: the plan's Source Model ID {source.model!r} (isotope "
                f"{source.isotope!r}) does not map to a packaged TG-43 dataset; name one with "
                "--source NAME|FILE.toml"
            )
        data = load_source(plan_model)
    else:
        data = load_source(requested)
        if plan_model is not None and _normalise(data.name) != _normalise(plan_model):
            raise ConfigError(
                f"--source {requested}: dataset model {data.name!r}, but the plan's source is "
                f"{source.model!r} ({plan_model}); name the plan's model or fix the plan"
            )
        if plan_model is None:
            warnings.append(
                f"the plan's Source Model ID {source.model!r} is not a known model: using "
                f"--source {requested} ({data.key}) unverified"
            )
    plan_iso, data_iso = normalise_isotope(source.isotope), normalise_isotope(data.isotope)
    if plan_iso and plan_iso != data_iso:
        raise ConfigError(
            f"--source: dataset {data.key} is {data.isotope}, the plan's source is "
            f"{source.isotope!r}"
        )
    if source.half_life_days is None:
        warnings.append(
            f"the plan gives no SourceIsotopeHalfLife; the dataset's {data.half_life_days:g} d "
            "is used for the decay"
        )
    elif abs(source.half_life_days - data.half_life_days) > 0.01 * data.half_life_days:
        warnings.append(
            f"the plan's half-life {source.half_life_days:g} d differs from the dataset's "
            f"{data.half_life_days:g} d; the plan's is used for the decay"
        )
    if source.active_length_mm and abs(source.active_length_mm - 10 * data.active_length_cm) > 0.05:
        warnings.append(
            f"the plan's active length {source.active_length_mm:g} mm differs from the "
            f"dataset's {10 * data.active_length_cm:g} mm"
        )
    return data, warnings
