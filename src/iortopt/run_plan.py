"""Run any plan config: pick the modality's pipeline (HDR flap, X-ray sphere or electron).

prepared = prepare(config, dtype)      # validates everything; raises, writes nothing
result = execute(prepared, out_dir)    # optimise, evaluate, write outputs
print_result(result, console)
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from iortopt.config import PlanConfig


def prepare(cfg: PlanConfig, dtype):
    """The modality's prepared plan (``PreparedPlan``, ``PreparedXray`` or ``PreparedElectron``)."""
    if cfg.plan.modality == "electron":
        from iortopt.plan_electron import prepare_electron

        return prepare_electron(cfg, dtype)
    if cfg.plan.modality == "xray_sphere":
        from iortopt.plan_xray import prepare_xray

        return prepare_xray(cfg, dtype)
    from iortopt.plan import prepare_plan

    return prepare_plan(cfg, dtype)


def execute(prepared, out_dir: str | Path, console: Console | None = None):
    """Optimise and write the outputs; the result has ``summary`` and ``out_dir``."""
    if prepared.config.plan.modality == "electron":
        from iortopt.plan_electron import run_electron

        return run_electron(prepared, out_dir)
    if prepared.config.plan.modality == "xray_sphere":
        from iortopt.plan_xray import run_xray

        return run_xray(prepared, out_dir)
    from iortopt.plan import optimise_and_write

    return optimise_and_write(prepared, out_dir, console=console)


def print_result(result, console: Console) -> None:
    if result.prepared.config.plan.modality == "electron":
        from iortopt.plan_electron import print_electron_summary

        print_electron_summary(result, console)
    elif result.prepared.config.plan.modality == "xray_sphere":
        from iortopt.plan_xray import print_xray_summary

        print_xray_summary(result, console)
    else:
        from iortopt.plan import print_summary

        print_summary(result, console)
