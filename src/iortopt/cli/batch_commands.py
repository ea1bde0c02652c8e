"""``iortopt batch`` and ``iortopt batch-summary``: many plans from one manifest into one store.

``register(app)`` adds both commands to the main typer app (``iortopt.cli``). Exit codes: 0 every
job done; 1 some job failed (its record holds the error); 2 invalid manifest or input
(``--list``: a job whose config is invalid, each named by index, id and field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iortopt.errors import IortoptError

console = Console()
err_console = Console(stderr=True)

EXIT_FAILED_JOBS = 1
EXIT_INPUT = 2


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


def _print_jobs(batch) -> None:
    table = Table(title=escape(f"batch {batch.name}: {len(batch.jobs)} jobs (base {batch.base})"))
    for col in ("index", "job id", "config"):
        table.add_column(col, overflow="fold")
    for job in batch.jobs:
        last = "" if job.error is None else escape(job.error.splitlines()[-1].strip())
        state = "valid" if job.error is None else f"[red]invalid[/]: {last}"
        table.add_row(str(job.index), escape(job.job_id), state)
    console.print(table)
    console.print(
        f"SLURM array range: --array=0-{len(batch.jobs) - 1}", highlight=False, soft_wrap=True
    )


def _fmt(value, spec: str = ".2f") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return "-" if value is None else str(value)


def print_rows(rows: list[dict], title: str) -> None:
    """The results table on the terminal: one line per job, errors shortened."""
    from iortopt.batch import status_counts

    table = Table(title=escape(title))
    for col in ("#", "name", "status", "wall s", "target D90 Gy", "goals met", "error"):
        table.add_column(col, overflow="fold")
    colours = {"done": "green", "failed": "red"}
    for row in rows:
        status = row["status"]
        error = row.get("error") or ""
        table.add_row(
            str(row["index"]),
            escape(row["name"]),
            f"[{colours.get(status, 'yellow')}]{escape(status)}[/]",
            _fmt(row.get("wall_s"), ".1f"),
            _fmt(row.get("target_D90_gy")),
            _fmt(row.get("goals_all_met")),
            escape(error if len(error) <= 120 else error[:117] + "..."),
        )
    console.print(table)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(status_counts(rows).items()))
    console.print(f"{len(rows)} jobs: {counts}", highlight=False)


def batch(
    manifest: Annotated[Path, typer.Argument(help="batch manifest (TOML)")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="batch store folder (default ./iortopt-out/<batch name>)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="local Dask workers (default: one per 4 cores)"),
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="existing Dask scheduler, tcp://host:port")
    ] = None,
    job_index: Annotated[
        int | None,
        typer.Option("--job-index", help="run only job N (0-based) in this process, no Dask"),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or gpu (default: the manifest's)")
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="float32 or float64 (default: manifest's)")
    ] = None,
    compile_cache: Annotated[
        bool | None,
        typer.Option("--compile-cache/--no-compile-cache", help="JAX persistent compilation cache"),
    ] = None,
    list_jobs: Annotated[
        bool,
        typer.Option(
            "--list", help="print the jobs (index, id, name) and exit; exit 2 if a job is invalid"
        ),
    ] = False,
    job_script: Annotated[
        bool, typer.Option("--job-script", help="print the SLURM/PBS worker job script and exit")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress display")] = False,
):
    """Run every job of a batch manifest (Dask: local, --address, or SLURM/PBS) into one store.

    Jobs already done in the store are skipped, so rerunning a killed batch resumes it. A failing
    job is recorded with its error; the others go on. Writes STORE/results.csv at the end.
    """
    from iortopt.batch import check_jobs_valid, load_manifest, render_job_script, with_settings

    try:
        if device is not None and device not in ("cpu", "gpu"):
            raise IortoptError(f"--device must be cpu or gpu, got {device!r}")
        if precision is not None and precision not in ("float32", "float64"):
            raise IortoptError(f"--precision must be float32 or float64, got {precision!r}")
        if job_index is not None and (workers is not None or address is not None):
            raise IortoptError("--job-index runs one job in this process: no --workers/--address")
        plan = with_settings(
            load_manifest(manifest),
            device=device,
            precision=precision,
            compilation_cache=compile_cache,
        )
        if list_jobs:
            _print_jobs(plan)
            check_jobs_valid(plan)
            return
        if job_script:
            console.print(render_job_script(plan), highlight=False, markup=False)
            return
        store = out if out is not None else Path("iortopt-out") / plan.name
        if job_index is not None:
            _run_index(plan, store, job_index)
            return
        _run_all(plan, store, workers, address, quiet)
    except IortoptError as exc:
        _fail(exc)


def _run_index(plan, store: Path, index: int) -> None:
    from iortopt.batch import run_one

    record = run_one(plan, store, index)
    name = f"job {index} {record['name']} ({record['job_id']})"
    if record.get("skipped"):
        console.print(f"{name}: already done in {store}", highlight=False, markup=False)
    elif record["status"] == "done":
        console.print(
            f"{name}: done in {record['wall_s']:.1f} s -> {store}", highlight=False, markup=False
        )
    else:
        err_console.print(
            f"[red]{escape(name)} failed[/] ({escape(str(record['error_type']))}): "
            f"{escape(str(record['error']))}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED_JOBS)


def _run_all(plan, store: Path, workers, address, quiet: bool) -> None:
    from iortopt.batch import collect_rows, run_batch

    outcome = run_batch(
        plan, store, workers=workers, address=address, console=None if quiet else console
    )
    rows = collect_rows(store)
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        print_rows(failed, f"batch {plan.name}: jobs not done")
    console.print(
        f"batch {plan.name}: {outcome.done} done now, {outcome.skipped} already done, "
        f"{outcome.failed} failed, of {outcome.total}; table {outcome.table}",
        highlight=False,
        markup=False,
    )
    if failed:
        raise typer.Exit(EXIT_FAILED_JOBS)


def batch_summary(
    store: Annotated[Path, typer.Argument(help="batch store folder (iortopt batch --out)")],
):
    """Print a batch store's results table and rewrite STORE/results.csv.

    The table is rebuilt from the job records: status, error, timings, overrides and key metrics
    of every job."""
    from iortopt.batch import collect_rows, read_batch_meta, write_results_table

    try:
        meta = read_batch_meta(store)
    except IortoptError as exc:
        _fail(exc)
    path = write_results_table(store)
    print_rows(collect_rows(store), f"batch {meta['name']} ({store})")
    console.print(f"table: {path}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``batch`` and ``batch-summary`` to the ``iortopt`` app."""
    app.command("batch")(batch)
    app.command("batch-summary")(batch_summary)
