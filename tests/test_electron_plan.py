"""Energy / cone / bevel choice and joint cone + disc placement
(iortopt.modalities.electron.choice)."""

from __future__ import annotations

import math
import tomllib
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.cases.eliot import EliotCaseParams, build_eliot_case_with_samples
from iortopt.phantoms.eliot import optimise_eliot
from iortopt.physics import electron as el
from iortopt.physics.disc import Disc

#: A small, fast case: 3 mm grid, narrower region, thin lung.
SMALL = dict(
    spacing_mm=3.0,
    supersampling=2,
    half_width_mm=50.0,
    lung_thickness_mm=9.0,
    skin_opening_radius_mm=40.0,
    target_radius_mm=22.0,
)
CATALOGUE = dict(
    energies_mev=[6.0, 9.0, 12.0], diameters_cm=[4.0, 6.0, 8.0, 9.0], bevels_deg=[0.0, 30.0]
)
RX, ISODOSE, DISC_RADIUS, MARGIN, MAX_TILT, OAR_WEIGHT = 21.0, 90.0, 45.0, 5.0, 30.0, 0.1


@pytest.fixture(scope="module")
def beam():
    return el.load_electron_beam("generic_IOERT")


@pytest.fixture(scope="module")
def raw():
    path = resources.files("iortopt") / "data" / "electron" / "generic_IOERT.toml"
    with path.open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def catalogue_result(beam):
    return optimise_eliot(
        EliotCaseParams(**SMALL), beam, optimise_pose=False, dtype=jnp.float64, **CATALOGUE
    )


def _d2cc(dose, weights):
    order = np.argsort(-dose, kind="stable")
    k = int(np.argmax(np.cumsum(weights[order]) >= 2.0))
    return dose[order][k]


def test_choice_equals_brute_force(beam, raw, catalogue_result):
    """Loop over the catalogue one cone at a time (single-cone engine, MU from the file's output
    table, disc under the gland where the axis crosses it) and apply the documented rule."""
    params = EliotCaseParams(**SMALL)
    _, _, samples = build_eliot_case_with_samples(params)
    names = ("PTV_gland", "gland", "skin", "chest_wall", "rib", "lung")
    points = jnp.asarray(np.concatenate([samples[n][0] for n in names]))
    sizes = np.cumsum([0] + [len(samples[n][0]) for n in names])
    part = {n: slice(sizes[i], sizes[i + 1]) for i, n in enumerate(names)}
    flat = el.PlaneSurface(jnp.zeros(3), jnp.array([0.0, 0.0, 1.0]))
    one = jax.jit(lambda cone, disc: el.cone_dose_gy(points, cone, beam, flat, disc))
    output = {(o["nominal_MeV"], o["bevel_deg"]): o["cGy_per_MU"] for o in raw["output"]}
    vsd = {e["nominal_MeV"]: e["virtual_source_distance_mm"] for e in raw["energy"]}
    diameters = raw["cones"]["diameters_cm"]
    d100 = RX / (ISODOSE / 100.0)
    t = params.gland_thickness_mm
    brute = []
    for energy in CATALOGUE["energies_mev"]:
        for diameter in CATALOGUE["diameters_cm"]:
            for bevel in CATALOGUE["bevels_deg"]:
                end, axis, toe = el.flush_pose(np.zeros(3), [0, 0, 1], bevel, [0, -1, 0])
                mu = d100 / (output[(energy, bevel)][diameters.index(diameter)] / 100.0)
                cone = el.Cone(
                    jnp.int32(beam.index_of_energy(energy)),
                    jnp.int32(beam.index_of_bevel(bevel)),
                    10.0 * diameter,
                    end,
                    axis,
                    toe,
                    mu,
                )
                to_disc = t / math.cos(math.radians(bevel))
                disc = Disc(
                    jnp.asarray(end + to_disc * axis), jnp.array([0.0, 0, 1]), DISC_RADIUS, 6.0
                )
                dose = np.asarray(one(cone, disc))
                w = np.concatenate([samples[n][1] for n in names])
                tw = w[part["PTV_gland"]]
                coverage = 100 * tw[dose[part["PTV_gland"]] >= RX].sum() / tw.sum()
                beyond = dose[part["chest_wall"].start : part["lung"].stop].max()
                lung = np.average(dose[part["lung"]], weights=w[part["lung"]])
                rib = _d2cc(dose[part["rib"]], w[part["rib"]])
                skin = dose[part["skin"]].max()
                field = 5.0 * diameter * (vsd[energy] + to_disc) / vsd[energy]
                brute.append(
                    {
                        "key": (energy, diameter, bevel),
                        "mu": mu,
                        "coverage": coverage,
                        "covers": DISC_RADIUS - field >= MARGIN,
                        "tilt_ok": bevel <= MAX_TILT,
                        "score": coverage - 100 * OAR_WEIGHT * (beyond + rib + lung + skin) / RX,
                    }
                )
    rows = catalogue_result.comparison
    assert len(rows) == len(brute) == 24
    for row, b in zip(rows, brute, strict=True):
        assert (row["energy_MeV"], row["diameter_cm"], row["bevel_deg"]) == b["key"]
        assert row["mu"] == pytest.approx(b["mu"], rel=1e-9)
        assert row["target_coverage_percent"] == pytest.approx(b["coverage"], abs=1e-9)
        assert row["disc_covers_field"] == b["covers"] and row["axis_tilt_ok"] == b["tilt_ok"]
        assert row["score"] == pytest.approx(b["score"], rel=1e-9)
    eligible = [b for b in brute if b["covers"] and b["tilt_ok"]]
    best = max(eligible, key=lambda b: b["score"])
    chosen = catalogue_result.chosen
    assert (chosen["energy_MeV"], chosen["diameter_cm"], chosen["bevel_deg"]) == best["key"]
    assert chosen["reason"].startswith(f"{best['key'][0]:g} MeV, {best['key'][1]:g} cm cone")


def test_catalogue_physics(catalogue_result):
    rows = {
        (r["energy_MeV"], r["diameter_cm"], r["bevel_deg"]): r for r in catalogue_result.comparison
    }
    # A 20 mm gland: 6 MeV (R90 ~ 19 mm) cannot cover its bottom, 12 MeV covers it all.
    assert rows[(6.0, 6.0, 0.0)]["target_coverage_percent"] < 95.0
    assert rows[(12.0, 6.0, 0.0)]["target_coverage_percent"] == pytest.approx(100.0)
    # A 4 cm field (radius 20 mm) misses the edge of a 22 mm target.
    assert (
        rows[(12.0, 4.0, 0.0)]["target_coverage_percent"]
        < rows[(12.0, 6.0, 0.0)]["target_coverage_percent"]
    )
    # The 45 mm disc covers a 6 cm field with 5 mm margin, not a 9 cm one; uncovered fields leak.
    assert (
        rows[(12.0, 6.0, 0.0)]["disc_covers_field"]
        and not rows[(12.0, 9.0, 0.0)]["disc_covers_field"]
    )
    assert (
        rows[(12.0, 9.0, 0.0)]["beyond_disc_max_gy"]
        > 5 * rows[(12.0, 6.0, 0.0)]["beyond_disc_max_gy"]
    )
    # Higher energy: more dose beyond the disc (transmission x the open dose there).
    assert (
        rows[(12.0, 6.0, 0.0)]["beyond_disc_max_gy"] > rows[(9.0, 6.0, 0.0)]["beyond_disc_max_gy"]
    )
    # Backscatter lifts the maximum above the 100 % level (23.3 Gy) by a few %.
    for key in ((9.0, 6.0, 0.0), (12.0, 6.0, 0.0)):
        assert 1.0 < rows[key]["max_dose_gy"] / rows[key]["d100_gy"] < 1.09
    # An oblique (30 deg bevel) beam penetrates less along the gland's normal.
    assert (
        rows[(9.0, 6.0, 30.0)]["target_coverage_percent"]
        < rows[(9.0, 6.0, 0.0)]["target_coverage_percent"]
    )


def test_result_carries_case_dose_disc_and_notes(catalogue_result):
    r = catalogue_result
    assert r.dose_gy.shape == r.case.grid.shape_zyx and r.dose_gy.dtype == np.float32
    assert np.all(np.isfinite(r.dose_gy))
    full, chosen = r.chosen["full_grid"], r.chosen
    assert full["target_coverage_percent"] == pytest.approx(
        chosen["target_coverage_percent"], abs=3.0
    )
    assert full["beyond_disc_max_gy"] == pytest.approx(chosen["beyond_disc_max_gy"], rel=0.2)
    assert any("ILLUSTRATIVE" in n for n in r.notes)
    assert r.disc["material"] == "Al2_Pb4" and r.disc["covers_field"]
    assert r.disc["depth_below_surface_mm"] == pytest.approx(20.0)
    assert set(r.timings) >= {"setup_s", "catalogue_s", "optimise_s", "full_dose_s", "total_s"}
    assert r.optimisation == {"run": False, "accepted": False}


def test_bevel_chosen_for_a_tilted_surface(beam):
    """Gland surface tilted 20 deg, head reaching 10 deg: a flat cone laid flush would need a
    20 deg axis, a 15 or 30 deg bevel brings it within reach."""
    r = optimise_eliot(
        EliotCaseParams(**SMALL, surface_tilt_deg=20.0),
        beam,
        energies_mev=[12.0],
        diameters_cm=[6.0],
        max_axis_tilt_deg=10.0,
        optimise_pose=False,
    )
    for row in r.comparison:
        assert row["axis_tilt_deg"] == pytest.approx(abs(20.0 - row["bevel_deg"]), abs=1e-6)
    assert r.chosen["bevel_deg"] in (15.0, 30.0) and r.chosen["axis_tilt_ok"]


def test_joint_optimisation_brings_the_axis_within_reach(beam):
    """Only a flat cone, surface tilted 20 deg, head reaching 15 deg: the nominal (flush) plan is
    out of reach; cone tilt, shift, MU and the disc are optimised together and the result kept."""
    r = optimise_eliot(
        EliotCaseParams(**SMALL, surface_tilt_deg=20.0),
        beam,
        energies_mev=[12.0],
        diameters_cm=[6.0],
        bevels_deg=[0.0],
        max_axis_tilt_deg=15.0,
        iterations=60,
    )
    nominal, opt = r.comparison[0], r.optimisation
    assert not nominal["axis_tilt_ok"] and opt["accepted"]
    assert opt["objective_last"] < opt["objective_first"]
    chosen = r.chosen
    assert chosen["axis_tilt_ok"] and chosen["axis_tilt_deg"] <= 15.0
    assert chosen["target_coverage_percent"] > 95.0 and chosen["disc_covers_field"]
    # The disc stays in its space (a 6 mm disc in a 6 mm space: depth 20 mm, parallel to it).
    assert r.disc["depth_below_surface_mm"] == pytest.approx(20.0, abs=0.05)
    normal = np.array([0.0, -math.sin(math.radians(20)), math.cos(math.radians(20))])
    assert float(np.dot(r.disc["normal"], normal)) == pytest.approx(1.0, abs=1e-4)
    # MU renormalised exactly; the optimiser's own MU is close to it.
    assert opt["mu_optimiser"] == pytest.approx(chosen["mu"], rel=0.02)
    assert chosen["d100_gy"] == pytest.approx(RX / 0.9)


def test_invalid_requests(beam):
    params = EliotCaseParams(**SMALL)
    with pytest.raises(ValueError, match="disc 'lead' is not in beam"):
        optimise_eliot(params, beam, disc="lead", optimise_pose=False)
    with pytest.raises(ValueError, match="does not fit"):
        optimise_eliot(EliotCaseParams(**SMALL, disc_gap_mm=4.0), beam, optimise_pose=False)
    with pytest.raises(ValueError, match="energy 7 MeV is not in beam"):
        optimise_eliot(params, beam, energies_mev=[7.0], optimise_pose=False)
    with pytest.raises(ValueError, match="toe_direction"):
        optimise_eliot(params, beam, toe_direction=(0.0, 0.0, 1.0), optimise_pose=False)


def test_objective_points_are_the_objective_groups_unchanged():
    from iortopt.modalities.electron import choice

    rng = np.random.default_rng(5)
    sizes = dict(zip(choice.TISSUE_GROUPS, (4, 6, 3, 5, 2, 7), strict=True))
    samples = {k: (rng.normal(size=(n, 3)), rng.uniform(0.1, 1.0, n)) for k, n in sizes.items()}
    sub = choice._objective_points(choice._eval_points(samples))
    assert tuple(sub.groups) == choice.OBJECTIVE_GROUPS and "gland" not in sub.groups
    assert len(sub.points_mm) == sum(sizes[k] for k in choice.OBJECTIVE_GROUPS)
    for name, part in sub.groups.items():
        assert np.array_equal(sub.points_mm[part], samples[name][0])
        assert np.array_equal(sub.weights_cm3[part], samples[name][1])


def test_on_device_matches_jnp_asarray():
    from iortopt.modalities.electron.choice import on_device

    values = np.random.default_rng(2).normal(size=(4, 3)) * 1e3
    for v, dtype in ((values, jnp.float32), (3, jnp.int32), ([0.1, 2.0], jnp.float32)):
        got, want = on_device(v, dtype), jnp.asarray(v, dtype)
        assert got.dtype == want.dtype
        assert np.array_equal(np.asarray(got), np.asarray(want))
