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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iortopt.errors import ConfigError
from iortopt.io.toml_file import read_toml

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanSection(_Model):
    name: str = Field("plan", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    modality: Literal["hdr_flap", "xray_sphere", "electron"] = "hdr_flap"
    description: str = ""


class CaseSection(_Model):
    """Anatomy. ``kind = "builtin_flap"``: the parametric presacral flap case, ``flap`` overrides
    its parameters (``iortopt.anatomy.phantoms.FlapCaseParams``); ``kind = "builtin_breast"``: the
    breast lumpectomy case, ``breast`` overrides ``iortopt.anatomy.breast.BreastCaseParams``;
    ``kind = "builtin_eliot"``: the ELIOT-type breast for electrons, ``eliot`` overrides
    ``iortopt.anatomy.eliot.EliotCaseParams``."""

    kind: Literal["builtin_flap", "builtin_breast", "builtin_eliot"] = "builtin_flap"
    flap: dict[str, Any] = Field(default_factory=dict)
    breast: dict[str, Any] = Field(default_factory=dict)
    eliot: dict[str, Any] = Field(default_factory=dict)


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
        return self


class ApplicatorSection(_Model):
    step_mm: PositiveFloat = 5.0
    active: Literal["auto"] | list[tuple[int, int]] = "auto"
    active_margin_mm: NonNegativeFloat = 5.0
    max_dwell_time_s: PositiveFloat = 60.0


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
    volume_percent: Annotated[float, Field(gt=0, lt=100)] | None = None
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
    value: float


class OptimizerSection(_Model):
    method: Literal["lbfgs", "adam"] = "lbfgs"
    max_iterations: Annotated[int, Field(ge=1, le=100000)] = 300
    tolerance: PositiveFloat = 1e-6
    learning_rate: PositiveFloat = 0.05
    voxel_margin_mm: NonNegativeFloat = 5.0
    influence: Literal["auto", "matrix", "matrix_free"] = "auto"
    influence_memory_mb: PositiveFloat = 2048.0


class XraySection(_Model):
    """50 kV X-ray spherical applicators (modality ``xray_sphere``)."""

    beam: str = "generic_50kV_spheres"
    prescription_mode: Literal["surface", "depth"] = "surface"
    prescription_depth_mm: PositiveFloat = 10.0
    catalogue_diameters_cm: list[PositiveFloat] | None = None
    min_skin_distance_mm: NonNegativeFloat = 5.0
    optimise_position: bool = True
    anisotropy: Annotated[float, Field(ge=0, lt=1)] = 0.0


class ElectronSection(_Model):
    """Electron IORT with cones and a protective disc (modality ``electron``); see
    ``iortopt.electron_plan``. Catalogue lists default to everything in the beam file."""

    beam: str = "generic_IOERT"
    isodose_percent: Annotated[float, Field(gt=0, le=100)] = 90.0
    energies_mev: list[PositiveFloat] | None = None
    cone_diameters_cm: list[PositiveFloat] | None = None
    bevels_deg: list[NonNegativeFloat] | None = None
    toe_direction: tuple[float, float, float] = (0.0, -1.0, 0.0)
    max_axis_tilt_deg: Annotated[float, Field(ge=0, lt=90)] = 30.0
    disc: str = "Al2_Pb4"
    disc_radius_mm: PositiveFloat = 45.0
    disc_margin_mm: NonNegativeFloat = 5.0
    disc_edge_mm: PositiveFloat = 0.5
    oar_weight: NonNegativeFloat = 0.1
    optimise_pose: bool = True
    max_shift_mm: NonNegativeFloat = 5.0
    max_air_gap_mm: NonNegativeFloat = 5.0
    max_tilt_deg: Annotated[float, Field(ge=0, lt=45)] = 10.0
    max_disc_shift_mm: NonNegativeFloat = 5.0
    max_disc_tilt_deg: Annotated[float, Field(ge=0, lt=45)] = 10.0
    iterations: Annotated[int, Field(ge=1, le=10000)] = 100


class RadiobiologySection(_Model):
    alpha_beta_gy: dict[str, PositiveFloat] = Field(default_factory=dict)


class OutputSection(_Model):
    isodose_percent: list[PositiveFloat] = Field(
        default_factory=lambda: [50.0, 80.0, 100.0, 150.0, 200.0]
    )
    dose_chunk_size: Annotated[int, Field(ge=0)] = 0


class PlanConfig(_Model):
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

    @model_validator(mode="after")
    def _case_fits_modality(self):
        expected = {
            "hdr_flap": "builtin_flap",
            "xray_sphere": "builtin_breast",
            "electron": "builtin_eliot",
        }[self.plan.modality]
        if self.case.kind != expected:
            raise ValueError(
                f"case.kind {self.case.kind!r} does not fit plan.modality "
                f"{self.plan.modality!r} (expected {expected!r})"
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
        return PlanConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_format_errors(origin, exc)) from None


def load_config(path: str | Path | None = None) -> PlanConfig:
    """Read and validate a TOML plan config; ``None`` gives the built-in example plan."""
    if path is None:
        resource = resources.files("iortopt") / "data" / "configs" / "flap_default.toml"
        with resource.open("rb") as fh:
            return parse_config(tomllib.load(fh), "built-in flap_default.toml")
    return parse_config(read_toml(path, ConfigError), str(path))


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
