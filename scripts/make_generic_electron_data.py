"""Generate the packaged ILLUSTRATIVE electron IORT (IOERT) beam file.

Writes ``src/iortopt/data/electron/generic_IOERT.toml`` (format: :mod:`iortopt.physics.electron`).
The numbers come from smooth models shaped by textbook rules of thumb and a few published facts;
they are NOT measured data and NOT FOR CLINICAL USE. Run from the repository root::

    .venv/bin/python scripts/make_generic_electron_data.py

Percentage depth dose (broad field, central axis, in water)
------------------------------------------------------------
Textbook rules (E in MeV, depths in cm): R90 ~ E/3.2, R80 ~ E/2.8, R50 ~ E/2.33, practical range
Rp ~ E/2 (where the tangent at the steepest point of the fall-off meets the bremsstrahlung
background); surface dose 75-95 %, higher for higher energy; maximum at a few mm to 2 cm. The
model, with d the depth in mm::

    D(d) ~ B(d) * [T + (100 - T) * G(d)]          normalised so that max D = 100 %
    B(d) = 1 - (1 - b0) exp(-d / lb)              build-up
    G(d) = exp(-(d/L)^k * (1 + (d/L)^q))          fall-off: a flat shoulder, a steep end

- T = 0.1 E % is the bremsstrahlung background (about 0.4-1.2 %: dedicated IOERT machines have
  little photon contamination);
- the five parameters (L, k, q, b0, lb) are fitted per energy (least squares) to the surface dose
  S(E) = 74 + 1.5 E % (80, 83, 87.5, 92 %), R90, R80, R50 and Rp from the rules, and, with a low
  weight, a depth of maximum of 0.55 R90. The fit meets the four ranges to better than 0.1 %.
- Tabulated every 0.5 mm from 0 to 80 mm (beyond Rp + 20 mm for 12 MeV); the table is scaled so
  that its largest entry is exactly 100.

Lateral penumbra
----------------
The lateral profile's edges are error functions with a Gaussian width growing with depth, like
multiple scattering (Fermi-Eyges: sigma^2 ~ d^3 / E^2)::

    sigma(d) = sqrt(SIGMA0^2 + (KAPPA d^1.5 / E)^2)   mm, SIGMA0 = 2 mm, KAPPA = 0.26

about 2 mm at the surface (80-20 % penumbra ~ 3.4 mm) and 5-8 mm at R50 (4-12 MeV).

Output (dose per MU at the depth of maximum, central axis, cone flush with the water)
--------------------------------------------------------------------------------------
1.0 cGy/MU for the 10 cm flat cone at every energy (a calibration convention). Smaller cones lose
output once their radius r drops below the lateral-equilibrium radius R_eq = 0.88 sqrt(E) cm
(textbook): factor 1 - 0.3 exp(-(r / (0.6 R_eq))^2), normalised to the 10 cm cone. Bevelled cones:
a further factor 1 - 0.1 (1 - cos b) / (1 - cos 45 deg) (0.99, 0.955, 0.90 at 15, 30, 45 deg).

Virtual source distance (for the inverse-square air-gap correction): 450 + 10 E mm.

Protective disc (2 mm Al + 4 mm Pb)
-----------------------------------
Published (JACMP, PMC5713149): the disc absorbs the electron beam completely at every energy, and
backscatter raises the maximum dose by 3-9 %, energy dependent. Here: backscatter 9, 7, 5, 3 % at
4, 6, 9, 12 MeV (falling with energy, the usual behaviour of electron backscatter), decaying
upstream over 2.0-3.5 mm; transmission (bremsstrahlung only) 0.5, 0.7, 1.0, 1.3 % of the open-beam
dose. The transmission and the decay lengths are assumptions, not published values.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

OUT = Path(__file__).resolve().parents[1] / "src" / "iortopt" / "data" / "electron"
NAME = "generic_IOERT"

ENERGIES_MEV = (4.0, 6.0, 9.0, 12.0)
CONE_DIAMETERS_CM = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
BEVELS_DEG = (0.0, 15.0, 30.0, 45.0)
DEPTHS_MM = np.round(np.arange(0.0, 80.0001, 0.5), 6)

SIGMA0_MM = 2.0
KAPPA = 0.26
DMAX_FRACTION_OF_R90 = 0.55
DISC = {
    "name": "Al2_Pb4",
    "description": "2 mm aluminium (tissue side) + 4 mm lead",
    "thickness_mm": 6.0,
    "transmission": (0.005, 0.007, 0.010, 0.013),
    "backscatter_percent": (9.0, 7.0, 5.0, 3.0),
    "backscatter_decay_mm": (2.0, 2.5, 3.0, 3.5),
}
_FINE_MM = np.arange(0.0, 120.0001, 0.02)


def rules_mm(energy_mev: float) -> dict[str, float]:
    """Textbook targets (mm) and surface dose (%) for ``energy_mev``."""
    e = float(energy_mev)
    return {
        "surface_percent": 74.0 + 1.5 * e,
        "R90": 10.0 * e / 3.2,
        "R80": 10.0 * e / 2.8,
        "R50": 10.0 * e / 2.33,
        "Rp": 10.0 * e / 2.0,
    }


def background_percent(energy_mev: float) -> float:
    return 0.1 * float(energy_mev)


def model_pdd(depth_mm: np.ndarray, params, energy_mev: float) -> np.ndarray:
    """Unnormalised model PDD at ``depth_mm`` for (L, k, b0, lb, q)."""
    length, k, b0, lb, q = params
    d = np.asarray(depth_mm, dtype=np.float64)
    t = background_percent(energy_mev)
    x = d / length
    fall = np.exp(-(x**k) * (1.0 + x**q))
    build = 1.0 - (1.0 - b0) * np.exp(-d / lb)
    return build * (t + (100.0 - t) * fall)


def pdd_metrics(depth_mm: np.ndarray, pdd: np.ndarray, background: float) -> dict[str, float]:
    """Surface dose, depth of maximum, R90/R80/R50 (linear interpolation) and Rp (tangent at
    the steepest point of the fall-off meets ``background``) of a sampled PDD (%, max 100)."""
    i = int(np.argmax(pdd))
    fall_d, fall = depth_mm[i:], pdd[i:]

    def r(level):
        j = int(np.argmax(fall < level))
        return float(
            fall_d[j - 1]
            + (level - fall[j - 1]) * (fall_d[j] - fall_d[j - 1]) / (fall[j] - fall[j - 1])
        )

    slope = np.diff(pdd) / np.diff(depth_mm)
    js = i + int(np.argmin(slope[i:]))
    mid_d = 0.5 * (depth_mm[js] + depth_mm[js + 1])
    mid_v = 0.5 * (pdd[js] + pdd[js + 1])
    return {
        "surface_percent": float(pdd[0]),
        "dmax": float(depth_mm[i]),
        "R90": r(90.0),
        "R80": r(80.0),
        "R50": r(50.0),
        "Rp": float(mid_d + (mid_v - background) / -slope[js]),
    }


def fit_pdd(energy_mev: float) -> np.ndarray:
    """Model parameters (L, k, b0, lb, q) fitted to the rules (see the module docstring)."""
    e = float(energy_mev)
    target = rules_mm(e)
    keys = ("surface_percent", "R90", "R80", "R50", "Rp")
    dmax_target = DMAX_FRACTION_OF_R90 * target["R90"]
    background = background_percent(e)

    def residuals(params):
        curve = model_pdd(_FINE_MM, params, e)
        got = pdd_metrics(_FINE_MM, 100.0 * curve / curve.max(), background)
        res = [3.0 * (got[k] - target[k]) / target[k] for k in keys]
        res.append(0.5 * (got["dmax"] - dmax_target) / dmax_target)
        return np.array(res)

    start = [4.82 * e, 4.85, 0.8, dmax_target / 3.0, 11.5]
    fit = least_squares(
        residuals,
        start,
        bounds=([1.0, 1.5, 0.3, 0.1, 0.5], [200.0, 30.0, 0.99, 50.0, 30.0]),
        diff_step=1e-4,
        x_scale=[e, 1.0, 0.1, 1.0, 1.0],
    )
    return fit.x


def pdd_table(energy_mev: float) -> np.ndarray:
    """PDD (%) on ``DEPTHS_MM``, largest entry exactly 100."""
    values = model_pdd(DEPTHS_MM, fit_pdd(energy_mev), energy_mev)
    return 100.0 * values / values.max()


def sigma_table_mm(energy_mev: float) -> np.ndarray:
    return np.sqrt(SIGMA0_MM**2 + (KAPPA * DEPTHS_MM**1.5 / float(energy_mev)) ** 2)


def output_cgy_per_mu(energy_mev: float, diameter_cm: float, bevel_deg: float) -> float:
    """Illustrative dose per MU (cGy/MU) at dmax on the central axis (module docstring)."""
    r_eq_cm = 0.88 * math.sqrt(float(energy_mev))

    def size_factor(d_cm):
        return 1.0 - 0.3 * math.exp(-((0.5 * d_cm / (0.6 * r_eq_cm)) ** 2))

    bevel = 1.0 - 0.1 * (1.0 - math.cos(math.radians(bevel_deg))) / (
        1.0 - math.cos(math.radians(45.0))
    )
    return size_factor(diameter_cm) / size_factor(10.0) * bevel


def _numbers(values, fmt="{:.6g}") -> str:
    return "[" + ", ".join(fmt.format(v) for v in values) + "]"


def render() -> str:
    """The TOML text of the generic dataset."""
    lines = [
        "# ILLUSTRATIVE, NOT FOR CLINICAL USE.",
        "# Generated by scripts/make_generic_electron_data.py from smooth models shaped by",
        "# textbook rules of thumb (see that script): not measured data. Replace with your",
        "# centre's commissioning data (format in iortopt/physics/electron.py) for any real use.",
        "",
        "[beam]",
        f'name = "{NAME}"',
        'machine = "generic mobile IOERT linac (illustrative)"',
        "illustrative = true",
        'citation = "Model shaped by textbook rules (R90 ~ E/3.2, R80 ~ E/2.8, R50 ~ E/2.33, '
        "Rp ~ E/2 cm; surface dose 75-95 %); disc backscatter 3-9 % and complete electron "
        'absorption by 2 mm Al + 4 mm Pb from JACMP PMC5713149 (abstract)."',
        'notes = "ILLUSTRATIVE, NOT FOR CLINICAL USE. PDDs, penumbra widths, output factors, '
        "virtual source distances, disc transmission and backscatter decay lengths are smooth "
        'models or assumptions, not measurements."',
        "",
        "[cones]",
        f"diameters_cm = {_numbers(CONE_DIAMETERS_CM, '{:g}')}",
        f"bevels_deg = {_numbers(BEVELS_DEG, '{:g}')}",
    ]
    for energy in ENERGIES_MEV:
        lines += [
            "",
            "[[energy]]",
            f"nominal_MeV = {energy:g}",
            f"virtual_source_distance_mm = {450.0 + 10.0 * energy:g}",
            f"depth_mm = {_numbers(DEPTHS_MM, '{:g}')}",
            f"pdd_percent = {_numbers(pdd_table(energy), '{:.4f}')}",
            f"penumbra_sigma_mm = {_numbers(sigma_table_mm(energy), '{:.4f}')}",
        ]
    for energy in ENERGIES_MEV:
        for bevel in BEVELS_DEG:
            values = [output_cgy_per_mu(energy, d, bevel) for d in CONE_DIAMETERS_CM]
            lines += [
                "",
                "[[output]]",
                f"nominal_MeV = {energy:g}",
                f"bevel_deg = {bevel:g}",
                f"cGy_per_MU = {_numbers(values, '{:.4f}')}",
            ]
    lines += [
        "",
        "[[disc]]",
        f'name = "{DISC["name"]}"',
        f'description = "{DISC["description"]}"',
        f"thickness_mm = {DISC['thickness_mm']:g}",
        f"nominal_MeV = {_numbers(ENERGIES_MEV, '{:g}')}",
        f"transmission = {_numbers(DISC['transmission'], '{:g}')}",
        f"backscatter_percent = {_numbers(DISC['backscatter_percent'], '{:g}')}",
        f"backscatter_decay_mm = {_numbers(DISC['backscatter_decay_mm'], '{:g}')}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{NAME}.toml"
    path.write_text(render())
    print(f"wrote {path}")
    for energy in ENERGIES_MEV:
        table = pdd_table(energy)
        m = pdd_metrics(DEPTHS_MM, table, background_percent(energy))
        rules = rules_mm(energy)
        print(
            f"  {energy:4.0f} MeV: surface {m['surface_percent']:.1f} %, dmax {m['dmax']:.1f} mm, "
            + ", ".join(
                f"{k} {m[k]:.2f} (rule {rules[k]:.2f})" for k in ("R90", "R80", "R50", "Rp")
            )
            + " mm"
        )


if __name__ == "__main__":
    main()
