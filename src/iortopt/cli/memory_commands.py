"""``iortopt memory CONFIG``: a plan's memory estimate, budget and chunking, before running it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iortopt.errors import IortoptError

EXIT_INPUT = 2


def register(app: typer.Typer) -> None:
    """Add the ``memory`` command to ``app``."""
    app.command("memory")(memory_command)


def memory_command(
    config: Annotated[
        Path | None, typer.Argument(help="plan config (TOML); default: built-in example")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or gpu (default: JAX's default)")
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="float32 or float64")] = "float32",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
):
    """Estimate a plan's peak memory per stage, the budget and the chunk size (nothing is run).
    Exit code 2 if the plan would not fit; a case too large to build is refused from the config
    alone, before it is built."""
    console, err = Console(), Console(stderr=True)
    try:
        from iortopt.cases.size_estimate import check_case_size
        from iortopt.compute.runtime import configure
        from iortopt.config import config_origin, load_config, with_origin
        from iortopt.errors import ConfigError
        from iortopt.pipeline import (
            check_config,
            check_memory,
            plan_memory,
            prepare_modality,
        )

        dtype = configure(device, precision)
        cfg = load_config(config)
        try:
            check_config(cfg)
            # From the config alone, before the case is built: a case too large is refused here,
            # in seconds, with its estimate.
            size = check_case_size(cfg, dtype)
            plan = plan_memory(prepare_modality(cfg, dtype))
        except ConfigError as exc:
            raise with_origin(exc, config_origin(cfg)) from None
    except IortoptError as exc:
        _print_error(err, exc)
        raise typer.Exit(EXIT_INPUT) from None
    if as_json:
        console.print_json(json.dumps(plan.to_dict() | {"case": size.to_dict()}))
    else:
        console.print(f"case: {size.describe()}", highlight=False)
        _print_plan(plan, console)
    try:
        check_memory(plan)
    except IortoptError as exc:
        _print_error(err, exc)
        raise typer.Exit(EXIT_INPUT) from None


def _print_error(err: Console, exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def _print_plan(plan, console: Console) -> None:
    from iortopt.compute.memory import MIB

    est = plan.estimate
    table = Table(title=f"Memory estimate ({est.engine}), MiB")
    for col in ("stage", "part", "MiB"):
        table.add_column(col, justify="right" if col == "MiB" else "left")
    for stage, part, nbytes in est.rows():
        table.add_row(stage, part, f"{nbytes / MIB:.1f}")
    console.print(table)
    sizes = ", ".join(f"{k} {v}" for k, v in est.sizes.items())
    console.print(
        f"peak {est.peak_bytes / MIB:.0f} MiB ({est.peak_stage}); {sizes}; "
        f"budget {plan.budget.describe()}; TG-43 chunk {plan.chunk_size or '-'}; "
        f"devices {plan.devices}; {'fits' if plan.fits else 'DOES NOT FIT'}",
        highlight=False,
    )
