"""``iortopt sources import``: consensus (HEBD 2012 / ESTRO) spreadsheets to iortopt source files.

The importer must reproduce the packaged GammaMed Plus and mHDR-v2 consensus datasets (which were
transcribed independently from the same spreadsheets to 7 significant digits) and their
along-away QA tables, and refuse malformed sheets naming the sheet and cell.
"""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

xlrd = pytest.importorskip("xlrd")

from iortopt.cli import app  # noqa: E402
from iortopt.errors import SourceDataError  # noqa: E402
from iortopt.physics import consensus_xls  # noqa: E402
from iortopt.physics.consensus_qa import compare_with_consensus, consensus_table  # noqa: E402
from iortopt.physics.consensus_xls import import_consensus_xls  # noqa: E402
from iortopt.physics.sources import load_source  # noqa: E402

XLS_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tg43" / "estro_xls"
#: A copy in the tests (tests/data/estro_xls/PROVENANCE.md), so the import is checked everywhere.
GAMMAMED = Path(__file__).resolve().parent / "data" / "estro_xls" / "192ir-hdr_gammamed_plus.xls"
#: Only in the shared reference folder (540 kB): its cases skip where that is absent.
MHDR = XLS_DIR / "192ir-hdr-nucletron-mhdr-v2.xls"
#: The packaged tables were written with 7 significant digits: half a unit in the 7th digit.
PACKAGED_RTOL = 5e-7

needs_mhdr = pytest.mark.skipif(
    not MHDR.is_file(), reason="the shared reference folder's mHDR-v2 spreadsheet is not here"
)
runner = CliRunner()


def _assert_same_tables(imported, packaged):
    assert imported.dose_rate_constant == packaged.dose_rate_constant
    assert imported.active_length_cm == packaged.active_length_cm
    assert imported.half_life_days == packaged.half_life_days
    np.testing.assert_array_equal(imported.g_r_cm, packaged.g_r_cm)
    np.testing.assert_allclose(imported.g_line, packaged.g_line, rtol=PACKAGED_RTOL, atol=0)
    np.testing.assert_array_equal(imported.F_theta_deg, packaged.F_theta_deg)
    np.testing.assert_array_equal(imported.F_r_cm, packaged.F_r_cm)
    np.testing.assert_allclose(imported.F, packaged.F, rtol=PACKAGED_RTOL, atol=0)


def _assert_same_qa(imported, packaged):
    np.testing.assert_array_equal(imported.z_cm, packaged.z_cm)
    np.testing.assert_array_equal(imported.y_cm, packaged.y_cm)
    np.testing.assert_array_equal(np.isnan(imported.dose_rate), np.isnan(packaged.dose_rate))
    np.testing.assert_allclose(imported.dose_rate, packaged.dose_rate, rtol=PACKAGED_RTOL)
    np.testing.assert_array_equal(imported.flag_interp, packaged.flag_interp)
    np.testing.assert_array_equal(imported.flag_inside, packaged.flag_inside)


@pytest.mark.parametrize(
    ("xls", "key"),
    [
        (GAMMAMED, "GammaMedPlus_HEBD2012"),
        pytest.param(MHDR, "mHDR-v2_HEBD2012", marks=needs_mhdr),
    ],
)
def test_import_reproduces_the_packaged_consensus_dataset(xls, key, tmp_path):
    out = tmp_path / f"{key}.toml"
    source, table, qa_path = import_consensus_xls(xls, out)
    assert source.key == key and qa_path == tmp_path / f"{key}_QA_along_away.csv"
    packaged = load_source(key)
    _assert_same_tables(source, packaged)
    _assert_same_tables(load_source(str(out)), packaged)  # the file loads as a user file
    _assert_same_qa(table, consensus_table(packaged))
    assert table.z_cm.size == 228 and int(table.flagged.sum()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, qa_path.name])


def test_imported_source_meets_its_own_qa_table(tmp_path):
    """The engine with the imported data reproduces the imported along-away table (1 %, 0.3 %)."""
    from iortopt.physics.tg43 import make_kernel

    source, table, _ = import_consensus_xls(GAMMAMED, tmp_path / "GMP.toml", name="GMP")
    assert source.key == "GMP_HEBD2012"
    result = compare_with_consensus(make_kernel(source), table)
    assert result["n_points"] > 200
    assert result["max_abs_dev_percent_r_ge_0.25cm"] <= 1.0
    assert result["max_abs_dev_percent_r_ge_1cm"] <= 0.3


def test_cli_import_writes_both_files_and_listing_still_works(tmp_path):
    out = tmp_path / "sub" / "GammaMedPlus_HEBD2012.toml"
    result = runner.invoke(app, ["sources", "import", str(GAMMAMED), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (out.parent / "GammaMedPlus_HEBD2012_QA_along_away.csv").is_file()
    assert "GammaMedPlus_HEBD2012" in result.output
    listing = runner.invoke(app, ["sources"])
    assert listing.exit_code == 0 and "mHDR-v2_HEBD2012" in listing.output


# --------------------------------------------------------------------------- malformed sheets


class _PatchedSheet:
    """An xlrd sheet with some cells replaced: ``{(row, col): value}`` (str, float or None)."""

    def __init__(self, sheet, patches):
        self._sheet, self._patches = sheet, patches
        self.name, self.nrows, self.ncols = sheet.name, sheet.nrows, sheet.ncols

    def cell(self, row, col):
        if (row, col) not in self._patches:
            return self._sheet.cell(row, col)
        value = self._patches[(row, col)]
        if value is None:
            return xlrd.sheet.Cell(xlrd.XL_CELL_EMPTY, "")
        kind = xlrd.XL_CELL_TEXT if isinstance(value, str) else xlrd.XL_CELL_NUMBER
        return xlrd.sheet.Cell(kind, value)

    def cell_xf_index(self, row, col):
        return self._sheet.cell_xf_index(row, col)


class _PatchedBook:
    def __init__(self, book, patches):
        self._book = book
        self.xf_list, self.font_list = book.xf_list, book.font_list
        self._sheets = [_PatchedSheet(s, patches) for s in book.sheets()]

    def sheets(self):
        return self._sheets

    def sheet_names(self):
        return [s.name for s in self._sheets]

    def sheet_by_name(self, name):
        return next(s for s in self._sheets if s.name == name)


def _import_patched(monkeypatch, tmp_path, patches):
    book = xlrd.open_workbook(str(GAMMAMED), formatting_info=True)
    monkeypatch.setattr(consensus_xls, "_open_book", lambda path: _PatchedBook(book, patches))
    return import_consensus_xls(GAMMAMED, tmp_path / "out.toml")


# Cells of the GammaMed Plus sheet (0-based row, col): g_L at r = 0.5 cm is C15 = (14, 2).
@pytest.mark.parametrize(
    ("patches", "message"),
    [
        ({(14, 2): "n/a"}, "cell C15: expected a number, found 'n/a'"),
        ({(14, 2): None}, "cell C15: no g_L value at r = 0.5 cm"),
        ({(10, 24): "z"}, "expected one 'z / cm' (along-away table) label, found no"),
        ({(4, 4): ""}, "expected one 'L =' cell with the dose-rate constant"),
        ({(9, 2): -0.35}, "cell C10: active length (cm) must be a positive number"),
        ({(16, 2): 2.0}, "the imported data are invalid"),  # g_L(1 cm) = 2
    ],
)
def test_malformed_sheet_is_refused_naming_sheet_and_cell(monkeypatch, tmp_path, patches, message):
    with pytest.raises(SourceDataError, match="sheet 'HDR Plus'|imported data") as info:
        _import_patched(monkeypatch, tmp_path, patches)
    assert message in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_cli_refusals_exit_2(tmp_path):
    text = tmp_path / "table.xls"
    text.write_text("r_cm,g\n")
    cases = [
        ([str(tmp_path / "missing.xls")], "no such file"),
        ([str(text)], "not a readable .xls spreadsheet"),
        ([str(GAMMAMED), "--sheet", "Nope"], "no sheet 'Nope'"),
    ]
    if MHDR.is_file():
        cases.append(([str(MHDR), "--sheet", "readme first"], "expected one 'r (cm)'"))
    for args, message in cases:
        result = runner.invoke(app, ["sources", "import", *args, "--out", str(tmp_path / "o.toml")])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert not (tmp_path / "o.toml").exists()
