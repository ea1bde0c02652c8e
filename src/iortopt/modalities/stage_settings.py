"""The settings later stages receive, taken from a plan config (they never see the config itself).

evaluation_settings(cfg)  -> iortopt.outputs.plan_files.EvaluationSettings
output_settings(cfg)      -> iortopt.outputs.plan_files.OutputSettings
structure_references(cfg) -> (field path, structure name) for check_structure_names
goal_metrics(cfg)         -> (field path, metric name) for check_structure_names
dicom_plan_info(cfg)      -> iortopt.outputs.dicom_export.DicomPlanInfo
check_config_names(cfg, case): every structure and goal metric named exists (ConfigError)
"""

from __future__ import annotations

from iortopt.config import PlanConfig, config_origin, config_text
from iortopt.outputs.dicom_export import DicomPlanInfo
from iortopt.outputs.plan_files import (
    EvaluationSettings,
    GoalSpec,
    OutputSettings,
    check_structure_names,
)


def evaluation_settings(cfg: PlanConfig) -> EvaluationSettings:
    rx = cfg.prescription
    return EvaluationSettings(
        prescription_gy=rx.dose_gy,
        prescription_structure=rx.structure,
        n_fractions=rx.n_fractions,
        goals=tuple(GoalSpec(g.structure, g.metric, g.op, g.value) for g in cfg.goals),
        alpha_beta_gy=dict(cfg.radiobiology.alpha_beta_gy),
    )


def output_settings(cfg: PlanConfig) -> OutputSettings:
    return OutputSettings(
        plan_name=cfg.plan.name,
        modality=cfg.plan.modality,
        prescription_gy=cfg.prescription.dose_gy,
        prescription_structure=cfg.prescription.structure,
        isodose_percent=tuple(cfg.output.isodose_percent),
        config_json=cfg.model_dump(mode="json"),
        config_text=config_text(cfg),
        config_origin=config_origin(cfg),
    )


def structure_references(cfg: PlanConfig) -> list[tuple[str, str]]:
    """Every structure name the config gives, with its field, in the order they are checked."""
    refs = [("prescription.structure", cfg.prescription.structure)]
    refs += [
        (f"objectives[{k}].structure", o.structure)
        for k, o in enumerate(cfg.objectives)
        if o.structure
    ]
    refs += [(f"goals[{k}].structure", g.structure) for k, g in enumerate(cfg.goals)]
    refs += [(f"radiobiology.alpha_beta_gy.{n}", n) for n in cfg.radiobiology.alpha_beta_gy]
    return refs


def goal_metrics(cfg: PlanConfig) -> list[tuple[str, str]]:
    return [(f"goals[{k}].metric", g.metric) for k, g in enumerate(cfg.goals)]


def dicom_plan_info(cfg: PlanConfig) -> DicomPlanInfo:
    return DicomPlanInfo(
        plan_name=cfg.plan.name,
        description=cfg.plan.description,
        prescription_gy=cfg.prescription.dose_gy,
        prescription_structure=cfg.prescription.structure,
        n_fractions=cfg.prescription.n_fractions,
    )


def check_config_names(cfg: PlanConfig, case) -> None:
    """Every structure and goal metric the config names exists in ``case`` (ConfigError)."""
    check_structure_names(case, structure_references(cfg), goal_metrics(cfg))
