"""The voxel axis split over all local devices (``jax.sharding``): full-grid dose, influence
matrices and matrix-vector products computed shard by shard.

A 1-D :class:`~jax.sharding.Mesh` with the axis ``"voxels"`` holds the devices. Points (and the rows
of an influence matrix) are split evenly over it; dwell positions, axes and times are copied to
every device. Each device evaluates its own points with the unchanged single-device kernel
(``shard_map``), so a sharded dose equals the single-device dose up to float rounding, and
gradients flow through it. With one device every function here is exactly the unsharded path.

    mesh = voxel_mesh("all")                       # or voxel_mesh(2)
    dose = tg43.dose_gy(points, pos, axes, t, kernel, sk, mesh=mesh)

A plan run passes its mesh down explicitly (``RunContext.mesh``,
:mod:`iortopt.compute.run_context`); there is no active mesh.

Several processes (multi-host, one very large plan): call ``jax.distributed.initialize()`` (it reads
the coordinator address, process count and id from SLURM or from its arguments) in every process
before any JAX computation; ``jax.devices()`` then lists the devices of all hosts and
``voxel_mesh("all")`` spans them. Inputs must then be built identically in every process. This
path is documented, not tested here (one host).

On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (or the ``jax_num_cpu_devices``
config option, set before the first JAX operation) gives several host devices for testing.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

VOXEL_AXIS = "voxels"


def resolve_device_count(devices: int | str = "all", available: int | None = None) -> int:
    """Number of devices to use: ``"all"`` or a positive count no larger than what exists.

    Raises:
        ValueError: a count above the available devices, or not ``"all"``/a positive integer.
    """
    available = len(jax.devices()) if available is None else available
    if devices == "all":
        return available
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f'devices must be "all" or a positive integer, got {devices!r}')
    if devices > available:
        raise ValueError(f"devices = {devices} but only {available} device(s) are available")
    return devices


def voxel_mesh(devices: int | str = "all") -> Mesh:
    """A 1-D mesh over the first ``devices`` devices of the default backend (``"all"``: all)."""
    n = resolve_device_count(devices)
    return Mesh(np.asarray(jax.devices()[:n]), (VOXEL_AXIS,))


def _pad_rows(x: jnp.ndarray, multiple: int) -> jnp.ndarray:
    extra = -x.shape[0] % multiple
    return x if extra == 0 else jnp.pad(x, ((0, extra),) + ((0, 0),) * (x.ndim - 1))


def map_voxel_shards(
    fn: Callable[..., jnp.ndarray], mesh: Mesh, points: jnp.ndarray, *replicated
) -> jnp.ndarray:
    """``fn(points_shard, *replicated)`` on every device of ``mesh``, results joined along rows.

    ``points`` (P, ...) is padded with zero rows to a multiple of the device count and split
    evenly; the result has P rows again. ``fn`` must treat rows independently (a dose per point,
    one matrix row per point). Works eagerly and inside ``jit``/``grad``.
    """
    n = mesh.size
    n_points = points.shape[0]
    padded = _pad_rows(jnp.asarray(points), n)
    mapped = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(VOXEL_AXIS),) + (P(),) * len(replicated),
        out_specs=P(VOXEL_AXIS),
        check_vma=False,
    )
    out = mapped(padded, *replicated)
    return out if padded.shape[0] == n_points else out[:n_points]


def shard_rows(x, mesh: Mesh) -> jax.Array:
    """Place ``x`` (rows divisible by the device count) with its rows split over ``mesh``."""
    return jax.device_put(x, NamedSharding(mesh, P(VOXEL_AXIS)))


def sharded_influence_matrix(
    build_rows: Callable[[jnp.ndarray], jnp.ndarray], points: jnp.ndarray, mesh: Mesh
) -> jax.Array:
    """(P, N) matrix whose row i is ``build_rows(points)[i]``, each device building its rows.

    The result stays split by rows when P is a multiple of the device count (a later
    ``matrix @ t`` then runs on every device, each on its rows); otherwise it is gathered onto the
    first device, never copied to every device.
    """
    n_points = points.shape[0]
    padded = _pad_rows(jnp.asarray(points), mesh.size)

    def build(p):
        return map_voxel_shards(build_rows, mesh, p)

    if padded.shape[0] == n_points:
        out_sharding = NamedSharding(mesh, P(VOXEL_AXIS))
        return jax.jit(build, out_shardings=out_sharding)(shard_rows(padded, mesh))
    matrix = jax.jit(build)(shard_rows(padded, mesh))
    on_first = jax.device_put(matrix, SingleDeviceSharding(mesh.devices.flat[0]))
    del matrix
    return on_first[:n_points]


def sharded_matvec(matrix: jax.Array, t: jnp.ndarray, mesh: Mesh) -> jnp.ndarray:
    """``matrix @ t`` with the matrix's rows split over ``mesh`` (float32 products at HIGHEST
    precision: no TF32)."""

    def local(rows, t):
        return jnp.matmul(rows, t, precision=jax.lax.Precision.HIGHEST)

    return map_voxel_shards(local, mesh, matrix, t)
