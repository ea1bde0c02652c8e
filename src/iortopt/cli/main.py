"""The ``iortopt`` command line: thin wrappers that parse, call the library and print.

Exit codes: 0 success; 1 a check failed (``iortopt check``), a plan's result was not finite, or an
unexpected error; 2 invalid input (config, source data, input file or output path: the message
names the file and field; nothing is written); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iortopt import __version__
from iortopt.errors import IortoptError, PlanFailedError

app = typer.Typer(
    help="iortopt: intraoperative radiotherapy planning (HDR flaps, X-ray spheres, electrons).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
qa_app = typer.Typer(help="Quality-assurance tables.", no_args_is_help=True)
app.add_typer(qa_app, name="qa")
console = Console()
err_console = Console(stderr=True)

EXIT_INPUT = 2

DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu or gpu (default: JAX's default)")
]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="float32 or float64")]


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


def _version(value: bool):
    if value:
        console.print(f"iortopt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
):
    """iortopt command line."""


sources_app = typer.Typer(
    help="TG-43 source data: list the packaged datasets (no subcommand), or import one.",
    invoke_without_command=True,
)
app.add_typer(sources_app, name="sources")


@sources_app.callback()
def sources(ctx: typer.Context):
    """List the packaged TG-43 source datasets (Lambda, L, 1-D data, citation)."""
    if ctx.invoked_subcommand is not None:
        return
    from iortopt.physics.sources import load_source, packaged_source_keys

    table = Table(title="Packaged TG-43 source data (Ir-192)")
    table.add_column("key", no_wrap=True)
    for col in ("Lambda (cGy/h/U)", "L (cm)", "1-D data", "citation"):
        table.add_column(col, overflow="fold")
    for key in packaged_source_keys():
        s = load_source(key)
        table.add_row(
            key,
            f"{s.dose_rate_constant:.5g}",
            f"{s.active_length_cm:g}",
            "yes" if s.has_1d else "no",
            s.citation,
        )
    console.print(table)


@sources_app.command("import")
def sources_import(
    spreadsheet: Annotated[Path, typer.Argument(help="consensus spreadsheet (.xls, HEBD 2012)")],
    out: Annotated[
        Path, typer.Option("--out", help="source file to write (NAME.toml); the QA table beside it")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="model name (default: from NAME)")
    ] = None,
    dataset: Annotated[str, typer.Option("--dataset", help="dataset label")] = "HEBD2012",
    sheet: Annotated[
        str | None, typer.Option("--sheet", help="data sheet (default: the one with g_L(r))")
    ] = None,
    half_life_days: Annotated[
        float | None,
        typer.Option("--half-life-days", help="default: Ir-192's when the sheet says so"),
    ] = None,
):
    """Import a consensus TG-43 spreadsheet into iortopt's source file format.

    Writes NAME.toml (Lambda, L, g_L(r), F(r, theta)) and NAME_QA_along_away.csv (the sheet's
    along-away table), each validated by loading it back, then renamed into place.
    """
    from iortopt.physics.consensus_xls import import_consensus_xls

    try:
        source, table, qa_path = import_consensus_xls(
            spreadsheet,
            out,
            name=name,
            dataset=dataset,
            sheet=sheet,
            half_life_days=half_life_days,
        )
    except IortoptError as exc:
        _fail(exc)
    console.print(
        f"wrote {escape(str(out))} ({source.key}: Lambda = {source.dose_rate_constant:.6g} "
        f"cGy/h/U, L = {source.active_length_cm:g} cm, {source.g_r_cm.size} g_L radii, "
        f"F {source.F.shape[0]} x {source.F.shape[1]}) and {escape(str(qa_path))} "
        f"({table.z_cm.size} points)",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def check(
    precision: PrecisionOpt = "float32",
    device: DeviceOpt = None,
):
    """Recompute the consensus along-away QA table of every packaged source and compare.

    Passes when every unflagged point with r >= 0.25 cm is within 1 % and r >= 1 cm within 0.3 %.
    """
    try:
        from iortopt.compute.runtime import configure

        dtype = configure(device, precision)
    except IortoptError as exc:
        _fail(exc)
    from iortopt.physics.consensus_qa import compare_with_consensus, consensus_table
    from iortopt.physics.sources import load_source, packaged_source_keys
    from iortopt.physics.tg43 import make_kernel

    table = Table(title=f"TG-43 check against the HEBD 2012 consensus QA tables ({precision})")
    for col in ("source", "points", "max |dev| r>=0.25 cm", "max |dev| r>=1 cm", "result"):
        table.add_column(col)
    all_ok = True
    for key in packaged_source_keys():
        source = load_source(key)
        reference = consensus_table(source)
        if reference is None:
            continue
        res = compare_with_consensus(make_kernel(source, dtype=dtype), reference)
        ok = (
            res["max_abs_dev_percent_r_ge_0.25cm"] <= 1.0
            and res["max_abs_dev_percent_r_ge_1cm"] <= 0.3
        )
        all_ok &= ok
        table.add_row(
            key,
            str(res["n_points"]),
            f"{res['max_abs_dev_percent_r_ge_0.25cm']:.3f} %",
            f"{res['max_abs_dev_percent_r_ge_1cm']:.3f} %",
            "[green]pass[/]" if ok else "[red]FAIL[/]",
        )
    console.print(table)
    if not all_ok:
        raise typer.Exit(1)


@qa_app.command("along-away")
def qa_along_away(
    source: Annotated[str, typer.Option("--source", help="packaged key, model name or .toml file")],
    out: Annotated[Path, typer.Option("--out", help="CSV file to write")],
    points: Annotated[
        Path | None,
        typer.Option("--points", help="CSV with z_along_cm,y_away_cm (default: consensus QA grid)"),
    ] = None,
    formalism: Annotated[str, typer.Option("--formalism", help="2d or 1d")] = "2d",
    precision: PrecisionOpt = "float64",
):
    """Dose rate per unit S_K (cGy h^-1 U^-1) at (z along, y away) points around one source."""
    import numpy as np

    try:
        from iortopt.io.output_dir import check_file_target

        check_file_target(out)
        from iortopt.compute.runtime import configure

        dtype = configure(None, precision)
        from iortopt.physics.consensus_qa import along_away, consensus_table, read_points_csv
        from iortopt.physics.sources import load_source
        from iortopt.physics.tg43 import make_kernel

        src = load_source(source)
        if formalism not in ("2d", "1d"):
            raise IortoptError(f"--formalism must be 2d or 1d, got {formalism!r}")
        try:
            kernel = make_kernel(src, formalism, dtype)
        except ValueError as exc:
            raise IortoptError(str(exc)) from None
        if points is not None:
            z, y = read_points_csv(points)
        else:
            reference = consensus_table(src)
            if reference is None:
                raise IortoptError(
                    f"{source}: {src.key} has no packaged consensus QA grid: give --points CSV"
                )
            keep = np.isfinite(reference.dose_rate)
            z, y = reference.z_cm[keep], reference.y_cm[keep]
    except IortoptError as exc:
        _fail(exc)
    rate = along_away(kernel, z, y)
    from iortopt.io.store import atomic_path

    with atomic_path(out) as tmp:
        with tmp.open("w") as fh:
            fh.write("z_along_cm,y_away_cm,dose_rate_cGy_h-1_U-1\n")
            for zi, yi, ri in zip(z, y, rate, strict=True):
                fh.write(f"{zi:g},{yi:g},{ri:.7g}\n")
    console.print(f"wrote {len(z)} points for {src.key} ({formalism}) to {out}", markup=False)


@app.command()
def dose(
    dwells: Annotated[Path, typer.Argument(help="CSV: x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s")],
    out: Annotated[Path, typer.Option("--out", help="zarr v3 store to write")],
    source: Annotated[str, typer.Option("--source")] = "mHDR-v2_HEBD2012",
    sk: Annotated[float, typer.Option("--sk", help="air-kerma strength at treatment, U")] = 40700.0,
    spacing_mm: Annotated[float, typer.Option("--spacing-mm")] = 2.0,
    margin_mm: Annotated[
        float, typer.Option("--margin-mm", help="grid extent beyond the dwells")
    ] = 30.0,
    formalism: Annotated[str, typer.Option("--formalism")] = "2d",
    precision: PrecisionOpt = "float32",
    device: DeviceOpt = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="points per chunk, 0 = auto")] = 0,
):
    """Dose grid (Gy) from a list of dwells, written to a zarr v3 store with grid metadata."""
    import time

    import numpy as np

    try:
        from iortopt.io.output_dir import check_store_target

        check_store_target(out)
        from iortopt.compute.runtime import configure, device_info

        dtype = configure(device, precision)
        from iortopt.grid import Grid
        from iortopt.io.dwells_csv import read_dwells_csv
        from iortopt.physics.sources import load_source
        from iortopt.physics.tg43 import dose_gy, make_kernel

        finite = np.all(np.isfinite([sk, spacing_mm, margin_mm]))
        if not finite or sk <= 0 or spacing_mm <= 0 or margin_mm < 0 or chunk_size < 0:
            raise IortoptError(
                "--sk and --spacing-mm must be finite and > 0, --margin-mm finite and >= 0, "
                "--chunk-size >= 0"
            )
        positions, axes, times = read_dwells_csv(dwells)
        src = load_source(source)
        try:
            kernel = make_kernel(src, formalism, dtype)
        except ValueError as exc:
            raise IortoptError(str(exc)) from None
    except IortoptError as exc:
        _fail(exc)
    try:
        # The grid's size from arithmetic, refused before its points are allocated.
        from iortopt.cases.size_estimate import check_dose_grid

        check_dose_grid(positions, margin_mm, spacing_mm, len(times), dtype, chunk_size, dwells)
    except IortoptError as exc:
        _fail(exc)
    grid = Grid.from_bounds(positions.min(0) - margin_mm, positions.max(0) + margin_mm, spacing_mm)
    console.print(
        f"grid {grid.shape_zyx} ({grid.n_voxels} voxels) x {len(times)} dwells, {escape(src.key)}"
    )
    t0 = time.perf_counter()
    values = dose_gy(
        grid.points_mm(np.float32), positions, axes, times, kernel, sk, chunk_size=chunk_size
    )
    values = np.asarray(values).reshape(grid.shape_zyx)
    elapsed = time.perf_counter() - t0
    from iortopt.io.store import write_dose_store

    write_dose_store(
        out,
        values,
        grid,
        {
            "source": src.key,
            "citation": src.citation,
            "formalism": formalism,
            "air_kerma_strength_U": sk,
            "precision": precision,
            "device": device_info(),
            "dwells_file": str(dwells),
        },
    )
    console.print(
        f"max dose {values.max():.4g} Gy; computed in {elapsed:.2f} s; wrote {escape(str(out))}"
    )


@app.command()
def init(
    name: Annotated[
        str, typer.Argument(help="config name; writes NAME.toml (or NAME if it ends in .toml)")
    ],
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
):
    """Write an annotated template plan config (the built-in example plan)."""
    from iortopt.config import builtin_config_text

    path = Path(name if name.endswith(".toml") else f"{name}.toml")
    from iortopt.io.output_dir import check_file_target

    try:
        check_file_target(path, label="init")
    except IortoptError as exc:
        _fail(exc)
    if path.exists() and not force:
        _fail(IortoptError(f"{path} exists (use --force to overwrite)"))
    stem = path.stem
    text = builtin_config_text().replace('name = "flap_default"', f'name = "{stem}"', 1)
    from iortopt.io.store import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
    console.print(f"wrote {path}; run it with: iortopt run {path}", markup=False)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="plan config (TOML); default: built-in example")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output folder (default ./iortopt-out/<plan>)")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="write into a folder that is not this plan's output: only iortopt's own files "
            "there are replaced, other files are kept",
        ),
    ] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "float32",
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress display")] = False,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="compile every program anew (no persistent compilation cache; also "
            "IORTOPT_NO_COMPILE_CACHE=1)",
        ),
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="after the plan, plan again in this process each time CONFIG is saved "
            "(compiled programs stay loaded); Ctrl-C stops",
        ),
    ] = False,
):
    """Optimise a plan and write plan.zarr, summary.json, dvh.png, dose_slices.png, report.html.

    The output folder must be new, empty or this plan's previous output (else --overwrite); a
    second run into the same folder at the same time is refused. Compiled programs are kept in
    the user's cache folder (``$XDG_CACHE_HOME/iortopt``) and reused by later runs.
    """
    from iortopt.compute.gc_pause import cyclic_gc_paused

    SKIP_TEARDOWN["run"] = True  # every file is written and closed before run returns
    if watch and config is None:
        _fail(IortoptError("--watch needs a CONFIG file to watch (e.g. from `iortopt init`)"))
    with cyclic_gc_paused():
        startup, plan = _start_run(device, precision, no_cache, out, overwrite, quiet)
        if not watch:
            try:
                _plan_once(config, startup=startup, **plan)
            except IortoptError as exc:
                _fail(exc)
            except PlanFailedError as exc:
                _plan_failed(exc)
                raise typer.Exit(1) from None
            return
    _watch(config, startup, plan)


def _start_run(device, precision, no_cache, out, overwrite, quiet) -> tuple[dict, dict]:
    """JAX configured and started, the compile cache on (unless ``no_cache``), the pipeline
    imported: the start-up times (s) and the keywords of :func:`_plan_once`."""
    import time

    try:
        t0 = time.perf_counter()
        from iortopt.compute.runtime import configure

        dtype = configure(device, precision)
        from iortopt.compute.compile_cache import enable_compile_cache
        from iortopt.compute.runtime import start_backend

        t1 = time.perf_counter()
        start_backend()
        cache = enable_compile_cache(not no_cache)
        t2 = time.perf_counter()
        import iortopt.pipeline  # noqa: F401 - timed here, with the CLI's other imports

        startup = {
            "interpreter_s": _seconds_since_process_start(t0),
            "jax_import_s": t1 - t0,
            "jax_startup_s": t2 - t1,
            "imports_s": time.perf_counter() - t2,
        }
    except IortoptError as exc:
        _fail(exc)
    plan = dict(
        out=out,
        overwrite=overwrite,
        dtype=dtype,
        quiet=quiet,
        compile_cache=None if cache is None else str(cache),
    )
    return startup, plan


def _plan_once(config, out, overwrite, dtype, quiet, compile_cache, startup) -> None:
    """One ``iortopt run``: load, check the output folder, plan, write, print."""
    import time

    from iortopt.config import load_config
    from iortopt.io.output_dir import check_output_target, clean_stale_temporaries, output_lock
    from iortopt.pipeline import execute, prepare, print_result

    cfg = load_config(config)
    out_dir = out if out is not None else Path("iortopt-out") / cfg.plan.name
    check_output_target(out_dir, overwrite, cfg.plan.name)
    with output_lock(out_dir):
        check_output_target(out_dir, overwrite, cfg.plan.name)  # again, now that we own it
        CURRENT_RUN["out_dir"] = out_dir
        clean_stale_temporaries(out_dir)
        t3 = time.perf_counter()
        prepared = prepare(cfg, dtype)
        startup = {**startup, "case_build_s": time.perf_counter() - t3}
        result = execute(
            prepared,
            out_dir,
            console=None if quiet else console,
            process_times_s=startup,
            compile_cache=compile_cache,
        )
    CURRENT_RUN.clear()
    print_result(result, console)
    if not result.summary["goals_all_met"]:
        console.print("[yellow]Not every clinical goal is met (see the table above).[/]")


def _plan_failed(exc: PlanFailedError) -> None:
    err_console.print(f"[bold red]plan failed:[/] {escape(str(exc))}", highlight=False)


def _watch(config: Path, startup: dict, plan: dict) -> None:
    """Plan ``config``, then again each time it is saved, until Ctrl-C while waiting."""
    import gc
    import time

    from iortopt.cli.watch import file_stamp, wait_for_change
    from iortopt.compute.gc_pause import cyclic_gc_paused

    again = {k: None for k in startup}  # start-up was paid once: not spent by later plans
    stamp = file_stamp(config)
    first = True
    while True:
        t0 = time.perf_counter()
        try:
            with cyclic_gc_paused():
                _plan_once(config, startup=startup if first else again, **plan)
            console.print(f"planned in {time.perf_counter() - t0:.2f} s (this process)")
        except IortoptError as exc:
            CURRENT_RUN.clear()
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        except PlanFailedError as exc:
            CURRENT_RUN.clear()
            _plan_failed(exc)
        # (Ctrl-C during a plan propagates with CURRENT_RUN set: its message names the checkpoint)
        first = False
        gc.collect()  # the cycles the plan left, while waiting for the next save
        console.print(f"watching {config} (Ctrl-C stops)", markup=False)
        try:
            stamp = wait_for_change(config, stamp)
        except KeyboardInterrupt:
            console.print("stopped watching")
            return


#: Longer than this from the process start to the CLI is not Python's start-up: the process was
#: a shell script that ran other work before it exec'd iortopt (``scripts/quickstart.sh`` runs
#: iortopt as a child for this reason: an exec after pip's few seconds would count them).
MAX_INTERPRETER_S = 10.0


def _seconds_since_process_start(now_perf_s: float) -> float | None:
    """Seconds from this process's start to ``now_perf_s`` (a perf_counter reading): the Python
    start-up and the CLI's imports. Linux only (``/proc``); None elsewhere, and None when the
    process is older than :data:`MAX_INTERPRETER_S` (it was exec'd by a script that did other
    work first, whose time is not iortopt's)."""
    import os
    import time

    try:
        stat = Path("/proc/self/stat").read_text()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        age_s = uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    seconds = max(0.0, age_s - (time.perf_counter() - now_perf_s))
    return seconds if seconds <= MAX_INTERPRETER_S else None


#: The output folder of the ``run`` in progress (for the Ctrl-C message); empty otherwise.
CURRENT_RUN: dict[str, Path] = {}
EXIT_INTERRUPTED = 130


def interrupted_message() -> str:
    """What Ctrl-C stopped: the run's output and, if one exists, its checkpoint to resume from."""
    out_dir = CURRENT_RUN.get("out_dir")
    if out_dir is None:
        return "interrupted (Ctrl-C): stopped."
    from iortopt.modalities.hdr_flap.pipeline import checkpoint_path_for, shield_checkpoint_path_for

    lines = [f"interrupted (Ctrl-C): the run into {out_dir} stopped before it finished."]
    candidates = (checkpoint_path_for(out_dir), shield_checkpoint_path_for(out_dir))
    saved = [p for p in candidates if p.is_file()]
    if saved:
        lines.append(
            f"checkpoint: {', '.join(map(str, saved))}; run the same command again to resume."
        )
    else:
        lines.append("no checkpoint yet; running the same command again starts afresh.")
    return "\n".join(lines)


#: Set by commands whose files are all written and closed when they return (``run``): the
#: process then ends without Python's teardown, which after a plan measured 0.6-1.0 s on the
#: 2-core CPU (freeing the compiled programs and thousands of modules) for nothing a user sees.
SKIP_TEARDOWN = {"run": False}


def _exit_without_teardown(code) -> None:
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def entry() -> None:
    """Console script: the app, with a message on Ctrl-C (exit 130)."""
    try:
        app()
    except SystemExit as exc:
        # typer turns KeyboardInterrupt into exit code 130 without a word
        if exc.code == EXIT_INTERRUPTED:
            err_console.print(interrupted_message(), highlight=False, soft_wrap=True)
        if SKIP_TEARDOWN["run"]:
            _exit_without_teardown(exc.code)
        raise
    except KeyboardInterrupt:
        err_console.print(interrupted_message(), highlight=False, soft_wrap=True)
        sys.exit(EXIT_INTERRUPTED)


from iortopt.cli.batch_commands import register as register_batch_commands  # noqa: E402

register_batch_commands(app)

from iortopt.cli.dicom_commands import register as register_dicom_commands  # noqa: E402

register_dicom_commands(app)

from iortopt.cli.memory_commands import register as register_memory_commands  # noqa: E402

register_memory_commands(app)

from iortopt.cli.evaluate_commands import register as register_evaluate_commands  # noqa: E402

register_evaluate_commands(app)

from iortopt.cli.check_plan_commands import register as register_check_plan  # noqa: E402

register_check_plan(app)

from iortopt.cli.report_commands import register as register_report_commands  # noqa: E402

register_report_commands(app)

from iortopt.cli.pareto_commands import register as register_pareto_commands  # noqa: E402

register_pareto_commands(app)

if __name__ == "__main__":  # python -m iortopt.cli
    entry()
