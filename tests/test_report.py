"""Report figures (valid PNGs written atomically; importing the module does not load
matplotlib) and the plan report, report.html, built from an output folder alone."""

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from html import escape as html_escape
from html import unescape as html_unescape
from html.parser import HTMLParser

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from iortopt.cases.case import Structure
from iortopt.cli import app
from iortopt.evaluation import dvh
from iortopt.grid import Grid
from iortopt.outputs import figures as report
from iortopt.outputs.report import build_report_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_case():
    grid = Grid((12, 14, 16), (2.0, 2.0, 2.5), (-15.0, -13.0, -12.5))
    z, y, x = np.meshgrid(grid.axis_mm("z"), grid.axis_mm("y"), grid.axis_mm("x"), indexing="ij")
    r2 = x**2 + y**2 + z**2
    dose = 200.0 / (r2 + 4.0)
    target = (r2 <= 8.0**2).astype(np.float32)
    oar = (((x - 8.0) ** 2 + y**2 + (z + 8.0) ** 2) <= 5.0**2).astype(np.float32)
    structures = (Structure("CTV", "target", target), Structure("rectum", "oar", oar))
    return grid, dose, structures


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


def test_plot_dvh(tmp_path, small_case):
    grid, dose, structures = small_case
    vv = grid.voxel_volume_cm3
    dvhs = {s.name: dvh.cumulative_dvh(dose, s.occupancy, vv) for s in structures}
    out = report.plot_dvh(dvhs, tmp_path / "dvh.png", prescription_gy=5.0, title="test")
    assert out == tmp_path / "dvh.png"
    assert_png(out)


def test_plot_dose_slices(tmp_path, small_case):
    grid, dose, structures = small_case
    dwells = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [100.0, 0.0, 0.0]])
    out = report.plot_dose_slices(dose, grid, structures, tmp_path / "slices.png", [2.0, 5.0, 10.0],
                                  dwell_positions_mm=dwells, title="test")  # fmt: skip
    assert_png(out)


def _mean_grey(path) -> float:
    from matplotlib.image import imread

    return float(imread(path)[..., :3].mean())


def test_dose_slices_draw_the_ct_underneath(tmp_path, small_case):
    """Where the dose wash is transparent the CT shows: a CT of air (-1000 HU, black in the
    window) darkens the panels against the plain white of the figure without HU; a CT of the
    wrong shape is refused."""
    grid, dose, structures = small_case
    plain = report.plot_dose_slices(dose, grid, structures, tmp_path / "a" / "p.png", [5.0])
    air = np.full(grid.shape_zyx, -1000.0, np.float32)
    path = tmp_path / "b" / "p.png"
    with_ct = report.plot_dose_slices(dose, grid, structures, path, [5.0], hu=air)
    assert _mean_grey(with_ct) < _mean_grey(plain) - 0.05
    with pytest.raises(ValueError, match="hu shape"):
        report.plot_dose_slices(dose, grid, structures, tmp_path / "c.png", [5.0], hu=air[1:])


def test_plot_overwrites_and_failure_leaves_nothing(tmp_path, small_case, monkeypatch):
    grid, dose, structures = small_case
    path = tmp_path / "slices.png"
    for _ in range(2):
        report.plot_dose_slices(dose, grid, structures, path, [5.0], centre_xyz_mm=(0, 0, 0))
    assert_png(path)

    from matplotlib.figure import Figure

    def broken_savefig(self, fh, **kwargs):
        fh.write(PNG_MAGIC)
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        report.plot_dvh({}, tmp_path / "new.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices.png"]


def test_default_centre_is_target_centroid():
    grid = Grid((5, 6, 7), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0))
    occ = np.zeros(grid.shape_zyx, np.float32)
    occ[3, 2, 1] = 1.0
    occ[3, 2, 5] = 0.5  # x indices 1 (weight 1) and 5 (weight 0.5): centroid x index 7/3
    centre = report._default_centre_xyz_mm(grid, [Structure("T", "target", occ)])
    assert np.allclose(centre, [10.0 + 7 / 3, 20.0 + 2 * 2.0, 30.0 + 3 * 3.0])


def test_import_is_cheap():
    code = "import sys, iortopt.outputs.figures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _capture_figures(monkeypatch) -> list:
    """Keep each figure the plot functions save (they still write their PNG)."""
    figs = []
    save = report._save_png_atomic

    def keep(fig, path):
        figs.append(fig)
        return save(fig, path)

    monkeypatch.setattr(report, "_save_png_atomic", keep)
    return figs


def test_structures_have_one_colour_in_every_figure(tmp_path, small_case, monkeypatch):
    """The DVH (given only the clinical structures) and the slices (all of them) draw each
    structure in the colour structure_colours gives it from the case's list."""
    from matplotlib.colors import to_hex

    grid, dose, structures = small_case
    ring = Structure("ring", "other", np.clip(structures[0].occupancy * 0.0 + 0.2, 0, 1))
    case_structures = (ring, *structures)  # an "other" structure first shifts the order
    colours = report.structure_colours([s.name for s in case_structures])
    assert colours == report.structure_colours([s.name for s in case_structures])  # fixed
    assert len(set(colours.values())) == len(case_structures)
    figs = _capture_figures(monkeypatch)
    vv = grid.voxel_volume_cm3
    dvhs = {s.name: dvh.cumulative_dvh(dose, s.occupancy, vv) for s in structures}
    assert_png(report.plot_dvh(dvhs, tmp_path / "d" / "dvh.png", 5.0, colours=colours))
    report.plot_dose_slices(dose, grid, case_structures, tmp_path / "s" / "s.png", [5.0],
                            colours=colours, prescription_gy=5.0)  # fmt: skip
    dvh_fig, slice_fig = figs
    dvh_colours = {
        line.get_label().split(" (")[0]: to_hex(line.get_color())
        for line in dvh_fig.axes[0].get_lines()
        if line.get_label().split(" (")[0] in dvhs
    }
    slice_colours = {
        h.get_label(): to_hex(h.get_color())
        for h in slice_fig.legends[0].legend_handles
        if h.get_label() in colours
    }
    assert dvh_colours == {name: colours[name] for name in dvhs}
    assert slice_colours == colours
    assert "isodose (Gy, % of 5 Gy)" in [h.get_label() for h in slice_fig.legends[0].legend_handles]


def test_isodose_labels_give_gy_and_percent():
    assert report.isodose_label(10.0, 10.0) == "10 Gy (100 %)"
    assert report.isodose_label(5.0, 10.0) == "5 Gy (50 %)"
    assert report.isodose_label(7.5, None) == "7.5 Gy"


def test_dvh_marks_the_goals(tmp_path, small_case, monkeypatch):
    """Each goal with a DVH point gets a marker there: green if met, red if not."""
    from matplotlib.colors import to_hex

    grid, dose, structures = small_case
    vv = grid.voxel_volume_cm3
    dvhs = {s.name: dvh.cumulative_dvh(dose, s.occupancy, vv) for s in structures}
    total = dvhs["rectum"].total_volume_cm3
    goals = [
        {"structure": "CTV", "metric": "D90_gy", "op": ">=", "limit": 5.0, "met": True},
        {"structure": "CTV", "metric": "V100_percent", "op": ">=", "limit": 95.0, "met": False},
        {"structure": "rectum", "metric": "D0.1cc_gy", "op": "<=", "limit": 4.0, "met": False},
        {"structure": "rectum", "metric": "max_gy", "op": "<=", "limit": 6.0, "met": True},
        {"structure": "rectum", "metric": "mean_gy", "op": "<=", "limit": 3.0, "met": True},
    ]
    points = [report.goal_point(g, dvhs[g["structure"]], 10.0) for g in goals]
    assert points[0] == (5.0, 90.0)
    assert points[1] == (10.0, 95.0)
    assert points[2] == pytest.approx((4.0, 100.0 * 0.1 / total))
    assert points[3] == (6.0, 0.0)
    assert points[4] is None  # a mean has no point on the DVH
    assert report.goal_point(goals[1], dvhs["CTV"], None) is None
    figs = _capture_figures(monkeypatch)
    assert_png(report.plot_dvh(dvhs, tmp_path / "dvh.png", 10.0, goals=goals))
    ax = figs[0].axes[0]
    markers = [ln for ln in ax.get_lines() if ln.get_marker() in ("^", "v")]
    drawn = {
        (float(m.get_xdata()[0]), float(m.get_ydata()[0])): to_hex(m.get_mfc()) for m in markers
    }
    assert len(drawn) == 4
    assert drawn[(5.0, 90.0)] == report.GOAL_MET_COLOUR
    assert drawn[(10.0, 95.0)] == report.GOAL_NOT_MET_COLOUR
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "1: CTV D90 >= 5 Gy (met)" in labels
    assert "3: rectum D0.1cc <= 4 Gy (NOT met)" in labels
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3", "4"]
    assert report.goal_text(goals[1]) == "CTV V100 >= 95 %"


# ----------------------------------------------------------------------------------------------
# report.html: the plan report built from an output folder alone (iortopt.outputs.report)
# ----------------------------------------------------------------------------------------------

HDR_SECTIONS = [
    "warnings", "identification", "technique", "dwells", "prescription", "goals", "metrics",
    "dvh", "isodoses", "provenance", "signature",
]  # fmt: skip


class _Sections(HTMLParser):
    """Ids of the <section> elements, <img> sources and external references of a page."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.ids.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if (attrs.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])
        if tag == "link":
            self.external.append(attrs.get("href", ""))


def parse_report(html: str) -> _Sections:
    parser = _Sections()
    parser.feed(html)
    return parser


def _cells(html: str, table_caption: str) -> list[list[str]]:
    """Body rows (cell texts) of the table with ``<caption>table_caption</caption>``."""
    start = html.index(f"<caption>{table_caption}</caption>")
    body = html[html.index("<tbody>", start) : html.index("</tbody>", start)]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in body.split("</tr>") if "<td" in row]


@pytest.fixture(scope="module")
def plan_report(small_plan_output):
    html = (small_plan_output / "report.html").read_text(encoding="utf-8")
    return small_plan_output, html, json.loads((small_plan_output / "summary.json").read_text())


def test_report_holds_every_section_and_embeds_its_figures(plan_report):
    out, html, summary = plan_report
    page = parse_report(html)
    assert page.ids == HDR_SECTIONS
    assert page.external == []  # nothing fetched when it is opened
    # both figures embedded byte for byte
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.images]
    assert embedded == [
        (out / name).read_bytes() for name in ("dvh.png", "dose_slices.png", "hot_spot_slices.png")
    ]
    # the DVH data for the interactive plot: every clinical structure, none of role "other"
    data = json.loads(re.search(r'id="dvh-data">(.*?)</script>', html, re.S).group(1))
    assert [c["name"] for c in data["curves"]] == ["CTV", "sacrum", "ureter", "bowel"]
    for curve in data["curves"]:
        assert curve["volume_percent"][0] == pytest.approx(100.0, abs=0.5)
        assert np.all(np.diff(curve["volume_percent"]) <= 1e-9)  # cumulative: never rises
    assert "IORT plan report: flap_default" in html and "Perez-Calatayud" in html


def test_report_dwell_table_times_and_trak(plan_report):
    """The dwell tables against the stored dwells; TRAK = S_K x total time (1 U = 1 uGy m^2/h)."""
    out, html, summary = plan_report
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    times = np.asarray(root["dwells/times_s"][...])
    catheter = np.asarray(root["dwells/catheter"][...])
    positions = np.asarray(root["dwells/positions_mm"][...])
    shown = 0
    for c in np.unique(catheter):
        rows = _cells(html, f"catheter {c + 1}")
        mine = np.flatnonzero(catheter == c)
        assert len(rows) == mine.size
        assert sum(float(r[4]) for r in rows) == pytest.approx(
            times[mine].sum(), abs=0.05 * len(rows)
        )
        x_shown = sorted(float(r[1]) for r in rows)
        np.testing.assert_allclose(x_shown, np.sort(positions[mine, 0]), atol=0.051)
        shown += len(rows)
    assert shown == times.size == summary["n_dwells_active"]
    trak = 40700.0 * times.sum() / 3600.0  # the built-in source: 40700 U, no decay
    assert summary["total_reference_air_kerma_uGy_m2"] == pytest.approx(trak, rel=1e-5)
    shown_trak = float(re.search(r"<td>([\d.e+]+) µGy m² \(= ", html).group(1))
    assert shown_trak == pytest.approx(trak, rel=1e-3)  # printed to 4 figures at least
    strength = summary["source_strength"]
    assert (
        strength["decay_factor"] == 1.0 and strength["air_kerma_strength_U_at_treatment"] == 40700
    )


def test_report_provenance_shows_the_config_and_its_hash(plan_report):
    out, html, summary = plan_report
    text = (out.parent / "small_flap.toml").read_text(encoding="utf-8")
    assert summary["config_source"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert hashlib.sha256(text.encode()).hexdigest() in html
    shown = re.search(r'<pre class="config">(.*?)</pre>', html, re.S).group(1)
    assert html_unescape(shown) == text  # the whole file, escaped as text
    assert "float32" in html and "optimise_s" in html


def test_iortopt_report_rebuilds_the_same_file_fast(plan_report, tmp_path):
    out, html, _ = plan_report
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert (copy / "report.html").read_text(encoding="utf-8") == html
    build_report_html(copy)  # warm (imports, template compiled), then time it
    t0 = time.perf_counter()
    build_report_html(copy)
    assert time.perf_counter() - t0 < 0.3
    assert not [p.name for p in copy.iterdir() if ".tmp" in p.name]


def test_report_escapes_names_and_renders_optional_results(plan_report, tmp_path):
    """A structure named with markup is shown as text; robust / second-check blocks render as
    tables; an illustrative-data note and an unmet goal go to the warnings box."""
    out, _, summary = plan_report
    copy = tmp_path / "edited"
    copy.mkdir()
    for name in ("dvh.png", "dose_slices.png"):
        shutil.copy(out / name, copy / name)
    evil = "<img src=x onerror=alert(1)>"
    summary = json.loads(json.dumps(summary))
    summary["metrics"][evil] = summary["metrics"].pop("bowel")
    summary["goals"][0] |= {"structure": evil, "met": False}
    summary["notes"] = ["ILLUSTRATIVE transmission data, not for clinical use"]
    summary["robust"] = {"scenarios": 7, "bands": [{"structure": "CTV", "D90_min_gy": 9.5}]}
    summary["second_check"] = {"method": "independent TG-43", "max_deviation_percent": 1.25}
    (copy / "summary.json").write_text(json.dumps(summary))
    html = build_report_html(copy)
    assert evil not in html and html_escape(evil) in html
    page = parse_report(html)
    assert page.ids == [
        "warnings", "identification", "technique", "dwells", "prescription", "goals", "metrics",
        "dvh", "isodoses", "robust", "second-check", "provenance", "signature",
    ]  # fmt: skip
    assert page.images[0].startswith("data:image/png;base64,")
    warnings = html[html.index('id="warnings"') : html.index('id="identification"')]
    assert "ILLUSTRATIVE transmission data" in warnings and "goal not met" in warnings
    robust = html[html.index('id="robust"') : html.index('id="second-check"')]
    assert "D90_min_gy" in robust and "9.5" in robust and "7" in robust
    assert "1.25" in html[html.index('id="second-check"') : html.index('id="provenance"')]
    # without plan.zarr the report says what it could not show
    assert "plan.zarr" in warnings and "dwells/" in html


@pytest.mark.parametrize("make", ["missing", "no_summary", "bad_json", "file"])
def test_iortopt_report_refuses_what_is_not_an_output(tmp_path, make):
    target = tmp_path / "out"
    if make != "missing":
        target.mkdir()
    if make == "bad_json":
        (target / "summary.json").write_text("{not json")
    if make == "file":
        target.rmdir()
        target.write_text("x")
    res = CliRunner().invoke(app, ["report", str(target)])
    assert res.exit_code == 2, res.output
    assert str(target) in res.output  # the message names the path
    if target.is_dir():
        assert not (target / "report.html").exists()


def test_report_lists_each_oars_hottest_voxel(plan_report):
    """Against the stored dose and occupancies: the maximum over the voxels inside each OAR."""
    out, html, summary = plan_report
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    dose = np.asarray(root["dose_gy"][...])
    grid = root["dose_gy"].attrs["grid"]
    spots = {h["structure"]: h for h in summary["oar_hot_spots"]}
    assert set(spots) == {"sacrum", "ureter", "bowel"}
    for name, spot in spots.items():
        inside = np.asarray(root[f"structures/{name}"][...]) >= 0.5
        assert spot["dose_gy"] == pytest.approx(float(dose[inside].max()), rel=1e-6)
        k, j, i = np.argwhere(inside & (dose == dose[inside].max()))[0]
        x0, y0, z0 = grid["origin_xyz_mm"]
        sx, sy, sz = grid["spacing_xyz_mm"]
        assert spot["position_mm"] == pytest.approx([x0 + i * sx, y0 + j * sy, z0 + k * sz])
    isodoses = html[html.index('id="isodoses"') : html.index('id="provenance"')]
    hottest = summary["oar_hot_spots"][0]
    assert (
        f'<td>{hottest["structure"]}</td><td class="num">{hottest["dose_gy"]:.4g}</td>' in isodoses
    )


def test_source_strength_gives_both_s_k_and_the_decay_factor():
    """Ir-192 over 30 days: S_K(treatment) = S_K(calibration) x 2^(-30 / 73.83)."""
    import jax.numpy as jnp

    from iortopt.config import builtin_config_text, parse_config
    from iortopt.modalities.hdr_flap.pipeline import source_strength
    from iortopt.pipeline import prepare_modality

    text = builtin_config_text().replace("spacing_mm = 2.0", "spacing_mm = 5.0", 1)
    doc = tomllib.loads(text)
    doc["source"] |= {"calibration": "2026-11-01T08:00:00", "treatment": "2026-12-01T08:00:00"}
    strength = source_strength(prepare_modality(parse_config(doc), jnp.float32))
    factor = 2.0 ** (-30.0 / 73.83)
    assert strength["decay_factor"] == pytest.approx(factor, rel=1e-9)
    assert strength["air_kerma_strength_U_at_calibration"] == 40700.0
    assert strength["air_kerma_strength_U_at_treatment"] == pytest.approx(40700.0 * factor)
    assert (
        strength["calibration"] == "2026-11-01T08:00:00"
        and "Perez-Calatayud" in strength["citation"]
    )


def test_hot_spot_slices_pass_through_the_hottest_oar_voxel(tmp_path, small_case, monkeypatch):
    """The second slice figure is centred on the first (hottest) OAR spot, and the slices pass
    through that voxel (each panel is titled with the coordinate of its slice)."""
    from iortopt.outputs import plan_files

    grid, dose, structures = small_case
    spots = [
        {"structure": "bowel", "dose_gy": 9.0, "position_mm": [12.0, -6.0, 3.0]},
        {"structure": "ureter", "dose_gy": 7.0, "position_mm": [0.0, 0.0, 0.0]},
    ]
    assert plan_files.hot_spot_centre_mm({"oar_hot_spots": spots}) == [12.0, -6.0, 3.0]
    assert plan_files.hot_spot_centre_mm({"oar_hot_spots": []}) is None
    figs = _capture_figures(monkeypatch)
    spot = np.asarray(spots[0]["position_mm"])
    report.plot_dose_slices(dose, grid, structures, tmp_path / "h.png", [5.0], centre_xyz_mm=spot)
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_title()]
    k, j, i = np.clip(np.rint(grid.mm_to_index(spot)).astype(int), 0, np.array(grid.shape_zyx) - 1)
    x, y, z = grid.index_to_mm((k, j, i))
    assert titles[:3] == [f"axial, z = {z:.1f} mm", f"coronal, y = {y:.1f} mm",
                          f"sagittal, x = {x:.1f} mm"]  # fmt: skip
