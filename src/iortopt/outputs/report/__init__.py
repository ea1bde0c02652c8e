"""The plan report: one self-contained ``report.html`` per output folder, and a batch index.

    build_report_html(out_dir) -> str    the report of an output folder, from its files alone
    write_report(out_dir) -> Path        ... written to ``out_dir/report.html`` (temp + rename)
    render_batch_index(...) -> str       a batch store's ``index.html``: results table + links

The report is rendered by Jinja2 (autoescaping on) from the templates in ``templates/``: the CSS
and the DVH script are inlined, the figures embedded as ``data:`` URIs and the DVH curves as
JSON, so the file needs no network access and nothing is fetched when it is opened. The same
folder always gives the same bytes (no time of rendering is written), so ``iortopt report OUT``
rebuilds exactly what ``iortopt run`` wrote.
"""

from __future__ import annotations

import functools
from pathlib import Path

from iortopt.outputs.report.context import fmt, read_output, report_context

REPORT_NAME = "report.html"
INDEX_NAME = "index.html"


@functools.cache
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("iortopt.outputs.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


def build_report_html(out_dir: str | Path) -> str:
    """The report of the plan output folder ``out_dir`` (HTML text).

    Raises:
        InputFileError: ``out_dir`` is not a folder or has no readable ``summary.json``.
    """
    context = report_context(read_output(out_dir))
    return _environment().get_template("report.html.j2").render(**context)


def write_report(out_dir: str | Path) -> Path:
    """Build the report of ``out_dir`` and write it to ``out_dir/report.html`` atomically."""
    from iortopt.io.store import atomic_path

    html = build_report_html(out_dir)
    target = Path(out_dir) / REPORT_NAME
    with atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target


def render_batch_index(
    title: str, columns: list[str], rows: list[dict], links: dict[str, str]
) -> str:
    """A batch's ``index.html``: one row per job (``columns`` of ``rows``), each done job's
    name linking to its report (``links``: job id -> relative path)."""
    return (
        _environment()
        .get_template("index.html.j2")
        .render(title=title, columns=columns, rows=rows, links=links)
    )
