"""Property-based (fuzz) tests of the command line's promises on hostile input.

For every generated input the CLI either exits 0 with complete outputs, or exits 2 with a message
that names the input file; never a traceback, never a hang (a time limit per case), and nothing
outside the output changes. Inputs: plan configs with one field set to a hostile value, TG-43
source data files with one entry damaged, DICOM CT/RTSTRUCT headers with one attribute removed
or set to a hostile value, and dwell CSV files of arbitrary bytes.

Profiles (registered in ``conftest.py``): ``ci`` (the default: seeded, a few cases per test) and
``long`` (200 cases per test, random seeds): ``IORTOPT_FUZZ_PROFILE=long pytest
tests/test_fuzz_cli.py`` (or ``--hypothesis-profile long``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import tomllib
from importlib import resources
from pathlib import Path

import pydicom
import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.config import load_config

runner = CliRunner()
TIME_LIMIT_S = 90  # generous: a valid plan compiles and runs in well under this on 2 cores
PLAN_FILES = {"plan.zarr", "summary.json", "dvh.png", "dose_slices.png"}


class Hang(Exception):
    """The command ran past the time limit."""


@contextlib.contextmanager
def time_limit(seconds: int):
    def _raise(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path, skip: set[str]) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``folder`` whose top-level name is not in ``skip``."""
    rows = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        top = rel.parts[0]
        if top in skip or any(top.startswith(f".{s}.") for s in skip):
            continue
        if path.is_file():
            stat = path.stat()
            rows[str(rel)] = (stat.st_size, stat.st_mtime_ns)
    return rows


def invoke(args: list[str], workdir: Path, outputs: set[str]):
    """Run the CLI in ``workdir``; check no traceback, no hang, nothing else changed."""
    before = snapshot(workdir, outputs)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with time_limit(TIME_LIMIT_S):
            result = runner.invoke(app, args)
    finally:
        os.chdir(cwd)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"iortopt {' '.join(args)} raised {result.exception!r}\n{result.output}"
        ) from result.exception
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    assert snapshot(workdir, outputs) == before, "files outside the output changed"
    return result


def assert_names(result, name: str) -> None:
    text = result.output.replace("\n", "")
    assert name in text, f"the message does not name {name}:\n{result.output}"


# ----------------------------------------------------------------------------------------------
# Hostile values
# ----------------------------------------------------------------------------------------------

HOSTILE_NUMBERS = st.sampled_from(
    [float("nan"), float("inf"), float("-inf"), 0.0, -1.0, -0.0, 1e-12, 1e12, 1e300, 10**12, 2**63]
)
HOSTILE = st.one_of(
    HOSTILE_NUMBERS,
    st.sampled_from(["", "x", "nan", "[plan]", "\x00", "../../etc", "é" * 300]),
    st.booleans(),
    st.lists(HOSTILE_NUMBERS, max_size=3),
    st.just({}),
    st.just({"unexpected": 1}),
    st.just([[]]),
)


def leaf_paths(doc, prefix=()) -> list[tuple]:
    """Every path to a scalar or a list of scalars in a parsed TOML document."""
    paths = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += leaf_paths(value, (*prefix, key)) or [(*prefix, key)]
    elif isinstance(doc, list) and doc and isinstance(doc[0], (dict, list)):
        for k, value in enumerate(doc):
            paths += leaf_paths(value, (*prefix, k))
    return paths


def mutated(doc: dict, path: tuple, value, delete: bool) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


# ----------------------------------------------------------------------------------------------
# Plan configs
# ----------------------------------------------------------------------------------------------


def small_plan_doc() -> dict:
    """The built-in example made small and quick (4 mm grid, 4 catheters, 5 iterations)."""
    doc = load_config().model_dump(mode="json", exclude_defaults=True)
    doc["plan"]["name"] = "fuzz"
    doc.setdefault("case", {}).setdefault("flap", {}).update(
        spacing_mm=4.0, supersampling=2, n_catheters=4
    )
    doc.setdefault("optimizer", {})["max_iterations"] = 5
    return doc


# Fields whose valid values legitimately make a run long (iterations) are fuzzed only with
# values that are invalid for them anyway (the hostile set holds no mid-range integers).
CONFIG_DOC = small_plan_doc()
CONFIG_PATHS = [p for p in leaf_paths(CONFIG_DOC)] + [
    ("case", "flap", "supersampling"),
    ("applicator", "step_mm"),
    ("source", "air_kerma_strength_U"),
    ("compute", "memory_limit_mb"),
    ("goals",),
    ("objectives",),
    ("plan",),
    ("unknown_section",),
]


def check_plan_outputs(out: Path, doc: dict) -> None:
    import json

    assert PLAN_FILES <= {p.name for p in out.iterdir()}, sorted(out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"] == doc.get("plan", {}).get("name", "plan")


@given(
    path=st.sampled_from(CONFIG_PATHS),
    value=HOSTILE,
    delete=st.booleans(),
)
def test_run_with_a_hostile_config_field(tmp_path_factory, path, value, delete):
    work = tmp_path_factory.mktemp("cfg")
    if delete:
        try:
            doc = mutated(CONFIG_DOC, path, None, True)
        except (KeyError, IndexError):
            doc = CONFIG_DOC
    else:
        doc = mutated(CONFIG_DOC, path, value, False)
    (work / "plan.toml").write_text(tomli_w.dumps(doc))
    result = invoke(["run", "plan.toml", "--out", "out", "--quiet"], work, {"out"})
    if result.exit_code == 0:
        check_plan_outputs(work / "out", doc)
    else:
        assert_names(result, "plan.toml")
        assert not (work / "out").exists()


@given(content=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_run_with_arbitrary_config_bytes(tmp_path_factory, content):
    work = tmp_path_factory.mktemp("txt")
    (work / "plan.toml").write_bytes(content)
    result = invoke(["run", "plan.toml", "--out", "out", "--quiet"], work, {"out"})
    if result.exit_code == 2:
        assert_names(result, "plan.toml")
        assert not (work / "out").exists()


# ----------------------------------------------------------------------------------------------
# TG-43 source data files
# ----------------------------------------------------------------------------------------------

SOURCE_TEXT = (
    resources.files("iortopt") / "data" / "sources" / "mHDR-v2_HEBD2012.toml"
).read_text()
SOURCE_DOC = tomllib.loads(SOURCE_TEXT)
SOURCE_PATHS = leaf_paths(SOURCE_DOC) + [(k,) for k in SOURCE_DOC]


@given(path=st.sampled_from(SOURCE_PATHS), value=HOSTILE, delete=st.booleans())
def test_qa_with_a_damaged_source_file(tmp_path_factory, path, value, delete):
    work = tmp_path_factory.mktemp("src")
    doc = mutated(SOURCE_DOC, path, value, delete)
    (work / "mysource.toml").write_text(tomli_w.dumps(doc))
    args = ["qa", "along-away", "--source", "mysource.toml", "--out", "rates.csv"]
    result = invoke(args, work, {"rates.csv"})
    if result.exit_code == 2:
        assert_names(result, "mysource.toml")
        assert not (work / "rates.csv").exists()
    else:
        assert (work / "rates.csv").read_text().startswith("z_along_cm")


# ----------------------------------------------------------------------------------------------
# DICOM headers
# ----------------------------------------------------------------------------------------------

CT_ATTRIBUTES = [
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "BitsAllocated",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "SliceThickness",
    "PixelData",
    "Modality",
    "PatientPosition",
]
RS_ATTRIBUTES = [
    "ROIContourSequence",
    "StructureSetROISequence",
    "ReferencedFrameOfReferenceSequence",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
]
DICOM_VALUES = st.one_of(
    st.just(None),  # delete the attribute
    st.sampled_from([0, -1, 65535, 2**31 - 1, "", "nan", "0\\0", "-1\\-1", "1\\nan", "x"]),
)


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory):
    from iortopt.dicom.synthetic import write_synthetic_study

    return write_synthetic_study(
        tmp_path_factory.mktemp("study"), n_pixels=24, pixel_mm=4.0, n_slices=10, slice_mm=8.0
    )


INT_RANGE = {
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
}


def damage(path: Path, keyword: str, value) -> None:
    ds = pydicom.dcmread(path)
    if value is None:
        if keyword in ds:
            delattr(ds, keyword)
    else:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        vr = pydicom.datadict.dictionary_VR(tag)
        if vr == "SQ":
            ds[tag].value = []
        elif vr in INT_RANGE and isinstance(value, int):
            low, high = INT_RANGE[vr]
            ds[tag] = pydicom.DataElement(tag, vr, min(max(value, low), high))
        elif vr in ("OB", "OW"):
            ds[tag].value = bytes(str(value), "ascii")[:3]
        elif vr in ("US", "SS", "UL", "SL"):
            ds[tag] = pydicom.DataElement(tag, vr, 0)
        else:  # raw bytes: pydicom would refuse to convert e.g. "x" for a DS on writing
            raw = str(value).encode("ascii", "replace")
            raw += b" " * (len(raw) % 2)
            ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, True, True)
    ds.save_as(path, enforce_file_format=False)


@given(
    keyword=st.sampled_from(CT_ATTRIBUTES + RS_ATTRIBUTES),
    value=DICOM_VALUES,
    every_slice=st.booleans(),
)
def test_dicom_with_a_damaged_header(tmp_path_factory, dicom_study, keyword, value, every_slice):
    work = tmp_path_factory.mktemp("dcm")
    shutil.copytree(dicom_study.folder, work / "study")
    ct_files = sorted((work / "study" / "CT").glob("*.dcm"))
    if keyword in RS_ATTRIBUTES and keyword not in CT_ATTRIBUTES:
        damage(work / "study" / dicom_study.rtstruct.name, keyword, value)
    else:
        for path in ct_files if every_slice else ct_files[3:4]:
            damage(path, keyword, value)
    result = invoke(["dicom", "inspect", "study"], work, set())
    if result.exit_code == 2:
        assert_names(result, "study")
    args = [
        "dicom",
        "import",
        "study/CT",
        "--rtstruct",
        f"study/{dicom_study.rtstruct.name}",
        "--target",
        "CTV=GTV",
        "--spacing-mm",
        "6",
        "--supersample",
        "2",
        "--out",
        "case.zarr",
    ]
    result = invoke(args, work, {"case.zarr"})
    if result.exit_code == 2:
        assert_names(result, "study")
        assert not (work / "case.zarr").exists()
    else:
        assert (work / "case.zarr" / "zarr.json").exists()


# ----------------------------------------------------------------------------------------------
# Dwell lists
# ----------------------------------------------------------------------------------------------

HEADER = "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s\n"
ROW_VALUES = st.one_of(
    st.floats(-50, 50, allow_nan=False), HOSTILE_NUMBERS, st.sampled_from(["", "a", "1e999"])
)


@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.lists(st.lists(ROW_VALUES, min_size=5, max_size=8), min_size=1, max_size=4).map(
            lambda rows: (HEADER + "\n".join(",".join(map(str, r)) for r in rows)).encode()
        ),
    )
)
def test_dose_with_an_arbitrary_dwells_file(tmp_path_factory, content):
    work = tmp_path_factory.mktemp("dw")
    (work / "dwells.csv").write_bytes(content)
    args = ["dose", "dwells.csv", "--out", "dose.zarr", "--spacing-mm", "5", "--margin-mm", "10"]
    result = invoke(args, work, {"dose.zarr"})
    if result.exit_code == 2:
        assert_names(result, "dwells.csv")
        assert not (work / "dose.zarr").exists()
    else:
        assert (work / "dose.zarr" / "zarr.json").exists()
