"""AAPM TG-43 dose from HDR sources, in JAX: differentiable, chunked, float32 or float64.

Two layers, as in jax-md: :func:`dose_rate_per_sk` is the pointwise TG-43 formula of the distance
along (``z_cm``) and away from (``y_cm``) one source's axis; :func:`dose_gy` maps it over points x
dwells in chunks and weights each dwell by its air-kerma strength and dwell time.

    Ddot(r, theta) = S_K Lambda [G_L(r, theta) / G_L(r0, theta0)] g_L(r) F(r, theta)     (2-D)
    Ddot(r)        = S_K Lambda [r0^2 / r^2] g_P(r) phi_an(r)                             (1-D)

Tables are interpolated linearly (bilinearly for F), never fitted; they are resampled once onto
uniform grids that contain every published knot, which gives identical values with a cheaper
look-up (:mod:`iortopt.physics.interpolate`).
The line-source angle uses beta = atan2(L y, r^2 - L^2/4), which is the angle the active length
subtends at (z, y) and reduces to the on-axis form 1 / (r^2 - L^2/4) as y -> 0 without a branch.
Inside the source the formalism has no meaning: points within ``r_floor_cm`` (0.05 cm) of a dwell
position are evaluated at that distance in the same direction, and points beside the active core
(|z| < L/2) are kept at least ``r_floor_cm`` from the axis (about a source radius). This keeps
values and gradients finite where a voxel centre falls into a catheter.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.compute.memory import auto_chunk_size
from iortopt.physics.fastmath import atan2_upper
from iortopt.physics.interpolate import UniformAxis, interp1d, interp2d, resample_1d, resample_2d
from iortopt.physics.sources import SourceData

SECONDS_PER_HOUR = 3600.0
GY_PER_CGY = 0.01
FORMALISMS = ("2d", "1d")
#: Squared distance (cm^2) below which a point counts as on the source axis (1e-6 cm away).
Y2_FLOOR_CM2 = 1e-12
#: Minimum distance (cm) from a dwell centre and from the axis beside the active core.
R_FLOOR_CM = 0.05


class TG43Kernel(NamedTuple):
    """Device-ready tables of one source dataset (a pytree; build with :func:`make_kernel`)."""

    dose_rate_constant: jnp.ndarray  # Lambda, cGy h^-1 U^-1
    half_length_cm: jnp.ndarray  # L / 2
    inv_geometry_ref: jnp.ndarray  # 1 / G_L(r0, theta0), or r0^2 for the 1-D formalism
    r_floor_cm: jnp.ndarray
    g_axis: UniformAxis
    g_values: jnp.ndarray
    f_theta_axis: UniformAxis
    f_r_axis: UniformAxis
    f_values: jnp.ndarray  # 2-D: F(theta, r); 1-D: phi_an(r) repeated at theta = 0 and 180 deg


def make_kernel(source: SourceData, formalism: str = "2d", dtype=jnp.float32) -> TG43Kernel:
    """Prepare ``source``'s tables for :func:`dose_rate_per_sk`.

    Args:
        source: a validated dataset (:func:`iortopt.physics.sources.load_source`).
        formalism: ``"2d"`` (line source, g_L, F) or ``"1d"`` (point source, g_P, phi_an).
        dtype: float32 (default, accelerators) or float64 (validation; needs jax x64 enabled).
    """
    length = source.active_length_cm
    if formalism == "2d":
        g_r, g = source.g_r_cm, source.g_line
        inv_g_ref = length / (2.0 * np.arctan(length / 2.0))
        theta = source.F_theta_deg
        f_r, f = source.F_r_cm, source.F
    elif formalism == "1d":
        if not source.has_1d:
            raise ValueError(
                f"source {source.key} has no 1-D data (g_point, phi_an); use formalism '2d'"
            )
        g_r, g = source.g_r_cm, source.g_point
        inv_g_ref = 1.0
        theta = np.array([0.0, 180.0])
        f_r, f = source.phi_r_cm, np.vstack([source.phi_an, source.phi_an])
    else:
        raise ValueError(f"formalism must be one of {FORMALISMS}, got {formalism!r}")
    as_array = lambda x: jnp.asarray(x, dtype=dtype)  # noqa: E731
    g_axis, g_table = resample_1d(g_r, g)
    theta_axis, f_r_axis, f_table = resample_2d(theta, f_r, f)
    return TG43Kernel(
        dose_rate_constant=as_array(source.dose_rate_constant),
        half_length_cm=as_array(length / 2.0 if formalism == "2d" else 0.0),
        inv_geometry_ref=as_array(inv_g_ref),
        r_floor_cm=as_array(R_FLOOR_CM),
        g_axis=g_axis,
        g_values=as_array(g_table),
        f_theta_axis=theta_axis,
        f_r_axis=f_r_axis,
        f_values=as_array(f_table),
    )


def geometry_function(z_cm: jnp.ndarray, y_cm: jnp.ndarray, half_length_cm) -> jnp.ndarray:
    """TG-43 geometry function G (cm^-2) at along/away distances (cm) from the source centre.

    Line source of length L = 2 * half_length_cm: G_L = beta / (L y), with beta the angle the
    active length subtends, written as atan2(L y, r^2 - L^2/4) so that it tends to the on-axis form
    1 / (r^2 - L^2/4) as y -> 0. ``half_length_cm = 0`` gives the point-source form 1 / r^2.
    ``y_cm`` must be > 0 (callers clamp it; see :func:`dose_rate_per_sk`).
    """
    r2 = z_cm * z_cm + y_cm * y_cm
    line = half_length_cm > 0
    length = jnp.where(line, 2.0 * half_length_cm, 1.0)
    beta = atan2_upper(length * y_cm, r2 - half_length_cm * half_length_cm)
    return jnp.where(line, beta / (length * y_cm), 1.0 / r2)


def dose_rate_per_sk(z_cm: jnp.ndarray, y_cm: jnp.ndarray, kernel: TG43Kernel) -> jnp.ndarray:
    """TG-43 dose rate per unit air-kerma strength, cGy h^-1 U^-1.

    Args:
        z_cm: distance along the source axis from the source centre (positive towards the tip).
        y_cm: distance from the source axis (>= 0). Any broadcastable shapes.
        kernel: tables from :func:`make_kernel` (1-D kernels have half length 0: point source).
    """
    r2 = z_cm * z_cm + y_cm * y_cm
    floor2 = kernel.r_floor_cm * kernel.r_floor_cm
    # Pull points inside the floor radius out to it along their own direction.
    scale = jnp.sqrt(floor2 / jnp.maximum(r2, floor2 * 1e-12))
    scale = jnp.where(r2 < floor2, scale, 1.0)
    z = z_cm * scale
    half = kernel.half_length_cm
    y_min = jnp.where(jnp.abs(z) < half, kernel.r_floor_cm, 1e-7)
    y = jnp.maximum(y_cm * scale, y_min)  # on the axis beyond the tips beta / (L y) -> axial form
    r2 = z * z + y * y
    r = jnp.sqrt(r2)
    geometry = geometry_function(z, y, half) * kernel.inv_geometry_ref
    g = jnp.maximum(interp1d(kernel.g_axis, kernel.g_values, r), 0.0)
    theta_axis = kernel.f_theta_axis
    theta_last = theta_axis.first + (theta_axis.size - 1) / theta_axis.inv_step
    theta_deg = jnp.minimum(atan2_upper(y, z) * (180.0 / np.pi), theta_last)
    f = jnp.maximum(
        interp2d(kernel.f_theta_axis, kernel.f_r_axis, kernel.f_values, theta_deg, r), 0.0
    )
    return kernel.dose_rate_constant * geometry * g * f


def along_away_cm(
    points_cm: jnp.ndarray, positions_cm: jnp.ndarray, axes: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Along-axis and away-from-axis distances of points (P, 3) to dwells (N, 3): two (P, N)."""
    # Component-wise: XLA fuses this into one loop, unlike a reduction over a trailing axis of 3.
    dx = points_cm[:, 0:1] - positions_cm[None, :, 0]
    dy = points_cm[:, 1:2] - positions_cm[None, :, 1]
    dz = points_cm[:, 2:3] - positions_cm[None, :, 2]
    z = dx * axes[None, :, 0] + dy * axes[None, :, 1] + dz * axes[None, :, 2]
    y2 = dx * dx + dy * dy + dz * dz - z * z
    # The floor keeps sqrt's gradient finite on the axis (y = 0), where it would be infinite.
    return z, jnp.sqrt(jnp.maximum(y2, Y2_FLOOR_CM2))


def normalise_axes(axes: jnp.ndarray) -> jnp.ndarray:
    """Unit source axes, (N, 3). The axis points from the cable side to the source tip."""
    return axes / jnp.linalg.norm(axes, axis=-1, keepdims=True)


def dose_rate_matrix(
    points_mm: jnp.ndarray, positions_mm: jnp.ndarray, axes: jnp.ndarray, kernel: TG43Kernel
) -> jnp.ndarray:
    """Dose rate per unit S_K (cGy h^-1 U^-1) of each dwell at each point: (P, N).

    Materialises P x N values; use :func:`dose_gy` for large problems.
    """
    z, y = along_away_cm(points_mm * 0.1, positions_mm * 0.1, normalise_axes(axes))
    return dose_rate_per_sk(z, y, kernel)


def dwell_weights_gy(
    dwell_times_s: jnp.ndarray, air_kerma_strength_U: jnp.ndarray | float
) -> jnp.ndarray:
    """Per-dwell factor turning cGy h^-1 U^-1 into Gy: S_K (U) x t (h) x 0.01 Gy/cGy."""
    return dwell_times_s * (jnp.asarray(air_kerma_strength_U) * (GY_PER_CGY / SECONDS_PER_HOUR))


def dose_gy(
    points_mm: jnp.ndarray,
    positions_mm: jnp.ndarray,
    axes: jnp.ndarray,
    dwell_times_s: jnp.ndarray,
    kernel: TG43Kernel,
    air_kerma_strength_U: jnp.ndarray | float,
    chunk_size: int | None = 0,
    *,
    remat: bool | None = None,
    mesh=None,
) -> jnp.ndarray:
    """Dose (Gy) at points from all dwells, summed. Pure and differentiable in times and positions.

    Args:
        points_mm: (P, 3) points (x, y, z) in mm.
        positions_mm: (N, 3) dwell positions in mm; ``axes`` (N, 3): source axis per dwell
            (need not be unit length).
        dwell_times_s: (N,) dwell times in seconds.
        kernel: from :func:`make_kernel`.
        air_kerma_strength_U: S_K at treatment time in U (scalar or (N,)); see :func:`decayed_sk`.
        chunk_size: points per chunk; peak memory is about chunk_size x N x 7 values
            (:mod:`iortopt.compute.memory`). 0 (default) picks :func:`auto_chunk_size` with its
            default pairs per chunk (a plan run passes the chunk it chose from its memory
            budget); ``None`` evaluates all points at once.
        remat: recompute each chunk's dose-rate block in the backward pass instead of keeping it,
            so a gradient also holds only one chunk of point x dwell values (it would otherwise
            keep all P x N of them, as much as an influence matrix) at the price of a second
            kernel pass. ``None`` (default): on whenever the points are split into chunks.
        mesh: a 1-D :class:`jax.sharding.Mesh` to split the points over its devices
            (:func:`iortopt.compute.sharding.voxel_mesh`); ``None`` (default): one device. A
            one-device mesh is exactly the unsharded path.

    Returns:
        (P,) dose in Gy.
    """
    if mesh is not None and mesh.size > 1:
        from iortopt.compute.sharding import map_voxel_shards

        def local(pts, pos, ax, t):
            return dose_gy(pts, pos, ax, t, kernel, air_kerma_strength_U, chunk_size, remat=remat)

        return map_voxel_shards(local, mesh, points_mm, positions_mm, axes, dwell_times_s)

    dtype = kernel.g_values.dtype
    points_mm = jnp.asarray(points_mm, dtype)
    positions_cm = jnp.asarray(positions_mm, dtype) * 0.1
    unit_axes = normalise_axes(jnp.asarray(axes, dtype))
    weights = dwell_weights_gy(jnp.asarray(dwell_times_s, dtype), air_kerma_strength_U).astype(
        dtype
    )

    def block(pts_mm):
        z, y = along_away_cm(pts_mm * 0.1, positions_cm, unit_axes)
        # HIGHEST: no TF32 (10-bit mantissa) products in a float32 dose on GPUs.
        return jnp.matmul(
            dose_rate_per_sk(z, y, kernel), weights, precision=jax.lax.Precision.HIGHEST
        )

    n_points = points_mm.shape[0]
    if chunk_size == 0:
        chunk_size = auto_chunk_size(positions_cm.shape[0])
    if chunk_size is None or n_points <= chunk_size:
        return block(points_mm)
    if remat is None or remat:
        block = jax.checkpoint(block)
    n_chunks = -(-n_points // chunk_size)
    padded = jnp.pad(points_mm, ((0, n_chunks * chunk_size - n_points), (0, 0)))
    out = jax.lax.map(block, padded.reshape(n_chunks, chunk_size, 3))
    return out.reshape(-1)[:n_points]


def decay_factor(half_life_days: float, calibration: datetime, treatment: datetime) -> float:
    """Fraction of the calibrated S_K left at ``treatment`` (exponential decay; both times aware or
    both naive). Raises ValueError if treatment precedes calibration."""
    elapsed_days = (treatment - calibration).total_seconds() / 86400.0
    if elapsed_days < 0.0:
        raise ValueError(
            f"treatment time {treatment.isoformat()} is before the source calibration "
            f"{calibration.isoformat()}"
        )
    return float(2.0 ** (-elapsed_days / half_life_days))


def decayed_sk(
    sk_calibration_U: float, half_life_days: float, calibration: datetime, treatment: datetime
) -> float:
    """Air-kerma strength (U) at ``treatment`` from its calibrated value at ``calibration``."""
    return sk_calibration_U * decay_factor(half_life_days, calibration, treatment)
