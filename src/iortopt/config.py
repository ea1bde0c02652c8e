"""Plan configuration: pydantic models of a TOML plan file, and ``load_config``.

A config is data: it is parsed with ``tomllib`` and validated here, never evaluated. Every error
names the field (dotted path), the value given and what was expected. ``iortopt init NAME``
writes an annotated template; ``configs/`` holds the shipped examples.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from iortopt.errors import ConfigError
from iortopt.io.toml_file import read_toml_and_text

#: Every float of a config is finite: ``inf`` and ``nan`` (valid TOML) are refused, whether the
#: field is typed with these aliases or not (``allow_inf_nan=False`` in the models' config covers
#: floats nested in tuples, lists and dicts too).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PlanSection(_Model):
    name: str = Field("plan", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    modality: Literal["hdr_flap", "xray_sphere", "electron"] = "hdr_flap"
    description: str = ""


DicomSpacing = Literal["ct"] | PositiveFloat | tuple[PositiveFloat, PositiveFloat, PositiveFloat]


class DicomStructure(_Model):
    """One planning structure taken from an RTSTRUCT ROI (``roi``: its ROI Name). Roles: see
    ``iortopt.cases.case`` (``body``: the patient outline, defines the body mask; ``cavity``: the
    surgical cavity; both reported, neither an OAR)."""

    roi: str = Field(min_length=1)
    role: Literal["target", "oar", "cavity", "body", "other"] = "oar"


class DicomCaseSection(_Model):
    """``kind = "dicom"``: a CT series and its RTSTRUCT (see ``iortopt.cases.dicom_case``).

    Paths are relative to the working directory. ``structures`` maps planning structure names
    (used by objectives and goals) to RTSTRUCT ROI names and roles; other ROIs are ignored.
    ``spacing_mm``: ``"ct"`` (the CT voxels) or a dose grid spacing (one value or x, y, z).
    ``crop``: cut the grid to the mapped ROIs (and catheters) plus ``margin_mm``.
    ``hu_calibration``: the CT number -> density table, a packaged name or a TOML file path
    (format: ``iortopt/data/hu/generic_ct_calibration.toml``; the default is ILLUSTRATIVE).
    """

    ct_folder: str = Field(min_length=1)
    rtstruct: str | None = None
    series_uid: str | None = None
    structures: dict[str, DicomStructure] = Field(min_length=1)
    spacing_mm: DicomSpacing = "ct"
    crop: bool = True
    margin_mm: NonNegativeFloat = 20.0
    supersample: Annotated[int, Field(ge=1, le=16)] = 8
    hu_calibration: str = Field("generic_ct_calibration", min_length=1)


class CaseSection(_Model):
    """Anatomy. ``kind = "builtin_flap"``: the parametric presacral flap case, ``flap`` overrides
    its parameters (``iortopt.cases.flap.FlapCaseParams``); ``kind = "builtin_breast"``: the
    breast lumpectomy case, ``breast`` overrides ``iortopt.cases.breast.BreastCaseParams``;
    ``kind = "builtin_eliot"``: the ELIOT-type breast for electrons, ``eliot`` overrides
    ``iortopt.cases.eliot.EliotCaseParams``."""

    kind: Literal["builtin_flap", "builtin_breast", "builtin_eliot", "dicom"] = "builtin_flap"
    flap: dict[str, Any] = Field(default_factory=dict)
    breast: dict[str, Any] = Field(default_factory=dict)
    eliot: dict[str, Any] = Field(default_factory=dict)
    dicom: DicomCaseSection | None = None

    @model_validator(mode="after")
    def _dicom_section(self):
        if self.kind == "dicom" and self.dicom is None:
            raise ValueError('kind = "dicom" needs a [case.dicom] section (ct_folder, structures)')
        own = {"builtin_flap": "flap", "builtin_breast": "breast", "builtin_eliot": "eliot"}
        unused = [
            f"[case.{name}]"
            for name in ("flap", "breast", "eliot", "dicom")
            if name != own.get(self.kind, "dicom") and getattr(self, name)
        ]
        if unused:
            raise ValueError(
                f"{', '.join(unused)}: not used by case.kind {self.kind!r} (remove it)"
            )
        return self


def _has_zone(value: dt.date) -> bool:
    return isinstance(value, dt.datetime) and value.utcoffset() is not None


class SourceSection(_Model):
    model: str = "mHDR-v2_HEBD2012"
    air_kerma_strength_U: PositiveFloat = 40700.0
    calibration: dt.datetime | dt.date | None = None
    treatment: dt.datetime | dt.date | None = None
    formalism: Literal["2d", "1d"] = "2d"

    @field_validator("calibration", "treatment", mode="before")
    @classmethod
    def _not_a_number(cls, value):
        if isinstance(value, (int, float)):
            raise ValueError("expected a date-time such as 2026-11-23T10:00:00")
        return value

    @model_validator(mode="after")
    def _times(self):
        if (self.calibration is None) != (self.treatment is None):
            raise ValueError("give both calibration and treatment (for decay) or neither")
        zones = {_has_zone(t) for t in (self.calibration, self.treatment) if t is not None}
        if len(zones) > 1:
            raise ValueError(
                "calibration and treatment: give both with a UTC offset (e.g. ...T10:00:00Z) "
                "or both without one"
            )
        return self


class ApplicatorSection(_Model):
    step_mm: PositiveFloat = 5.0
    active: Literal["auto"] | Annotated[list[tuple[int, int]], Field(min_length=1)] = "auto"
    active_margin_mm: NonNegativeFloat = 5.0
    max_dwell_time_s: PositiveFloat = 60.0
    # DICOM cases (case.kind = "dicom"): catheter polylines in patient mm, tip first, and the
    # catheter-to-tissue distance used for automatic active dwells.
    catheters_mm: list[list[tuple[FiniteFloat, FiniteFloat, FiniteFloat]]] | None = None
    source_to_surface_mm: PositiveFloat = 5.0
    # DICOM cases: catheters and dwell positions from a clinical brachy RTPLAN (its dwell times
    # are re-optimised; both plans are reported in summary.json). Excludes catheters_mm.
    from_rtplan: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_catheter_source(self):
        if self.from_rtplan is not None and self.catheters_mm is not None:
            raise ValueError("give catheters_mm or from_rtplan, not both")
        return self


class PrescriptionSection(_Model):
    dose_gy: PositiveFloat = 10.0
    structure: str = "CTV"
    n_fractions: Annotated[int, Field(ge=1)] = 1


class Objective(_Model):
    """One weighted term. Types and their fields:

    - ``underdose`` / ``overdose``: quadratic penalty below/above ``dose_gy``.
    - ``max_dose``: penalty on a smooth maximum of the structure dose above ``dose_gy``.
    - ``mean_dose``: penalty on the mean dose above ``dose_gy`` (0 = minimise the mean).
    - ``dvh_min`` / ``dvh_max``: at least / at most ``volume_percent`` (or ``volume_cc``) of the
      structure at or above ``dose_gy`` (D_x >= dose or D_x <= dose).
    - ``modulation``: dwell-time modulation restriction (neighbouring dwells in a catheter).
    """

    type: Literal[
        "underdose", "overdose", "max_dose", "mean_dose", "dvh_min", "dvh_max", "modulation"
    ]
    structure: str | None = None
    dose_gy: NonNegativeFloat | None = None
    volume_percent: Annotated[float, Field(allow_inf_nan=False, gt=0, lt=100)] | None = None
    volume_cc: PositiveFloat | None = None
    weight: NonNegativeFloat = 1.0

    @model_validator(mode="after")
    def _fields_for_type(self):
        if self.type == "modulation":
            return self
        if self.structure is None:
            raise ValueError(f"objective type {self.type!r} needs 'structure'")
        if self.dose_gy is None:
            raise ValueError(f"objective type {self.type!r} needs 'dose_gy'")
        if self.type in ("dvh_min", "dvh_max"):
            if (self.volume_percent is None) == (self.volume_cc is None):
                raise ValueError(
                    f"objective type {self.type!r} needs one of volume_percent, volume_cc"
                )
        elif self.volume_percent is not None or self.volume_cc is not None:
            raise ValueError(f"objective type {self.type!r} takes no volume_percent/volume_cc")
        return self


class Goal(_Model):
    """A clinical goal checked on the final dose, e.g. CTV ``D90_gy >= 10``."""

    structure: str
    metric: str
    op: Literal[">=", "<="]
    value: FiniteFloat


class OptimizerSection(_Model):
    method: Literal["lbfgs", "adam"] = "lbfgs"
    max_iterations: Annotated[int, Field(ge=1, le=100000)] = 300
    tolerance: PositiveFloat = 1e-6
    learning_rate: PositiveFloat = 0.05
    voxel_margin_mm: NonNegativeFloat = 5.0
    influence: Literal["auto", "matrix", "matrix_free"] = "auto"
    influence_memory_mb: PositiveFloat = 2048.0


class ParetoSection(_Model):
    """A set of Pareto plans (``[pareto]``, modality ``hdr_flap`` with the explicit influence
    matrix; see ``iortopt.modalities.hdr_flap.pareto``).

    ``objectives``: the groups that trade off. An entry is a structure name (the group is the sum
    of every ``[[objectives]]`` term on that structure, with its config weight) or an index into
    ``[[objectives]]`` (that term alone). Terms in no group (e.g. ``modulation``) stay in every
    plan with their config weight. Plan k minimises ``G * sum_g w_kg f_g + rest``, ``w_k`` on the
    simplex, so the centroid (1/G, ...) is the nominal plan's objective.
    ``n_plans``: weight vectors (vertices, centroid, then a seeded scrambled Halton design mapped
    to the simplex). ``iterations``: fixed optimiser iterations of every plan, all plans in one
    compiled program; ``optimizer``: ``adam`` (``learning_rate``, in the bounded variable of
    ``times_from_u``) or ``lbfgs`` (vmapped, a line search per plan: for small problems; slow
    on the built-in flap case). ``block_plans``: plans per matrix product (0: 40 on a CPU,
    where a block that fits the cache is faster, all K on a GPU).
    """

    objectives: list[str | Annotated[int, Field(ge=0)]] = Field(min_length=2)
    n_plans: Annotated[int, Field(ge=1, le=100000)] = 1000
    method: Literal["weights"] = "weights"
    iterations: Annotated[int, Field(ge=1, le=100000)] = 100
    optimizer: Literal["adam", "lbfgs"] = "adam"
    learning_rate: PositiveFloat = 0.02
    seed: Annotated[int, Field(ge=0)] = 0
    block_plans: Annotated[int, Field(ge=0)] = 0


class XraySection(_Model):
    """50 kV X-ray spherical applicators (modality ``xray_sphere``)."""

    beam: str = "generic_50kV_spheres"
    prescription_mode: Literal["surface", "depth"] = "surface"
    prescription_depth_mm: PositiveFloat = 10.0
    catalogue_diameters_cm: list[PositiveFloat] | None = None
    min_skin_distance_mm: NonNegativeFloat = 5.0
    optimise_position: bool = True
    anisotropy: Annotated[float, Field(allow_inf_nan=False, ge=0, lt=1)] = 0.0
    # DICOM cases (case.kind = "dicom"; iortopt.modalities.xray_sphere.sphere_problem): the
    # applicator centre (patient LPS mm; default: the centroid of the cavity ROI), a spherical
    # cavity of cavity_radius_mm about it when no ROI has role "cavity", the thickness of the
    # tissue-shell target (when the prescription structure is not a mapped target ROI) and the
    # largest cavity-wall-to-applicator gap for which the tissue conforms.
    centre_mm: tuple[FiniteFloat, FiniteFloat, FiniteFloat] | None = None
    cavity_radius_mm: PositiveFloat | None = None
    target_thickness_mm: PositiveFloat = 10.0
    fit_tolerance_mm: PositiveFloat = 5.0


class ElectronSection(_Model):
    """Electron IORT with cones and a protective disc (modality ``electron``); see
    ``iortopt.modalities.electron.choice``. Catalogue lists default to everything in the beam
    file.

    On ``case.kind = "dicom"`` (``iortopt.modalities.electron.generic_case``): ``cone_end_mm``
    (the flat cone's end-face centre) and ``cone_axis`` (its beam direction, into the patient)
    in patient mm are required; ``disc_centre_mm`` / ``disc_normal`` place the disc's plane
    (default: across the axis at the target's deepest boundary on it). Built-in cases refuse
    them (their cone sits on the phantom's surface).
    """

    beam: str = "generic_IOERT"
    isodose_percent: Annotated[float, Field(allow_inf_nan=False, gt=0, le=100)] = 90.0
    energies_mev: list[PositiveFloat] | None = None
    cone_diameters_cm: list[PositiveFloat] | None = None
    bevels_deg: list[NonNegativeFloat] | None = None
    toe_direction: tuple[FiniteFloat, FiniteFloat, FiniteFloat] = (0.0, -1.0, 0.0)
    max_axis_tilt_deg: Annotated[float, Field(allow_inf_nan=False, ge=0, lt=90)] = 30.0
    disc: str = "Al2_Pb4"
    disc_radius_mm: PositiveFloat = 45.0
    disc_margin_mm: NonNegativeFloat = 5.0
    disc_edge_mm: PositiveFloat = 0.5
    oar_weight: NonNegativeFloat = 0.1
    optimise_pose: bool = True
    max_shift_mm: NonNegativeFloat = 5.0
    max_air_gap_mm: NonNegativeFloat = 5.0
    max_tilt_deg: Annotated[float, Field(allow_inf_nan=False, ge=0, lt=45)] = 10.0
    max_disc_shift_mm: NonNegativeFloat = 5.0
    max_disc_tilt_deg: Annotated[float, Field(allow_inf_nan=False, ge=0, lt=45)] = 10.0
    iterations: Annotated[int, Field(ge=1, le=10000)] = 100
    cone_end_mm: tuple[FiniteFloat, FiniteFloat, FiniteFloat] | None = None
    cone_axis: tuple[FiniteFloat, FiniteFloat, FiniteFloat] | None = None
    disc_centre_mm: tuple[FiniteFloat, FiniteFloat, FiniteFloat] | None = None
    disc_normal: tuple[FiniteFloat, FiniteFloat, FiniteFloat] | None = None

    @field_validator("cone_axis", "disc_normal")
    @classmethod
    def _direction(cls, value):
        if value is not None and sum(v * v for v in value) < 1e-12:
            raise ValueError("a direction must not be the zero vector")
        return value


Vec3 = tuple[FiniteFloat, FiniteFloat, FiniteFloat]
Range2 = tuple[FiniteFloat, FiniteFloat]


class ShieldConfig(_Model):
    """One lead/tungsten shield (``[[shields]]``; model: ``iortopt.physics.shield``).

    The shield is a patch of a slab lying on a surface: ``surface = "behind_flap"`` (built-in flap
    case: moulded onto the back of the flap, between the applicator and the bowel) or
    ``"chest_wall"`` (built-in breast case: on the chest wall under the breast), or an explicit
    ``"plane"`` (``origin_mm``, unit ``normal``, in-plane ``axis_u``) or ``"cylinder"``
    (``origin_mm`` on the axis, ``axis_u`` = axis direction, ``normal`` = reference radial
    direction, ``radius_mm`` of the mid-surface). The patch centre slides on that surface within
    ``range_u_mm`` x ``range_v_mm`` (surface coordinates in mm: along ``axis_u`` and across it, an
    arc length on a cylinder) and, for a plane rectangle, its in-plane rotation within
    ``rotation_deg`` + ``rotation_range_deg``; ``sizes_mm`` is the catalogue the surgeon has:
    rectangles [length along u, width along v] or discs [diameter]. The optimiser chooses the size
    and the pose, keeping every point of the shield at least ``min_target_distance_mm`` from the
    target. ``protects`` lists OARs whose doses are reported with and without the shield.

    ``surface = "roi"`` (any case kind): the surface is fitted to the face of the planning
    structure ``roi`` that the applicator sees (:mod:`iortopt.optimisation.roi_surface`: the
    structure's surface points nearest to the dwell positions / sphere centre along rays, whose
    outward normal faces the applicator), with ``fit = "plane"`` (default) or ``"cylinder"``,
    using only the face within ``fit_radius_mm`` of its point nearest the applicator centre
    (default: the shield's reach, the largest half diagonal of ``sizes_mm`` plus the farthest
    corner of the ranges plus 10 mm). The sheet lies on that face on the applicator's side (its
    mid-surface half ``thickness_mm`` from the face, toward the applicator); the origin of (u, v)
    is the foot of the applicator centre on it, v = 0 on the side facing the centre; u runs along
    ``axis_u`` projected into a plane (optional, default patient x), or along the cylinder's
    axis (pointing along ``axis_u`` / +x).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    material: str = "lead"
    materials_file: str = "generic_shield_materials"
    thickness_mm: PositiveFloat = 2.0
    shape: Literal["rectangle", "disc"] = "rectangle"
    sizes_mm: list[list[PositiveFloat]] = Field(min_length=1)
    surface: Literal["behind_flap", "chest_wall", "plane", "cylinder", "roi"]
    origin_mm: Vec3 | None = None
    normal: Vec3 | None = None
    axis_u: Vec3 | None = None
    radius_mm: PositiveFloat | None = None
    roi: str | None = Field(default=None, min_length=1)
    fit: Literal["plane", "cylinder"] | None = None
    fit_radius_mm: PositiveFloat | None = None
    range_u_mm: Range2 = (0.0, 0.0)
    range_v_mm: Range2 = (0.0, 0.0)
    rotation_deg: FiniteFloat = 0.0
    rotation_range_deg: Range2 = (0.0, 0.0)
    optimise: bool = True
    min_target_distance_mm: NonNegativeFloat = 0.0
    protects: list[str] = Field(default_factory=list)
    edge_mm: Annotated[float, Field(allow_inf_nan=False, ge=0, le=10)] = 1.0

    @model_validator(mode="after")
    def _consistent(self):
        need = 1 if self.shape == "disc" else 2
        for size in self.sizes_mm:
            if len(size) != need:
                what = "[diameter]" if need == 1 else "[length_u, width_v]"
                raise ValueError(f"sizes_mm: each {self.shape} size is {what}, got {size}")
        for key in ("range_u_mm", "range_v_mm"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"{key}: the first value must not exceed the second")
        explicit = ("origin_mm", "normal", "axis_u")
        if self.surface in ("plane", "cylinder"):
            missing = [k for k in explicit if getattr(self, k) is None]
            if self.surface == "cylinder" and self.radius_mm is None:
                missing.append("radius_mm")
            if missing:
                raise ValueError(f"surface {self.surface!r} needs {', '.join(missing)}")
        elif self.surface == "roi":
            if self.roi is None:
                raise ValueError("surface 'roi' needs roi (the planning structure to fit)")
            given = [
                k for k in ("origin_mm", "normal", "radius_mm") if getattr(self, k) is not None
            ]
            if given:
                raise ValueError(f"surface 'roi' is fitted to the roi; remove {', '.join(given)}")
        else:
            given = [k for k in (*explicit, "radius_mm") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"surface {self.surface!r} is defined by the case; remove {', '.join(given)}"
                )
        if self.surface != "roi":
            given = [k for k in ("roi", "fit", "fit_radius_mm") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for surface 'roi'")
        rotating = self.rotation_deg != 0.0 or self.rotation_range_deg != (0.0, 0.0)
        if rotating and self.fitted_surface != "plane":
            raise ValueError("rotation_deg / rotation_range_deg apply to plane shields only")
        if self.rotation_range_deg != (0.0, 0.0) and self.shape == "disc":
            raise ValueError("rotation_range_deg: a disc has no in-plane orientation to optimise")
        low, high = self.rotation_range_deg
        if low > high:
            raise ValueError("rotation_range_deg: the first value must not exceed the second")
        return self

    @property
    def fitted_surface(self) -> str:
        """The surface's geometry kind: ``fit`` (default plane) for ``roi``, else ``surface``."""
        return (self.fit or "plane") if self.surface == "roi" else self.surface


class RadiobiologySection(_Model):
    alpha_beta_gy: dict[str, PositiveFloat] = Field(default_factory=dict)


class OutputSection(_Model):
    isodose_percent: list[PositiveFloat] = Field(
        default_factory=lambda: [50.0, 80.0, 100.0, 150.0, 200.0]
    )
    dose_chunk_size: Annotated[int, Field(ge=0)] = 0
    dicom: bool = False  # also write dicom/RTDOSE.dcm and dicom/RTPLAN.dcm


class ComputeSection(_Model):
    """Memory and devices (``iortopt.compute.memory``, ``iortopt.compute.sharding``).

    ``memory_limit_mb``: bytes the plan's arrays may use (default: the free device memory times
    ``safety_fraction``, less 1 GiB for the runtime on CPU); a plan that does not fit stops before
    it starts. ``chunk_size``: points per TG-43 chunk (0 = chosen from the budget).
    ``devices``: ``"all"`` local devices or a count; the voxel axis is split over them.
    """

    memory_limit_mb: PositiveFloat | None = None
    safety_fraction: Annotated[float, Field(allow_inf_nan=False, gt=0, le=1)] = 0.8
    chunk_size: Annotated[int, Field(ge=0)] = 0
    devices: Literal["all"] | Annotated[int, Field(ge=1)] = "all"


class RobustSection(_Model):
    """Robust evaluation and optimisation under geometric and dosimetric uncertainty
    (``[robust]``; :mod:`iortopt.optimisation.robust`, ``iortopt.modalities.<m>.scenarios``).

    Absent: the nominal plan only. ``scenarios = "plus_minus"``: the nominal scenario plus
    +sigma and -sigma along each uncertainty axis of the modality (one-sided axes such as a flap
    lifting off: +sigma only); ``"sampled"``: the nominal plus ``n_scenarios`` - 1 seeded Gaussian
    samples of every axis at once. ``optimise = false`` evaluates the plan in every scenario;
    ``true`` also optimises it against ``aggregate`` of each objective term over the scenarios:
    ``"expected"`` (mean), ``"worst"`` (smooth maximum: log-mean-exp with ``temperature``, a
    fraction of the term's largest scenario value, so scale-free; 0 = the exact maximum) or
    ``"cvar"`` (mean of the worst ``cvar_alpha`` fraction of the scenarios). ``magnitudes``:
    one sigma per axis, overriding the modality's documented defaults (its ``scenarios.py``
    ``DEFAULTS``); an axis set to 0 is left out.
    """

    optimise: bool = False
    scenarios: Literal["plus_minus", "sampled"] = "plus_minus"
    n_scenarios: Annotated[int, Field(ge=1, le=1000)] = 21
    seed: Annotated[int, Field(ge=0)] = 0
    aggregate: Literal["expected", "worst", "cvar"] = "worst"
    temperature: Annotated[float, Field(allow_inf_nan=False, ge=0, le=10)] = 0.1
    cvar_alpha: Annotated[float, Field(allow_inf_nan=False, gt=0, le=1)] = 0.2
    band_percent: tuple[
        Annotated[float, Field(allow_inf_nan=False, ge=0, le=100)],
        Annotated[float, Field(allow_inf_nan=False, ge=0, le=100)],
    ] = (10.0, 90.0)
    magnitudes: dict[str, NonNegativeFloat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _band(self):
        low, high = self.band_percent
        if low > high:
            raise ValueError("band_percent: the first value must not exceed the second")
        return self


class PlanConfig(_Model):
    # Where the config came from (file path, "job 'x'"), set by parse_config: errors found after
    # parsing (e.g. in run_plan.prepare) are prefixed with it. Not a field: never dumped.
    _origin: str = PrivateAttr(default="<config>")
    # The TOML text the config was read from (None: built from a dict, e.g. a batch job); kept
    # so a plan's outputs can show the exact file and its hash.
    _text: str | None = PrivateAttr(default=None)

    plan: PlanSection = PlanSection()
    case: CaseSection = CaseSection()
    source: SourceSection = SourceSection()
    applicator: ApplicatorSection = ApplicatorSection()
    prescription: PrescriptionSection = PrescriptionSection()
    objectives: list[Objective] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    optimizer: OptimizerSection = OptimizerSection()
    radiobiology: RadiobiologySection = RadiobiologySection()
    output: OutputSection = OutputSection()
    xray: XraySection = XraySection()
    electron: ElectronSection = ElectronSection()
    compute: ComputeSection = ComputeSection()
    shields: list[ShieldConfig] = Field(default_factory=list)
    pareto: ParetoSection | None = None
    robust: RobustSection | None = None

    # Whether the case fits plan.modality is checked against the capabilities the modality
    # needs (iortopt.pipeline.check_capabilities), where the modality registry can be imported.

    @model_validator(mode="after")
    def _shields_fit_plan(self):
        names = [s.name for s in self.shields]
        if len(set(names)) != len(names):
            raise ValueError(f"shields: names must be distinct, got {names}")
        if self.shields and self.plan.modality == "electron":
            raise ValueError(
                "shields: electron plans shield with the protective disc ([electron] disc_*); "
                "[[shields]] are for photon plans (hdr_flap, xray_sphere)"
            )
        needs = {"behind_flap": "builtin_flap", "chest_wall": "builtin_breast"}
        for shield in self.shields:
            kind = needs.get(shield.surface)
            if kind is not None and self.case.kind != kind:
                raise ValueError(
                    f"shields {shield.name!r}: surface {shield.surface!r} needs case.kind "
                    f"{kind!r}; use surface 'plane' or 'cylinder' with explicit geometry"
                )
        return self

    @model_validator(mode="after")
    def _pareto_fits_plan(self):
        if self.pareto is None:
            return self
        if self.plan.modality != "hdr_flap":
            raise ValueError(
                f"pareto: Pareto sets need dose linear in the variables (HDR dwell times, "
                f"plan.modality 'hdr_flap'); plan.modality is {self.plan.modality!r}"
            )
        for k, entry in enumerate(self.pareto.objectives):
            if isinstance(entry, int) and entry >= len(self.objectives):
                raise ValueError(
                    f"pareto.objectives[{k}]: index {entry} but [[objectives]] has "
                    f"{len(self.objectives)} terms"
                )
            if isinstance(entry, str) and not any(o.structure == entry for o in self.objectives):
                raise ValueError(
                    f"pareto.objectives[{k}]: no [[objectives]] term on structure {entry!r}"
                )
        return self


def _format_errors(origin: str, exc: ValidationError) -> str:
    lines = [f"{origin}: invalid configuration"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        given = err.get("input")
        given_text = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {where}: {err['msg']}{given_text}")
    return "\n".join(lines)


def parse_config(doc: dict, origin: str = "<config>") -> PlanConfig:
    """Validate a parsed config document. Raises ConfigError listing every bad field."""
    try:
        cfg = PlanConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_format_errors(origin, exc)) from None
    cfg._origin = origin
    return cfg


def non_default_sections(cfg: PlanConfig) -> list[str]:
    """Top-level sections of ``cfg`` whose value differs from the default (in field order)."""
    return [
        name
        for name, info in PlanConfig.model_fields.items()
        if getattr(cfg, name) != info.get_default(call_default_factory=True)
    ]


def config_origin(cfg: PlanConfig) -> str:
    """The file (or job) ``cfg`` was parsed from, ``"<config>"`` if not known."""
    return cfg._origin


def with_origin(exc: ConfigError, origin: str) -> ConfigError:
    """``exc`` with its message prefixed by ``origin`` (unchanged if it already starts so)."""
    message = str(exc)
    if origin == "<config>" or message.startswith(f"{origin}:"):
        return exc
    return ConfigError(f"{origin}: {message}")


#: What a config file must hold at least (an empty file would silently run the defaults).
PLAN_NEEDS = (
    "a [plan] table (name, modality), the case ([case]), the [prescription] and, for an HDR "
    "plan (modality hdr_flap), at least one [[objectives]] term; `iortopt init NAME` writes an "
    "annotated example"
)


def _check_not_empty(doc: dict, origin: str) -> None:
    if not doc:
        raise ConfigError(
            f"{origin}: the config defines no plan (no table or key); it needs " + PLAN_NEEDS
        )


def load_config(path: str | Path | None = None) -> PlanConfig:
    """Read and validate a TOML plan config; ``None`` gives the built-in example plan."""
    if path is None:
        text = builtin_config_text()
        cfg = parse_config(tomllib.loads(text), "built-in flap_default.toml")
    else:
        doc, text = read_toml_and_text(path, ConfigError)
        _check_not_empty(doc, str(path))
        cfg = parse_config(doc, str(path))
    cfg._text = text
    return cfg


def config_text(cfg: PlanConfig) -> str | None:
    """The TOML text ``cfg`` was loaded from (None when it was built from a dict)."""
    return cfg._text


def builtin_config_text() -> str:
    """Text of the built-in example plan (annotated; ``iortopt init`` writes it)."""
    return (resources.files("iortopt") / "data" / "configs" / "flap_default.toml").read_text()


def case_params(cls, values: dict[str, Any], section: str):
    """Build a phantom's parameter dataclass ``cls`` from the ``[case.<section>]`` overrides.

    Raises:
        ConfigError: naming ``case.<section>`` and the unknown field or invalid value.
    """
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"case.{section}: {exc} (see {cls.__name__} for the fields)") from None
    except ValueError as exc:
        raise ConfigError(f"case.{section}: {exc}") from None
