"""``iortopt pareto pick OUT``: choose a plan of a stored Pareto set and write its full outputs.

``register(app)`` adds the ``pareto`` group to the main typer app (``iortopt.cli``). The set is
read from ``OUT/plan.zarr/pareto`` (written by a plan with ``[pareto]``); the conditions
(``--where``, repeatable) and the aim (``--maximise`` or ``--minimise``) name stored metrics as
``structure.metric`` (:mod:`iortopt.optimisation.pareto_navigation`, never evaluated). The chosen
non-dominated plan is re-prepared from the stored config (without ``[pareto]``) and written by
the HDR plan writer with its dwell times fixed: summary.json, figures, plan.zarr and, when
configured, DICOM, into ``--out`` (default ``OUT-pick<k>`` beside OUT), under the rules of
``iortopt run --out``.

Exit codes: 0 written; 1 no non-dominated plan meets the conditions (the closest are listed);
2 invalid input (a bad expression, no stored set, an output folder refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from iortopt.errors import IortoptError

EXIT_INPUT = 2
EXIT_NO_PLAN = 1

pareto_app = typer.Typer(
    help="Pareto sets of HDR plans ([pareto]): choose one.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add the ``pareto`` command group (``pareto pick``) to ``app``."""
    app.add_typer(pareto_app, name="pareto")


def _fail(err: Console, message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _closest_text(exc) -> str:
    lines = [f"{exc}; the closest non-dominated plans:"]
    for index, violation, values in exc.closest:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
        lines.append(f"  plan {index}: {shown} (relative violation {violation:.3f})")
    return "\n".join(lines)


@pareto_app.command("pick")
def pick(
    out: Annotated[Path, typer.Argument(help="output folder of a plan run with [pareto]")],
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="condition 'structure.metric OP number' (repeatable)"),
    ] = None,
    maximise: Annotated[
        str | None, typer.Option("--maximise", help="metric to maximise, e.g. CTV.D90_gy")
    ] = None,
    minimise: Annotated[
        str | None, typer.Option("--minimise", help="metric to minimise, e.g. bowel.D2cc_gy")
    ] = None,
    picked: Annotated[
        Path | None, typer.Option("--out", help="folder for the chosen plan (default OUT-pick<k>)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="as for iortopt run --overwrite")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or gpu (default: JAX's default)")
    ] = None,
    precision: Annotated[str, typer.Option("--precision", help="float32 or float64")] = "float32",
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress display")] = False,
):
    """Choose the non-dominated plan that meets every --where and is best for the aim, and write
    its full outputs (dwell times as stored, not re-optimised)."""
    console, err = Console(), Console(stderr=True)
    from iortopt.optimisation import pareto_navigation as nav

    try:
        from iortopt.modalities.hdr_flap import pareto as hdr_pareto

        arrays, attrs, root = hdr_pareto.load_set(out)
        columns = list(attrs["metric_columns"])
        if (maximise is None) == (minimise is None):
            raise nav.BadExpression("give exactly one of --maximise or --minimise")
        conditions = [nav.parse_condition(text, columns) for text in where or []]
        aim = nav.parse_aim(maximise if maximise is not None else minimise, columns)
    except nav.BadExpression as exc:
        _fail(err, str(exc), EXIT_INPUT)
    except IortoptError as exc:
        _fail(err, str(exc), EXIT_INPUT)
    try:
        index = nav.choose(
            columns,
            arrays["metrics"],
            arrays["non_dominated"],
            conditions,
            aim,
            maximise=maximise is not None,
        )
    except nav.NoFeasiblePlan as exc:
        _fail(err, _closest_text(exc), EXIT_NO_PLAN)
    target = picked if picked is not None else out.with_name(f"{out.name}-pick{index}")
    try:
        result = _write_pick(out, index, target, arrays, attrs, root, conditions, aim, maximise,
                             overwrite, device, precision, None if quiet else console)  # fmt: skip
    except IortoptError as exc:
        _fail(err, str(exc), EXIT_INPUT)
    from iortopt.pipeline import print_result

    print_result(result, console)
    console.print(
        f"Pareto plan {index} of {out} (weights {attrs['groups']} = "
        f"{[round(float(w), 4) for w in arrays['weights'][index]]}) written to {target}",
        markup=False,
    )


def _write_pick(out, index, target, arrays, attrs, root, conditions, aim, maximise, overwrite,
                device, precision, console):  # fmt: skip
    """Re-prepare the stored plan and write plan ``index`` with its stored dwell times."""
    from iortopt.compute.runtime import configure
    from iortopt.errors import ConfigError
    from iortopt.io.output_dir import check_output_target, clean_stale_temporaries, output_lock
    from iortopt.modalities.hdr_flap import pareto as hdr_pareto
    from iortopt.modalities.hdr_flap.pipeline import optimise_and_write
    from iortopt.outputs.plan_files import rewrite_summary
    from iortopt.pipeline import plan_memory, prepare, run_context

    dtype = configure(device, precision)
    cfg = hdr_pareto.picked_config(root, index, f"{out}/plan.zarr config")
    check_output_target(target, overwrite, cfg.plan.name)
    times = arrays["times_s"][index]
    with output_lock(target):
        check_output_target(target, overwrite, cfg.plan.name)
        clean_stale_temporaries(target)
        prepared = prepare(cfg, dtype)
        if len(prepared.dwells) != times.size:
            raise ConfigError(
                f"{out}: the stored set has {times.size} dwells per plan but the re-prepared "
                f"case has {len(prepared.dwells)} (the case or the source data changed)"
            )
        weights = [round(float(w), 4) for w in arrays["weights"][index]]
        prepared.notes.append(
            f"Pareto plan {index} of {out} (weights {weights} for {attrs['groups']}), dwell "
            "times as stored, not re-optimised"
        )
        result = optimise_and_write(
            prepared, target, run_context(plan_memory(prepared), console), fixed_times_s=times
        )
        result.summary["pareto_pick"] = {
            "source": str(out),
            "plan_index": index,
            "groups": attrs["groups"],
            "weights": weights,
            "where": [str(c) for c in conditions],
            "maximise" if maximise is not None else "minimise": aim,
            "stored_metrics": {
                c: float(v)
                for c, v in zip(attrs["metric_columns"], arrays["metrics"][index], strict=True)
            },
        }
        rewrite_summary(target, result.summary)
    return result
