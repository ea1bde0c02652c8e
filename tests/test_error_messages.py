"""Every error path a message: hostile DICOM headers, truncated files, text encodings, rich markup
in messages and ``batch --list`` validation. Each case is an InputFileError (exit 2 in the CLI)
naming the file and the attribute, never a traceback."""

from __future__ import annotations

import codecs
import time

import pydicom
import pytest
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.config import load_config
from iortopt.dicom.ct import read_ct_series
from iortopt.dicom.rtstruct import read_structure_set
from iortopt.dicom.synthetic import write_synthetic_study
from iortopt.errors import ConfigError, InputFileError
from iortopt.io.dwells_csv import read_dwells_csv
from iortopt.physics.consensus_qa import read_points_csv

runner = CliRunner()
WIDE = {"COLUMNS": "400"}


@pytest.fixture
def study(tmp_path):
    """A small synthetic study (16 x 16 pixels, 6 slices): fast to write and to break."""
    return write_synthetic_study(tmp_path, n_pixels=16, pixel_mm=5.0, slice_mm=4.0, n_slices=6)


def _edit(path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _edit_all_ct(study, change) -> None:
    for path in sorted(study.ct_folder.iterdir()):
        _edit(path, change)


def _delete(keyword):
    return lambda ds: delattr(ds, keyword)


def _inspect(study, *extra):
    return runner.invoke(app, ["dicom", "inspect", str(study.folder), *extra], env=WIDE)


def _import(study, tmp_path):
    args = ["dicom", "import", str(study.ct_folder), "--rtstruct", str(study.rtstruct)]
    args += ["--target", "CTV=GTV", "--out", str(tmp_path / "case.zarr")]
    return runner.invoke(app, args, env=WIDE)


def _one_line(output: str) -> str:
    return " ".join(output.split())


# --------------------------------------------------------------------------- CT headers


@pytest.mark.parametrize(
    "keyword, change, expected",
    [
        ("Rows", _delete("Rows"), r"Rows \(0028,0010\) is missing"),
        ("Columns", lambda ds: setattr(ds, "Columns", 0), r"Columns \(0028,0011\) is 0"),
        (
            "PixelSpacing",
            lambda ds: setattr(ds, "PixelSpacing", [0, 1.25]),
            r"PixelSpacing \(0028,0030\) is .*expected 2 finite positive numbers",
        ),
        (
            "PixelSpacing",
            lambda ds: setattr(ds, "PixelSpacing", [-1.25, -1.25]),
            r"PixelSpacing \(0028,0030\) is .*positive",
        ),
        ("BitsAllocated", lambda ds: setattr(ds, "BitsAllocated", 12), r"BitsAllocated.*one of 8"),
        (
            "ImageOrientationPatient",
            lambda ds: setattr(ds, "ImageOrientationPatient", [2, 0, 0, 0, 1, 0]),
            "not two orthogonal unit vectors",
        ),
        ("StudyInstanceUID", _delete("StudyInstanceUID"), r"StudyInstanceUID \(0020,000D\)"),
    ],
)
def test_ct_header_errors_name_the_file_and_attribute(study, tmp_path, keyword, change, expected):
    _edit_all_ct(study, change)
    with pytest.raises(InputFileError, match=expected) as info:
        read_ct_series(study.ct_folder)
    assert "CT_000.dcm" in str(info.value) and keyword in str(info.value)
    res = _import(study, tmp_path)
    assert res.exit_code == 2, res.output
    assert keyword in res.output and "CT_000.dcm" in _one_line(res.output)
    assert not (tmp_path / "case.zarr").exists()


def test_ct_without_series_uid_names_the_file(study):
    _edit(sorted(study.ct_folder.iterdir())[2], _delete("SeriesInstanceUID"))
    res = _inspect(study)
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert "CT_002.dcm" in text and "SeriesInstanceUID (0020,000E) is missing" in text


def test_huge_ct_header_is_refused_before_allocating(study):
    _edit_all_ct(study, lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)))
    t0 = time.perf_counter()
    with pytest.raises(InputFileError, match=r"Rows 65535 x Columns 65535") as info:
        read_ct_series(study.ct_folder)
    assert time.perf_counter() - t0 < 5.0  # nothing of 6 x 65535**2 x 4 bytes was allocated
    assert "CT_000.dcm" in str(info.value) and "MiB" in str(info.value)


def test_truncated_ct_slice_is_named(study, tmp_path):
    path = sorted(study.ct_folder.iterdir())[3]
    path.write_bytes(path.read_bytes()[:-100])  # cut inside the pixel data
    with pytest.raises(InputFileError, match="CT_003.dcm: truncated DICOM file"):
        read_ct_series(study.ct_folder)
    res = _import(study, tmp_path)
    assert res.exit_code == 2 and "truncated" in res.output


def test_short_pixel_data_is_named(study):
    path = sorted(study.ct_folder.iterdir())[1]
    _edit(path, lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]))
    with pytest.raises(InputFileError, match=r"CT_001.dcm: pixel data truncated: 100 bytes"):
        read_ct_series(study.ct_folder)


# --------------------------------------------------------------------------- RTSTRUCT


def _first_item(sequence, keyword):
    return lambda ds: delattr(getattr(ds, sequence)[0], keyword)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            _first_item("StructureSetROISequence", "ROINumber"),
            r"StructureSetROISequence item 0: required attribute ROINumber \(3006,0022\)",
        ),
        (
            _first_item("ROIContourSequence", "ReferencedROINumber"),
            r"ROIContourSequence item 0: required attribute ReferencedROINumber",
        ),
        (_delete("SOPInstanceUID"), r"SOPInstanceUID \(0008,0018\) is missing"),
        (_delete("StructureSetROISequence"), "StructureSetROISequence"),
    ],
)
def test_rtstruct_attribute_errors(study, change, expected):
    _edit(study.rtstruct, change)
    with pytest.raises(InputFileError, match=expected) as info:
        read_structure_set(study.rtstruct)
    assert str(study.rtstruct) in str(info.value)
    res = _inspect(study)
    assert res.exit_code == 2, res.output
    assert "RS.dcm" in res.output


def test_truncated_rtstruct_is_not_an_empty_roi(study, tmp_path):
    data = study.rtstruct.read_bytes()
    study.rtstruct.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="RS.dcm: truncated DICOM file"):
        read_structure_set(study.rtstruct)
    for res in (_inspect(study), _import(study, tmp_path)):
        assert res.exit_code == 2, res.output
        assert "truncated" in res.output and "no closed planar" not in res.output


def test_non_dicom_files_in_the_folder_are_still_skipped(study):
    (study.ct_folder / "notes.txt").write_text("not DICOM " * 100)
    (study.ct_folder / "tiny").write_bytes(b"\x00" * 10)
    assert read_ct_series(study.ct_folder).grid.shape_zyx == (6, 16, 16)


# --------------------------------------------------------------------------- text encodings

DWELLS = "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s\n0,0,0,1,0,0,10\n"


def test_binary_and_utf16_dwells_are_named(tmp_path):
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(DWELLS.encode("utf-16"))
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(("# d\xe9but\n" + DWELLS).encode("latin-1"))
    for path, what in ((binary, "null byte"), (utf16, "UTF-16"), (latin1, "0xe9")):
        with pytest.raises(InputFileError, match=f"not a UTF-8 text file.*{what}"):
            read_dwells_csv(path)
        res = runner.invoke(app, ["dose", str(path), "--out", str(tmp_path / "d.zarr")], env=WIDE)
        assert res.exit_code == 2, res.output
        assert path.name in res.output and "not a UTF-8 text file" in res.output
    assert not (tmp_path / "d.zarr").exists()


def test_utf8_bom_csv_is_read(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(codecs.BOM_UTF8 + DWELLS.encode())
    positions, _, times = read_dwells_csv(path)
    assert positions.shape == (1, 3) and times[0] == 10.0
    points = tmp_path / "points.csv"
    points.write_bytes(codecs.BOM_UTF8 + b"z_along_cm,y_away_cm\n0,1\n")
    z, y = read_points_csv(points)
    assert z.tolist() == [0.0] and y.tolist() == [1.0]
    points.write_bytes("z_along_cm,y_away_cm\n0,1\n".encode("utf-16"))
    with pytest.raises(InputFileError, match="points.csv: not valid CSV: not a UTF-8 text file"):
        read_points_csv(points)


def test_config_with_utf8_bom_loads(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(codecs.BOM_UTF8 + b'[plan]\nname = "bom"\n')
    assert load_config(path).plan.name == "bom"
    path.write_bytes('[plan]\nname = "utf16"\n'.encode("utf-16"))
    with pytest.raises(ConfigError, match="bom.toml: not valid TOML: not a UTF-8 text file"):
        load_config(path)
    path.write_bytes(b'[plan]\nname = "nul\x00"\n')
    with pytest.raises(ConfigError, match="null byte at offset"):
        load_config(path)


# --------------------------------------------------------------------------- markup in messages


def test_source_data_error_keeps_its_brackets(tmp_path):
    source = tmp_path / "[odd] source.toml"
    source.write_text('[source]\nname = "x"\n[anisotropy_function]\n')
    res = runner.invoke(
        app,
        ["qa", "along-away", "--source", str(source), "--out", str(tmp_path / "o.csv")],
        env=WIDE,
    )
    assert res.exit_code == 2, res.output
    assert "[radial_dose_function]: section missing" in res.output
    assert "[odd] source.toml" in res.output


def test_roi_names_with_brackets_are_printed(study):
    _edit(study.rtstruct, lambda ds: setattr(ds.StructureSetROISequence[0], "ROIName", "[bold]x"))
    res = _inspect(study)
    assert res.exit_code == 0, res.output
    assert "[bold]x" in res.output


# --------------------------------------------------------------------------- batch --list


def test_batch_list_refuses_an_invalid_override(tmp_path):
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        '[batch]\nname = "l"\n'
        '[[job]]\nname = "ok"\n'
        '[[job]]\nname = "bad"\nset = {"optimizer.max_iterations" = -3}\n'
        '[[job]]\nname = "typo"\nset = {"prescription.dose_gyy" = 9.0}\n'
    )
    res = runner.invoke(app, ["batch", str(manifest), "--list"], env=WIDE)
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert "2 of 3 jobs are invalid" in text
    assert "job 'bad'" in text and "optimizer.max_iterations" in text
    assert "job 'typo'" in text and "prescription.dose_gyy" in text
    assert "job 1 bad-" in text and "job 2 typo-" in text
