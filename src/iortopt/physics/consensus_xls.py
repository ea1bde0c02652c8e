"""Import a consensus TG-43 spreadsheet (HEBD 2012 / ESTRO BRAPHYQS ``.xls``) into iortopt's files.

The spreadsheets that physicists download from the ESTRO TG-43 Ir-192 HDR pages hold, on one
sheet, the dose-rate constant, the active length, g_L(r), F(r, theta) and an along-away QA table.
They are located by their labels, not by fixed cell addresses (the layouts differ by a column or
two between sources):

* Lambda: a ``L =`` label (the sheet writes Lambda in a Symbol font, which reads back as "L")
  followed by a number and a unit containing ``cGy``; the active length: the same label followed
  by a number and the unit ``cm``.
* g_L(r): the column under the ``r (cm)`` label, and the g_L column right of it (header ``gL``).
* F(r, theta): the cell labelled ``q (º)`` or ``Theta/deg`` heads the theta column; the radii
  (cm) run along its row to the right; F fills the grid.
* Along-away: the cell labelled ``z / cm`` heads the z column (cm, along the axis); the y values
  (cm, away from it) run along its row; dose rate per unit S_K (cGy h^-1 U^-1) fills the grid.
  The sheet marks interpolated/extrapolated values in bold or underlined and values inside the
  source in italics; those fonts become the two flag columns of the QA table. A point on the
  active segment itself (y = 0, |z| <= L/2) is flagged inside the source whatever its font, and
  its value is dropped: there the sheet's formula returns the line-source singularity (about
  4e8 cGy h^-1 U^-1 at the centre of the GammaMed Plus sheet), not a dose rate. The packaged
  QA tables follow the same rule.

Nothing in the file is evaluated: only cell values and fonts are read (``xlrd``, ``.xls`` only).
Errors name the file, the sheet and the cell (A1 notation).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iortopt.errors import SourceDataError
from iortopt.io.store import atomic_path
from iortopt.physics.consensus_qa import AlongAwayTable, read_along_away_csv
from iortopt.physics.sources import SourceData, load_source_file

#: Ir-192 half-life (days) used for the packaged datasets; the spreadsheets do not give one.
IR192_HALF_LIFE_DAYS = 73.83
QA_COLUMNS = (
    "z_along_cm",
    "y_away_cm",
    "dose_rate_cGy_h-1_U-1",
    "flag_interp_or_extrap",
    "flag_inside_source",
)


@dataclass(frozen=True)
class ConsensusSheet:
    """The numbers of one consensus spreadsheet (cm, degrees, cGy h^-1 U^-1)."""

    sheet: str
    title: str
    reference: str
    dose_rate_constant: float
    active_length_cm: float
    g_r_cm: list[float]
    g_line: list[float]
    F_theta_deg: list[float]
    F_r_cm: list[float]
    F: list[list[float]]  # F[i][j] at theta i, r j; nan where the cell is empty
    qa: AlongAwayTable


def _cell_name(row: int, col: int) -> str:
    letters = ""
    col += 1
    while col:
        col, rem = divmod(col - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return f"{letters}{row + 1}"


class _Sheet:
    """Read-only view of one xlrd sheet with error messages naming file, sheet and cell."""

    def __init__(self, book, sheet, origin: str):
        import xlrd

        self._xlrd = xlrd
        self.book, self.sheet, self.origin = book, sheet, origin

    def fail(self, row: int | None, col: int | None, problem: str) -> SourceDataError:
        where = f"sheet {self.sheet.name!r}"
        if row is not None and col is not None:
            where += f", cell {_cell_name(row, col)}"
        return SourceDataError(f"{self.origin}: {where}: {problem}")

    def text(self, row: int, col: int) -> str:
        if row >= self.sheet.nrows or col >= self.sheet.ncols:
            return ""
        cell = self.sheet.cell(row, col)
        return cell.value.strip() if cell.ctype == self._xlrd.XL_CELL_TEXT else ""

    def number(self, row: int, col: int) -> float | None:
        """The cell's number; None when the cell is empty or blank; an error when it is text."""
        if row >= self.sheet.nrows or col >= self.sheet.ncols:
            return None
        cell = self.sheet.cell(row, col)
        if cell.ctype in (self._xlrd.XL_CELL_EMPTY, self._xlrd.XL_CELL_BLANK):
            return None
        if cell.ctype == self._xlrd.XL_CELL_TEXT and not cell.value.strip():
            return None
        if cell.ctype != self._xlrd.XL_CELL_NUMBER:
            raise self.fail(row, col, f"expected a number, found {cell.value!r}")
        value = float(cell.value)
        if not math.isfinite(value):
            raise self.fail(row, col, f"expected a finite number, found {value!r}")
        return value

    def find(self, pattern: str) -> list[tuple[int, int]]:
        """Cells whose stripped text matches the regular expression ``pattern`` (case-blind)."""
        rx = re.compile(pattern, re.IGNORECASE)
        return [
            (r, c)
            for r in range(self.sheet.nrows)
            for c in range(self.sheet.ncols)
            if rx.fullmatch(re.sub(r"\s+", " ", self.text(r, c)))
        ]

    def find_one(self, pattern: str, what: str) -> tuple[int, int]:
        hits = self.find(pattern)
        if len(hits) != 1:
            found = "no" if not hits else f"{len(hits)} ({', '.join(_cell_name(*h) for h in hits)})"
            raise self.fail(None, None, f"expected one {what} label, found {found}")
        return hits[0]

    def font_flags(self, row: int, col: int) -> tuple[bool, bool]:
        """(bold or underlined, italic) of a cell; needs the workbook's formatting records."""
        xf = self.book.xf_list[self.sheet.cell_xf_index(row, col)]
        font = self.book.font_list[xf.font_index]
        return bool(font.bold or font.underline_type), bool(font.italic)


def _column(sh: _Sheet, row0: int, col: int) -> list[float]:
    values = []
    row = row0
    while (value := sh.number(row, col)) is not None:
        values.append(value)
        row += 1
    return values


def _row(sh: _Sheet, row: int, col0: int) -> list[float]:
    values = []
    col = col0
    while (value := sh.number(row, col)) is not None:
        values.append(value)
        col += 1
    return values


def _labelled_value(sh: _Sheet, unit_pattern: str, what: str) -> float:
    """The number after an ``L =`` label whose unit (next text cell) matches ``unit_pattern``."""
    found = []
    for row, col in sh.find(r"L ?="):
        value_col = next(
            (c for c in range(col + 1, sh.sheet.ncols) if sh.number(row, c) is not None), None
        )
        if value_col is None:
            continue
        unit = next(
            (sh.text(row, c) for c in range(value_col + 1, sh.sheet.ncols) if sh.text(row, c)), ""
        )
        if re.fullmatch(unit_pattern, unit, re.IGNORECASE):
            found.append((row, value_col))
    if len(found) != 1:
        raise sh.fail(None, None, f"expected one 'L =' cell with the {what}, found {len(found)}")
    value = sh.number(*found[0])
    if value is None or value <= 0:
        raise sh.fail(*found[0], f"{what} must be a positive number, found {value!r}")
    return value


def _radial(sh: _Sheet) -> tuple[list[float], list[float]]:
    row, col = sh.find_one(r"r \(cm\)", "'r (cm)' (g_L table)")
    if not sh.text(row, col + 1).replace(" ", "").lower().startswith("gl"):
        raise sh.fail(row, col + 1, "expected the g_L(r) column header ('gL...') right of 'r (cm)'")
    r_cm = _column(sh, row + 1, col)
    g = [sh.number(row + 1 + i, col + 1) for i in range(len(r_cm))]
    missing = next((i for i, v in enumerate(g) if v is None), None)
    if missing is not None:
        raise sh.fail(row + 1 + missing, col + 1, f"no g_L value at r = {r_cm[missing]} cm")
    if len(r_cm) < 2:
        raise sh.fail(row + 1, col, "expected at least 2 radii under 'r (cm)'")
    return r_cm, g


def _anisotropy(sh: _Sheet) -> tuple[list[float], list[float], list[list[float]]]:
    row, col = sh.find_one(r"(q|θ|theta) ?(\(.*\)|/ ?deg)", "'q (º)' / 'Theta/deg' (F table)")
    r_cm = _row(sh, row, col + 1)
    theta = _column(sh, row + 1, col)
    if len(r_cm) < 2 or len(theta) < 2:
        raise sh.fail(row, col, "expected radii to the right of and angles under this label")
    grid = [
        [
            v if (v := sh.number(row + 1 + i, col + 1 + j)) is not None else math.nan
            for j in range(len(r_cm))
        ]
        for i in range(len(theta))
    ]
    return theta, r_cm, grid


def _along_away(sh: _Sheet, active_length_cm: float) -> AlongAwayTable:
    row, col = sh.find_one(r"z ?/ ?cm", "'z / cm' (along-away table)")
    y_cm = _row(sh, row, col + 1)
    z_cm = _column(sh, row + 1, col)
    if len(y_cm) < 1 or len(z_cm) < 1:
        raise sh.fail(row, col, "expected y values to the right of and z values under this label")
    zs, ys, dose, interp, inside = [], [], [], [], []
    for i, z in enumerate(z_cm):
        for j, y in enumerate(y_cm):
            r, c = row + 1 + i, col + 1 + j
            value = sh.number(r, c)
            if value is not None and value < 0:
                raise sh.fail(r, c, f"dose rate must be non-negative, found {value}")
            bold, italic = sh.font_flags(r, c)
            if y == 0.0 and abs(z) <= 0.5 * active_length_cm:
                italic, value = True, None
            zs.append(z)
            ys.append(y)
            dose.append(math.nan if value is None else value)
            interp.append(bold)
            inside.append(italic)
    return AlongAwayTable(
        z_cm=np.array(zs),
        y_cm=np.array(ys),
        dose_rate=np.array(dose),
        flagged=np.array(interp) | np.array(inside),
        flag_interp=np.array(interp),
        flag_inside=np.array(inside),
    )


def _open_book(path: Path):
    try:
        import xlrd
    except ImportError:  # pragma: no cover - xlrd is a dependency
        raise SourceDataError("reading .xls spreadsheets needs the xlrd package") from None
    if not path.is_file():
        raise SourceDataError(f"{path}: no such file")
    if path.suffix.lower() != ".xls":
        raise SourceDataError(f"{path}: expected a .xls spreadsheet (Excel 97-2003)")
    try:
        return xlrd.open_workbook(str(path), formatting_info=True, on_demand=False)
    except Exception as exc:  # xlrd raises its own XLRDError and struct/assertion errors
        raise SourceDataError(f"{path}: not a readable .xls spreadsheet ({exc})") from None


def read_consensus_sheet(path: str | Path, sheet: str | None = None) -> ConsensusSheet:
    """Read Lambda, L, g_L(r), F(r, theta) and the along-away table of a consensus spreadsheet.

    ``sheet`` names the data sheet; by default the one sheet that has an ``r (cm)`` label.

    Raises:
        SourceDataError: naming the file, sheet and cell that is missing or malformed.
    """
    path = Path(path)
    book = _open_book(path)
    origin = str(path)
    if sheet is not None:
        if sheet not in book.sheet_names():
            raise SourceDataError(
                f"{origin}: no sheet {sheet!r} (sheets: {', '.join(book.sheet_names())})"
            )
        candidates = [book.sheet_by_name(sheet)]
    else:
        candidates = [s for s in book.sheets() if _Sheet(book, s, origin).find(r"r \(cm\)")]
        if len(candidates) != 1:
            raise SourceDataError(
                f"{origin}: expected one sheet with an 'r (cm)' (g_L) table, found "
                f"{len(candidates)} among {', '.join(book.sheet_names())}; name it with --sheet"
            )
    sh = _Sheet(book, candidates[0], origin)
    title = next((sh.text(0, c) for c in range(2, sh.sheet.ncols) if sh.text(0, c)), "")
    reference = ", ".join(t for t in (sh.text(2, 0), sh.text(3, 0)) if t)
    g_r, g_line = _radial(sh)
    theta, f_r, grid = _anisotropy(sh)
    length_cm = _labelled_value(sh, r"cm", "active length (cm)")
    return ConsensusSheet(
        sheet=sh.sheet.name,
        title=title,
        reference=reference,
        dose_rate_constant=_labelled_value(sh, r".*cGy.*", "dose-rate constant (cGy/(h U))"),
        active_length_cm=length_cm,
        g_r_cm=g_r,
        g_line=g_line,
        F_theta_deg=theta,
        F_r_cm=f_r,
        F=grid,
        qa=_along_away(sh, length_cm),
    )


def _toml_number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def _toml_list(values) -> str:
    return "[" + ", ".join(_toml_number(v) for v in values) + "]"


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(ch if ch.isprintable() else " " for ch in escaped) + '"'


def source_toml(
    data: ConsensusSheet,
    name: str,
    dataset: str,
    half_life_days: float,
    isotope: str,
    source_file: str,
) -> str:
    """The TOML text of a source file (layout in :mod:`iortopt.physics.sources`)."""
    citation = f"{data.title}. {data.reference}. Imported from {source_file}, sheet {data.sheet}."
    lines = [
        f"# TG-43 source data imported from the consensus spreadsheet {source_file}",
        f"# (sheet {data.sheet!r}) by 'iortopt sources import'.",
        "",
        "[source]",
        f"name = {_toml_string(name)}",
        f"dataset = {_toml_string(dataset)}",
        f"isotope = {_toml_string(isotope)}",
        f"dose_rate_constant_cGy_h-1_U-1 = {_toml_number(data.dose_rate_constant)}",
        f"active_length_cm = {_toml_number(data.active_length_cm)}",
        f"half_life_days = {_toml_number(half_life_days)}",
        f"citation = {_toml_string(citation)}",
        "",
        "[radial_dose_function]",
        f"r_cm = {_toml_list(data.g_r_cm)}",
        f"g_line = {_toml_list(data.g_line)}",
        "",
        "[anisotropy_function]",
        "# F[i][j] at theta_deg[i], r_cm[j]; nan = no value in the spreadsheet.",
        f"theta_deg = {_toml_list(data.F_theta_deg)}",
        f"r_cm = {_toml_list(data.F_r_cm)}",
        "F = [",
        *[f"  {_toml_list(row)}," for row in data.F],
        "]",
        "",
    ]
    return "\n".join(lines)


def qa_csv_path(toml_path: str | Path) -> Path:
    """Where the along-away table of an imported source goes: ``NAME_QA_along_away.csv``."""
    toml_path = Path(toml_path)
    return toml_path.with_name(f"{toml_path.stem}_QA_along_away.csv")


def _write_qa_csv(table: AlongAwayTable, path: Path, source_file: str) -> None:
    with path.open("w", newline="") as fh:
        fh.write(f"# Along-away QA table (dose rate per unit S_K) imported from {source_file}.\n")
        fh.write("# flags: 1 = interpolated/extrapolated (bold/underlined) or inside the source.\n")
        writer = csv.writer(fh)
        writer.writerow(QA_COLUMNS)
        for z, y, d, fi, fs in zip(
            table.z_cm,
            table.y_cm,
            table.dose_rate,
            table.flag_interp,
            table.flag_inside,
            strict=True,
        ):
            writer.writerow(
                [
                    repr(float(z)),
                    repr(float(y)),
                    "" if math.isnan(d) else repr(float(d)),
                    int(fi),
                    int(fs),
                ]
            )


def import_consensus_xls(
    xls_path: str | Path,
    out_toml: str | Path,
    *,
    name: str | None = None,
    dataset: str = "HEBD2012",
    sheet: str | None = None,
    half_life_days: float | None = None,
) -> tuple[SourceData, AlongAwayTable, Path]:
    """Import a consensus spreadsheet to ``out_toml`` and its along-away table beside it.

    ``name`` defaults to the output file's stem (less a trailing ``_<dataset>``). The half-life
    defaults to Ir-192's when the sheet's title names 192Ir; otherwise it must be given. Both
    files are written under temporary names, loaded back through the normal loaders, and only
    then renamed into place.

    Returns:
        The validated source, its along-away table and the path of the QA CSV.

    Raises:
        SourceDataError: a malformed spreadsheet (file, sheet and cell) or an invalid result.
    """
    xls_path, out_toml = Path(xls_path), Path(out_toml)
    if out_toml.suffix != ".toml":
        raise SourceDataError(f"{out_toml}: the output must be a .toml file")
    data = read_consensus_sheet(xls_path, sheet)
    is_ir192 = bool(re.search(r"192\s*Ir|Ir\s*-?\s*192", f"{data.title} {data.sheet}", re.I))
    if half_life_days is None:
        if not is_ir192:
            raise SourceDataError(
                f"{xls_path}: sheet {data.sheet!r}: the title {data.title!r} does not name Ir-192; "
                "give the half-life (--half-life-days)"
            )
        half_life_days = IR192_HALF_LIFE_DAYS
    if not (math.isfinite(half_life_days) and half_life_days > 0):
        raise SourceDataError(f"half-life must be a positive number of days, got {half_life_days}")
    if name is None:
        name = out_toml.stem.removesuffix(f"_{dataset}")
    text = source_toml(
        data, name, dataset, half_life_days, "Ir-192" if is_ir192 else "", xls_path.name
    )
    qa_path = qa_csv_path(out_toml)
    with atomic_path(out_toml) as tmp_toml, atomic_path(qa_path) as tmp_qa:
        tmp_toml.write_text(text, encoding="utf-8")
        _write_qa_csv(data.qa, tmp_qa, xls_path.name)
        try:
            load_source_file(tmp_toml)
        except SourceDataError as exc:
            raise SourceDataError(f"{xls_path}: the imported data are invalid: {exc}") from None
        read_along_away_csv(tmp_qa)
    return load_source_file(out_toml), read_along_away_csv(qa_path), qa_path
