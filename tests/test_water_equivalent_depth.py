"""Water-equivalent depth in the electron engine (iortopt.physics.electron.VoxelMedium), against
analytic expectations: a water slab is the flat surface, a low-density insert shifts the depth
dose by its water-equivalent deficit, an air gap from the real entry point follows 1/r^2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.cases.case import Case
from iortopt.cases.hu_calibration import default_calibration
from iortopt.grid import Grid
from iortopt.physics.disc import Disc
from iortopt.physics.electron import (
    Cone,
    PlaneSurface,
    cone_dose_gy,
    inverse_square_factor,
    load_electron_beam,
    reference_dose_per_mu_gy,
    voxel_medium,
)

SPACING_MM = 2.0
#: Voxel centres at odd multiples of 1 mm: the slab surface z = 0 and the insert's faces fall on
#: voxel faces. x, y over +-60 mm; z from 20 mm of air above the surface to 80 mm deep.
GRID = Grid.from_bounds((-59.0, -59.0, -79.0), (59.0, 59.0, 19.0), SPACING_MM)


@pytest.fixture(scope="module")
def beam():
    return load_electron_beam("generic_IOERT")


def _slab_case(insert_hu: float | None = None, insert_mm=(10.0, 20.0)) -> Case:
    """Water below z = 0, air above (HU); optionally an insert between the depths given."""
    z = GRID.points_mm()[:, 2].reshape(GRID.shape_zyx)
    hu = np.where(z < 0, 0.0, -1000.0)
    if insert_hu is not None:
        hu = np.where((z < -insert_mm[0]) & (z > -insert_mm[1]), insert_hu, hu)
    return Case("slab", GRID, (), hu=hu.astype(np.float32))


def _medium(case: Case):
    return voxel_medium(
        GRID.origin_xyz_mm,
        GRID.spacing_xyz_mm,
        case.body_mask(),
        case.relative_electron_density(),
    )


def _cone(beam, energy_mev, diameter_mm, end_mm=(0.0, 0.0, 0.0), bevel_deg=0.0):
    return Cone(
        jnp.int32(beam.index_of_energy(energy_mev)),
        jnp.int32(beam.index_of_bevel(bevel_deg)),
        jnp.asarray(diameter_mm),
        jnp.asarray(end_mm, float),
        jnp.asarray([0.0, 0.0, -1.0]),
        jnp.asarray([0.0, 1.0, 0.0]),
        jnp.asarray(1.0),
    )


def _axis_points(depths_mm):
    depths_mm = np.asarray(depths_mm, float)
    return jnp.asarray(np.stack([0 * depths_mm, 0 * depths_mm, -depths_mm], axis=-1))


def _r90_mm(depths_mm, dose):
    d = dose / dose.max()
    k = int(np.flatnonzero(d >= 0.9)[-1])
    return depths_mm[k] + (d[k] - 0.9) / (d[k] - d[k + 1]) * (depths_mm[k + 1] - depths_mm[k])


PLANE = PlaneSurface(jnp.zeros(3), jnp.asarray([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("bevel_deg", [0.0, 30.0])
def test_water_slab_medium_gives_the_plane_surface_dose(beam, bevel_deg):
    """Water slab (density 1 below z = 0, body mask 0/1): the same dose as the flat surface
    (float64, to rounding), with a disc, off axis and in air."""
    case = _slab_case()
    medium = voxel_medium(
        GRID.origin_xyz_mm, GRID.spacing_xyz_mm, case.body_mask(), case.body_mask()
    )
    cone = _cone(beam, 9.0, 60.0, bevel_deg=bevel_deg)
    rng = np.random.default_rng(3)
    points = jnp.asarray(rng.uniform([-40, -40, -60], [40, 40, 5], size=(400, 3)))
    disc = Disc(jnp.asarray([0.0, 0.0, -25.0]), jnp.asarray([0.0, 0.0, 1.0]), 45.0, 6.0)
    expected = np.asarray(cone_dose_gy(points, cone, beam, PLANE, disc))
    got = np.asarray(cone_dose_gy(points, cone, beam, medium, disc))
    assert (
        np.count_nonzero(expected == 0) > 20
        and np.count_nonzero(expected > 0.1 * expected.max()) > 50
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * expected.max())
    assert float(reference_dose_per_mu_gy(cone, beam, medium)) == pytest.approx(
        float(reference_dose_per_mu_gy(cone, beam, PLANE)), rel=1e-9
    )


def test_issue14_acceptance_lung_insert_moves_r90_by_its_water_equivalent_deficit(beam):
    """Issue 14 acceptance: a slab CT with a 10 mm lung-density insert (relative electron density
    about 0.3, from the HU through the calibration) on the beam axis moves R90 deeper by
    10 mm x (1 - density) = about 7 mm, within 1 mm."""
    calibration = default_calibration()
    target_density = 0.3
    hu = float(np.interp(target_density, calibration.relative_electron_density, calibration.hu))
    water, lung = _slab_case(), _slab_case(insert_hu=hu)
    density = float(calibration.relative_electron_density_of(np.asarray([hu], np.float32))[0])
    assert density == pytest.approx(target_density, abs=0.01)
    cone = _cone(beam, 12.0, 100.0)
    depths = np.arange(0.25, 75.0, 0.25)
    base = np.asarray(cone_dose_gy(_axis_points(depths), cone, beam, _medium(water)))
    moved = np.asarray(cone_dose_gy(_axis_points(depths), cone, beam, _medium(lung)))
    shift = _r90_mm(depths, moved) - _r90_mm(depths, base)
    assert shift == pytest.approx(10.0 * (1.0 - density), abs=1.0)
    # the insert lies before R90 (else it could not shift it) and the plain slab is water
    assert _r90_mm(depths, base) > 25.0


def test_air_gap_from_the_real_entry_point_follows_the_inverse_square(beam):
    """Cone end 8 mm above the slab: the central-axis dose at depth d is the flush cone's times
    ((vsd + d) / (vsd + gap + d))^2 times the field's wider lateral profile (1 for a large
    cone), and the MU normalisation sees the same gap."""
    medium = _medium(_slab_case())
    gap = 8.0
    flush, gapped = _cone(beam, 9.0, 100.0), _cone(beam, 9.0, 100.0, end_mm=(0.0, 0.0, gap))
    depths = np.arange(1.0, 40.0, 1.0)
    ratio = np.asarray(cone_dose_gy(_axis_points(depths), gapped, beam, medium)) / np.asarray(
        cone_dose_gy(_axis_points(depths), flush, beam, medium)
    )
    vsd = float(beam.vsd_mm[flush.energy_index])
    expected = np.asarray(inverse_square_factor(depths, depths + gap, vsd))
    np.testing.assert_allclose(ratio, expected, rtol=1e-6)
    per_mu = float(reference_dose_per_mu_gy(gapped, beam, medium))
    assert per_mu == pytest.approx(float(reference_dose_per_mu_gy(gapped, beam, PLANE)), rel=1e-6)


def test_voxel_dose_is_differentiable_in_the_cone_pose(beam):
    medium = _medium(_slab_case(insert_hu=-700.0))
    points = _axis_points(np.arange(2.0, 50.0, 4.0)) + jnp.asarray([3.0, -2.0, 0.0])

    def total(end):
        return jnp.sum(
            cone_dose_gy(points, _cone(beam, 9.0, 50.0)._replace(end_mm=end), beam, medium)
        )

    grad = jax.grad(total)(jnp.asarray([0.5, 0.5, 1.0]))
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"relative_electron_density": np.zeros((2, 2, 2))}, "same 3-D shape"),
        ({"tissue_fraction": np.full((3, 3, 3), 2.0)}, "tissue fraction"),
        ({"step_mm": 5.0}, "half a voxel"),
    ],
)
def test_voxel_medium_refuses_bad_input(kwargs, message):
    args = {
        "origin_xyz_mm": (0.0, 0.0, 0.0),
        "spacing_xyz_mm": (2.0, 2.0, 2.0),
        "tissue_fraction": np.ones((3, 3, 3)),
        "relative_electron_density": np.ones((3, 3, 3)),
    } | kwargs
    with pytest.raises(ValueError, match=message):
        voxel_medium(**args)
