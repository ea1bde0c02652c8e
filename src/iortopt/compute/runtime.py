"""Process-wide JAX settings chosen on the command line: device, precision, host devices, and the
GPU memory settings.

Call :func:`configure` before any computation. float32 is the default on accelerators; float64 is
for validation. Matrix products run at "highest" precision so no TF32 rounding enters a dose (the
dose kernels also ask for it explicitly on their products).

GPU memory. By default JAX reserves 75 % of a GPU's memory at its first operation
(``XLA_PYTHON_CLIENT_PREALLOCATE``). iortopt's memory budget (:mod:`iortopt.compute.memory`) reads
the free
part of that pool. Anything else on the same GPU (cupy, another process) then sees only the rest,
so before the first JAX operation either

- ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: JAX allocates as it goes and frees nothing back to the
  driver (its pool grows); cupy and JAX share the device, or
- ``XLA_PYTHON_CLIENT_MEM_FRACTION=0.6``: JAX preallocates that fraction and the rest is left, or
- ``XLA_PYTHON_CLIENT_ALLOCATOR=platform``: allocate and free exactly (slow; debugging only).

:func:`gpu_memory_env` gives these settings and :func:`apply_gpu_memory_env` sets them while it is
still possible. cupy is imported only by :func:`import_cupy` (never at import time), which
warns when JAX has already preallocated most of the GPU.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp

from iortopt.errors import IortoptError

PRECISIONS = {"float32": jnp.float32, "float64": jnp.float64}
DEVICES = {"cpu": "cpu", "gpu": "cuda"}
PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"


def backends_initialised() -> bool:
    """Whether JAX has started its backends (after which device and memory settings are fixed)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - private module moved
        return True
    return bool(xla_bridge.backends_are_initialized())


def configure(
    device: str | None = None, precision: str = "float32", host_devices: int | None = None
):
    """Select the JAX platform (``cpu`` or ``gpu``) and precision; returns the dtype to compute in.

    ``host_devices``: split the CPU into that many XLA devices (multi-device runs and tests on a
    CPU; ``jax_num_cpu_devices``). Must come before the first JAX operation.

    Raises:
        IortoptError: unknown precision/device, a GPU requested where JAX finds none, or host
            devices asked for after JAX started.
    """
    if precision not in PRECISIONS:
        raise IortoptError(f"--precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    jax.config.update("jax_default_matmul_precision", "highest")
    if precision == "float64":
        jax.config.update("jax_enable_x64", True)
    if host_devices is not None:
        if host_devices < 1:
            raise IortoptError(f"host devices must be >= 1, got {host_devices}")
        if backends_initialised() and len(jax.devices("cpu")) != host_devices:
            raise IortoptError(
                f"cannot split the CPU into {host_devices} devices: JAX has already started "
                "(set XLA_FLAGS=--xla_force_host_platform_device_count=N before starting)"
            )
        jax.config.update("jax_num_cpu_devices", host_devices)
    if device is not None:
        if device not in DEVICES:
            raise IortoptError(f"--device must be one of {sorted(DEVICES)}, got {device!r}")
        previous = jax.config.jax_platforms
        try:
            jax.config.update("jax_platforms", DEVICES[device])
            jax.devices()
        except Exception as exc:  # RuntimeError or AssertionError, depending on the JAX version
            jax.config.update("jax_platforms", previous)
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise IortoptError(
                f"--device {device}: no usable {device.upper()} backend here ({reason}); "
                'install the "gpu" extra on a machine with a GPU, or use --device cpu'
            ) from None
    return PRECISIONS[precision]


def start_backend() -> None:
    """Start JAX's backends now (after :func:`configure`), so their start-up is timed apart from
    the first computation."""
    jax.devices()


def gpu_memory_env(share_with_cupy: bool, jax_fraction: float | None = None) -> dict[str, str]:
    """Environment settings for JAX's GPU allocator (see the module docstring).

    ``share_with_cupy``: no preallocation, so JAX and cupy draw on the same free memory;
    otherwise JAX preallocates ``jax_fraction`` (default: JAX's own 0.75) of the GPU.
    """
    if share_with_cupy:
        return {PREALLOCATE_ENV: "false"}
    if jax_fraction is None:
        return {}
    if not 0.0 < jax_fraction <= 1.0:
        raise ValueError(f"jax_fraction must lie in (0, 1], got {jax_fraction}")
    return {MEM_FRACTION_ENV: f"{jax_fraction:g}"}


def apply_gpu_memory_env(share_with_cupy: bool, jax_fraction: float | None = None) -> bool:
    """Set :func:`gpu_memory_env` in ``os.environ`` (values the user set win). Returns False, and
    changes nothing, once JAX's backends have started (the allocator is then fixed)."""
    if backends_initialised():
        return False
    for key, value in gpu_memory_env(share_with_cupy, jax_fraction).items():
        os.environ.setdefault(key, value)
    return True


def import_cupy():
    """cupy, imported on first use (it is in the optional ``gpu`` extra).

    Warns when JAX is running on a GPU with preallocation on: cupy then has only what JAX left.

    Raises:
        IortoptError: cupy is not installed.
    """
    try:
        import cupy
    except ImportError as exc:
        raise IortoptError(
            f'cupy is not available ({exc}); install the "gpu" extra on a machine with a GPU'
        ) from None
    preallocating = os.environ.get(PREALLOCATE_ENV, "true").lower() not in ("false", "0")
    if backends_initialised() and preallocating and jax.default_backend() == "gpu":
        warnings.warn(
            f"JAX preallocated its GPU memory pool before cupy was used; set {PREALLOCATE_ENV}="
            "false (iortopt.compute.runtime.apply_gpu_memory_env) before the first JAX operation",
            RuntimeWarning,
            stacklevel=2,
        )
    return cupy


def device_info() -> dict:
    """Platform, device kind and count of the default JAX backend (for provenance)."""
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax_version": jax.__version__,
    }
