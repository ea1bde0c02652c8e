"""Process-wide JAX settings chosen on the command line: device and precision.

Call :func:`configure` before any computation. float32 is the default on accelerators; float64 is
for validation. Matrix products run at "highest" precision so no TF32 rounding enters a dose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from iortopt.errors import IortoptError

PRECISIONS = {"float32": jnp.float32, "float64": jnp.float64}
DEVICES = {"cpu": "cpu", "gpu": "cuda"}


def configure(device: str | None = None, precision: str = "float32"):
    """Select the JAX platform (``cpu`` or ``gpu``) and precision; returns the dtype to compute in.

    Raises:
        IortoptError: unknown precision/device, or a GPU requested where JAX finds none.
    """
    if precision not in PRECISIONS:
        raise IortoptError(f"--precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    jax.config.update("jax_default_matmul_precision", "highest")
    if precision == "float64":
        jax.config.update("jax_enable_x64", True)
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


def device_info() -> dict:
    """Platform, device kind and count of the default JAX backend (for provenance)."""
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax_version": jax.__version__,
    }
