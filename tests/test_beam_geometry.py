"""IEC 61217 beam angles from a beam axis in DICOM patient coordinates (LPS) and back, and the
rigid case -> patient frame mapping (points, directions, dose grids).

Expected angles and axes below are derived from the standard's words (the source is on +Z_g,
gantry 90 puts it on +X_f, to the right of an observer facing the gantry; the couch turns
counter-clockwise seen from above; the collimator turns X_b towards Y_g; head/feet first =
towards the gantry, supine/prone = anterior up/down, decubitus left/right = that side down), not
from the module's tables.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iortopt.dicom.beam_geometry import (
    PATIENT_POSITIONS,
    angle_between_deg,
    angles_from_axis,
    axis_from_angles,
    collimator_x_from_angles,
    table_from_patient,
)
from iortopt.dicom.patient_frame import PatientFrame
from iortopt.grid import Grid

LEFT, RIGHT = (-1.0, 0.0, 0.0), (1.0, 0.0, 0.0)  # beam travelling towards the left / right
POSTERIOR, ANTERIOR = (0.0, 1.0, 0.0), (0.0, -1.0, 0.0)  # travelling towards ...
SUPERIOR, INFERIOR = (0.0, 0.0, 1.0), (0.0, 0.0, -1.0)

# (position, gantry, couch, beam direction in LPS)
KNOWN_AXES = [
    ("HFS", 0, 0, POSTERIOR),  # source above = anterior
    ("HFS", 90, 0, LEFT),  # source on the patient's left
    ("HFS", 180, 0, ANTERIOR),  # source under the couch = posterior
    ("HFS", 270, 0, RIGHT),
    ("HFP", 0, 0, ANTERIOR),  # prone: source above = posterior
    ("HFP", 90, 0, RIGHT),  # prone head first: the patient's right is on +X_f
    ("FFS", 0, 0, POSTERIOR),
    ("FFS", 90, 0, RIGHT),  # feet first supine: the patient's right is on +X_f
    ("FFP", 0, 0, ANTERIOR),
    ("FFP", 90, 0, LEFT),  # feet first prone: the patient's left is on +X_f
    ("HFDL", 0, 0, RIGHT),  # left side down: source above = the right side
    ("HFDL", 90, 0, POSTERIOR),  # ... facing +X_f: source anterior
    ("HFDR", 0, 0, LEFT),  # right side down: source above = the left side
    ("HFDR", 90, 0, ANTERIOR),  # ... back towards +X_f
    ("FFDL", 0, 0, RIGHT),
    ("FFDL", 90, 0, ANTERIOR),
    ("FFDR", 0, 0, LEFT),
    ("FFDR", 90, 0, POSTERIOR),
    # couch 90 (counter-clockwise from above) turns an HFS patient's head from +Y_f to -X_f:
    # the source at +X_f (gantry 90) is then at the feet; couch 270 puts it at the head.
    ("HFS", 90, 90, SUPERIOR),
    ("HFS", 90, 270, INFERIOR),
    ("FFS", 90, 90, INFERIOR),
    ("HFS", 0, 90, POSTERIOR),  # a vertical beam does not care about the couch
]


@pytest.mark.parametrize("position, gantry, couch, expected", KNOWN_AXES)
def test_known_axes(position, gantry, couch, expected):
    axis = axis_from_angles(gantry, couch, position)
    np.testing.assert_allclose(axis, expected, atol=1e-12)


@pytest.mark.parametrize(
    "position, axis, gantry",
    [
        ("HFS", POSTERIOR, 0.0),
        ("HFS", LEFT, 90.0),
        ("HFS", ANTERIOR, 180.0),
        ("HFS", RIGHT, 270.0),
        ("HFP", ANTERIOR, 0.0),
        ("HFP", RIGHT, 90.0),
        ("FFS", RIGHT, 90.0),
        ("FFP", LEFT, 90.0),
        ("HFDL", RIGHT, 0.0),
        ("HFDR", ANTERIOR, 90.0),
    ],
)
def test_transverse_beams_need_no_couch(position, axis, gantry):
    angles = angles_from_axis(axis, None, position)
    assert angles.gantry_deg == pytest.approx(gantry, abs=1e-9)
    assert angles.couch_deg == 0.0 and angles.collimator_deg == 0.0


def test_beam_from_the_feet_uses_the_couch():
    # HFS, beam travelling towards the head: couch 90 with gantry 90 (see KNOWN_AXES)
    angles = angles_from_axis(SUPERIOR, None, "HFS")
    assert (angles.gantry_deg, angles.couch_deg) == pytest.approx((90.0, 90.0))
    # towards the feet: the couch stays within 90 deg of 0, so couch 90 with gantry 270
    angles = angles_from_axis(INFERIOR, None, "HFS")
    assert (angles.gantry_deg, angles.couch_deg) == pytest.approx((270.0, 90.0))


@pytest.mark.parametrize(
    "gantry, collimator, expected",
    [
        (0, 0, (1.0, 0.0, 0.0)),  # X_b = X_f = the HFS patient's left
        (0, 90, (0.0, 0.0, 1.0)),  # X_b turned to Y_g = towards the gantry = superior
        (0, 270, (0.0, 0.0, -1.0)),
        (90, 0, (0.0, 1.0, 0.0)),  # gantry 90 turns X_g down (-Z_f) = posterior
    ],
)
def test_known_collimator_axes_hfs(gantry, collimator, expected):
    np.testing.assert_allclose(
        collimator_x_from_angles(gantry, collimator, 0, "HFS"), expected, atol=1e-12
    )
    angles = angles_from_axis(axis_from_angles(gantry, 0, "HFS"), expected, "HFS")
    assert angles.collimator_deg == pytest.approx(collimator, abs=1e-9)


@pytest.mark.parametrize("position", PATIENT_POSITIONS)
def test_positions_are_proper_rotations_keeping_lps_right_handed(position):
    m = table_from_patient(position)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(m) == pytest.approx(1.0)


def test_unknown_position_and_zero_axis_are_refused():
    with pytest.raises(ValueError, match="SITTING"):
        angles_from_axis(POSTERIOR, None, "SITTING")
    with pytest.raises(ValueError, match="beam_axis"):
        angles_from_axis([0.0, 0.0, 0.0], None, "HFS")


unit_component = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(unit_component, unit_component, unit_component),
    st.tuples(unit_component, unit_component, unit_component),
    st.sampled_from(PATIENT_POSITIONS),
)
def test_round_trip_axis_and_collimator(axis, reference, position):
    axis, reference = np.asarray(axis), np.asarray(reference)
    if np.linalg.norm(axis) < 1e-3:
        axis = np.array([0.0, 1.0, 0.0])
    angles = angles_from_axis(axis, reference, position)
    for value in (angles.gantry_deg, angles.collimator_deg, angles.couch_deg):
        assert 0.0 <= value < 360.0
    assert angles.couch_deg <= 90.0 + 1e-9 or angles.couch_deg > 270.0 - 1e-9
    back = axis_from_angles(angles.gantry_deg, angles.couch_deg, position)
    assert angle_between_deg(back, axis) < 0.5  # the acceptance threshold
    assert angle_between_deg(back, axis) < 1e-4
    u = axis / np.linalg.norm(axis)
    in_plane = reference - (reference @ u) * u
    if np.linalg.norm(in_plane) > 1e-3:
        x_b = collimator_x_from_angles(
            angles.gantry_deg, angles.collimator_deg, angles.couch_deg, position
        )
        assert angle_between_deg(x_b, in_plane) < 1e-4


@pytest.mark.parametrize("position", ["HFS", "HFP", "FFS", "FFP"])
def test_round_trip_random_axes_supine_prone(position):
    rng = np.random.default_rng(14)
    for axis in rng.normal(size=(200, 3)):
        angles = angles_from_axis(axis, None, position)
        back = axis_from_angles(angles.gantry_deg, angles.couch_deg, position)
        assert angle_between_deg(back, axis) < 0.5


# ------------------------------------------------------------------------------------------------
# The case -> patient frame
# ------------------------------------------------------------------------------------------------

ELIOT = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]  # p_LPS = (x, -z, y)


def _signed_permutations():
    import itertools

    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((-1.0, 1.0), repeat=3):
            m = np.zeros((3, 3))
            for i, (k, s) in enumerate(zip(perm, signs, strict=True)):
                m[i, k] = s
            if round(np.linalg.det(m)) == 1:
                yield m


@pytest.mark.parametrize("rotation", list(_signed_permutations()), ids=lambda m: str(m.tolist()))
def test_dose_to_patient_keeps_the_value_at_every_point(rotation):
    frame = PatientFrame("HFS", rotation, [5.0, -6.0, 7.5])
    grid = Grid((4, 5, 6), (1.0, 2.0, 3.0), (10.0, 20.0, -30.0))
    dose = np.random.default_rng(1).random(grid.shape_zyx)
    out, patient_grid = frame.dose_to_patient(dose, grid)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape_zyx], indexing="ij"), -1)
    points = frame.points_to_patient(grid.index_to_mm(index.reshape(-1, 3)))
    back = np.rint(patient_grid.mm_to_index(points)).astype(int)
    np.testing.assert_allclose(patient_grid.mm_to_index(points), back, atol=1e-9)
    np.testing.assert_array_equal(out[tuple(back.T)], dose.reshape(-1))


def test_eliot_frame_maps_up_to_anterior():
    frame = PatientFrame("HFS", ELIOT)
    np.testing.assert_allclose(frame.vectors_to_patient([0, 0, 1]), [0, -1, 0])  # up = anterior
    np.testing.assert_allclose(frame.vectors_to_patient([0, 1, 0]), [0, 0, 1])  # y = superior
    grid = Grid((2, 3, 4), (2.0, 2.0, 2.0), (-3.0, -2.0, -1.0))
    _, patient_grid = frame.dose_to_patient(np.zeros(grid.shape_zyx), grid)
    assert patient_grid.shape_zyx == (3, 2, 4)
    assert patient_grid.origin_xyz_mm == (-3.0, -1.0, -2.0)  # LPS y = -z from -(-1 + 2) up


def test_frame_from_info_and_validation():
    assert PatientFrame.from_info({}).patient_position == "HFS"
    imported = PatientFrame.from_info({"dicom": {"patient_position": "FFP"}})
    assert imported.patient_position == "FFP"
    np.testing.assert_array_equal(imported.rotation, np.eye(3))
    declared = PatientFrame.from_info(
        {"patient_frame": {"patient_position": "HFS", "rotation": ELIOT}}
    )
    np.testing.assert_array_equal(declared.rotation, ELIOT)
    c, s = math.cos(0.1), math.sin(0.1)
    with pytest.raises(ValueError, match="multiples of 90"):
        PatientFrame("HFS", [[c, -s, 0], [s, c, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="multiples of 90"):
        PatientFrame("HFS", [[-1, 0, 0], [0, 1, 0], [0, 0, 1]])  # a reflection
    with pytest.raises(ValueError, match="patient_position"):
        PatientFrame("XYZ")
