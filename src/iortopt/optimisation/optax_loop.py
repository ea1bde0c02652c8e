"""Bounded dwell-time optimisation with optax (L-BFGS or Adam).

Dwell times are bounded, 0 <= t <= t_max. Both optimisers work on an unconstrained variable u with
t = t_max sin^2(u): smooth, exactly bounded, and at the bounds the gradient in u vanishes, which is
where a bounded optimum sits anyway. The state of every optimiser is a pytree, so a run can be
checkpointed and resumed with :func:`save_checkpoint` / :func:`load_checkpoint` (plain .npz,
no pickle).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

#: Stop when the relative objective change stays below the tolerance this many iterations in a row.
PATIENCE = 5


@dataclass
class OptimizationResult:
    times_s: np.ndarray
    objective: float
    iterations: int
    converged: bool
    stop_reason: str
    history: list[float] = field(default_factory=list)
    compile_s: float = 0.0  # tracing + compilation + the first iteration
    optimise_s: float = 0.0  # the remaining iterations
    method: str = "lbfgs"


def times_from_u(u: jnp.ndarray, t_max_s: float) -> jnp.ndarray:
    """Bounded dwell times (s) from the unconstrained variable."""
    return t_max_s * jnp.square(jnp.sin(u))


def u_from_times(times_s: np.ndarray, t_max_s: float) -> jnp.ndarray:
    """Inverse of :func:`times_from_u`; times are nudged inside (0, t_max) so gradients exist."""
    frac = np.clip(np.asarray(times_s, np.float64) / t_max_s, 1e-4, 1 - 1e-4)
    return jnp.asarray(np.arcsin(np.sqrt(frac)))


def _optimizer(method: str, learning_rate: float) -> optax.GradientTransformation:
    if method == "lbfgs":
        return optax.lbfgs()
    if method == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"optimizer.method must be 'lbfgs' or 'adam', got {method!r}")


@functools.lru_cache(maxsize=16)
def _compiled_step(f: Callable[..., jnp.ndarray], method: str, learning_rate: float):
    """The optimiser and its jitted step for objective ``f`` (cached: repeated runs on the same
    objective, such as the catalogue trials of a shield, compile once)."""
    opt = _optimizer(method, learning_rate)

    @jax.jit
    def step(u, state, operands):
        def fu(u):
            return f(u, *operands)

        if method == "lbfgs":
            value, grad = optax.value_and_grad_from_state(fu)(u, state=state)
            updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=fu)
        else:
            value, grad = jax.value_and_grad(fu)(u)
            updates, state = opt.update(grad, state, u)
        return optax.apply_updates(u, updates), state, value

    return opt, step


def strong_typed(tree):
    """``tree`` with JAX's weak types removed (same dtypes and values).

    ``optax.lbfgs().init`` returns weakly typed scalars (its count and step sizes) that the
    step returns strongly typed, so without this the step is traced, lowered and loaded twice
    per run: 0.36 s of a warm run of the built-in flap case on the 2-core CPU.
    """
    return jax.tree.map(lambda leaf: jax.lax.convert_element_type(leaf, leaf.dtype), tree)


@dataclass
class LoopResult:
    """Outcome of :func:`run_optax` on an unconstrained pytree ``u``."""

    u: object
    history: list[float]
    iterations: int
    converged: bool
    stop_reason: str
    compile_s: float
    optimise_s: float
    final_value: float = float("nan")  # the objective at ``u`` (from the compiled step)


def run_optax(
    f: Callable[..., jnp.ndarray],
    u0,
    method: str = "lbfgs",
    max_iterations: int = 300,
    tolerance: float = 1e-6,
    learning_rate: float = 0.05,
    progress: Callable[[int, float], None] | None = None,
    checkpoint: Callable[[int, object], None] | None = None,
    checkpoint_every: int = 25,
    operands: tuple = (),
    stop_when_stalled: bool = False,
) -> LoopResult:
    """Minimise ``f(u, *operands)`` over an unconstrained pytree ``u`` with optax.

    Stops after ``max_iterations``, or when the relative objective change stays below
    ``tolerance`` for PATIENCE iterations in a row. With ``stop_when_stalled`` (L-BFGS only) it
    also stops at the first iteration below ``tolerance`` whose line search ended without
    meeting the Wolfe conditions: near a flat optimum each such search spends its whole budget
    of objective evaluations (measured ~95 ms an iteration on the built-in flap case, against
    ~6 ms for an ordinary one) and the PATIENCE iterations that follow change nothing that
    matters.
    ``operands`` are passed to the compiled step as arguments (not captured as constants, which
    would copy them into the program).
    ``checkpoint(iteration, u)`` is called every ``checkpoint_every`` iterations.
    """
    opt, step = _compiled_step(f, method, learning_rate)
    state = strong_typed(opt.init(u0))

    t0 = time.perf_counter()
    u_next, state_next, value = step(u0, state, operands)
    jax.block_until_ready(value)
    compile_s = time.perf_counter() - t0
    history = [float(value)]
    u, state = u_next, state_next
    calm, stop_reason, converged = 0, "max_iterations", False
    t1 = time.perf_counter()
    for it in range(1, max_iterations):
        u_next, state_next, value = step(u, state, operands)
        value = float(value)
        if not np.isfinite(value):
            stop_reason = "non-finite objective"
            break
        rel = abs(history[-1] - value) / max(abs(value), 1e-12)
        history.append(value)
        u, state = u_next, state_next
        if progress is not None:
            progress(it, value)
        if checkpoint is not None and it % checkpoint_every == 0:
            checkpoint(it, u)
        calm = calm + 1 if rel < tolerance else 0
        if calm and stop_when_stalled and _line_search_failed(state):
            stop_reason, converged = "relative change below tolerance, line search stalled", True
            break
        if calm >= PATIENCE:
            stop_reason, converged = "relative change below tolerance", True
            break
        if value == 0.0:
            stop_reason, converged = "objective is zero", True
            break
    # the objective at the returned u, from the compiled step (an eager evaluation of the
    # objective would dispatch every operation on its own and cost as much as many iterations)
    final_value = float(step(u, state, operands)[2])
    return LoopResult(
        u,
        history,
        len(history),
        converged,
        stop_reason,
        compile_s,
        time.perf_counter() - t1,
        final_value,
    )


def _line_search_failed(state) -> bool:
    """Whether the last zoom line search of an L-BFGS ``state`` ended without meeting the
    sufficient-decrease and curvature (strong Wolfe) conditions (False without a line search)."""
    info = optax.tree_utils.tree_get(state, "info")
    if not hasattr(info, "curvature_error"):
        return False
    return bool(max(float(info.decrease_error), float(info.curvature_error)) > 0.0)


def minimise(
    objective_of_times: Callable[..., jnp.ndarray],
    init_times_s: np.ndarray,
    t_max_s: float,
    method: str = "lbfgs",
    max_iterations: int = 300,
    tolerance: float = 1e-6,
    learning_rate: float = 0.05,
    progress: Callable[[int, float], None] | None = None,
    dtype=jnp.float32,
    checkpoint: Callable[[int, np.ndarray], None] | None = None,
    checkpoint_every: int = 25,
    operands: tuple = (),
) -> OptimizationResult:
    """Minimise ``objective_of_times`` over 0 <= t <= t_max_s.

    Args:
        objective_of_times: pure, differentiable function (times_s (N,), *operands) -> scalar.
        operands: large arrays the objective needs (an influence matrix, points). They are passed
            to the compiled step as arguments, not captured as constants, which would copy them
            into the program and slow compilation.
        init_times_s: (N,) starting dwell times (s).
        method: "lbfgs" (optax.lbfgs with its zoom line search) or "adam".
        max_iterations / tolerance: stop after max_iterations, or when the relative objective change
            stays below tolerance for PATIENCE iterations in a row.
        progress: called as progress(iteration, objective) after each iteration.
        checkpoint: called as checkpoint(iteration, times_s) every ``checkpoint_every`` iterations,
            so a long run can be resumed from its last dwell times.
    """

    def f(u, *ops):
        return jnp.asarray(objective_of_times(times_from_u(u, t_max_s), *ops), dtype)

    return minimise_u(
        f,
        u_from_times(init_times_s, t_max_s).astype(dtype),
        t_max_s,
        method,
        max_iterations,
        tolerance,
        learning_rate,
        progress,
        checkpoint,
        checkpoint_every,
        operands,
    )


def minimise_u(
    f: Callable[..., jnp.ndarray],
    u0,
    t_max_s: float,
    method: str = "lbfgs",
    max_iterations: int = 300,
    tolerance: float = 1e-6,
    learning_rate: float = 0.05,
    progress: Callable[[int, float], None] | None = None,
    checkpoint: Callable[[int, np.ndarray], None] | None = None,
    checkpoint_every: int = 25,
    operands: tuple = (),
    n_dwells: int | None = None,
    stop_when_stalled: bool = False,
) -> OptimizationResult:
    """:func:`minimise` of ``f(u, *operands)`` over the unconstrained variable ``u`` (times
    ``times_from_u(u, t_max_s)``); the times and checkpoints keep the first ``n_dwells`` (None:
    all; a padded problem's real dwells). Pass the same ``f`` object to reuse its compiled
    step (:func:`_compiled_step` is cached per function). ``stop_when_stalled``: see
    :func:`run_optax`."""
    keep = slice(None) if n_dwells is None else slice(0, n_dwells)

    def save(it, u):
        checkpoint(it, np.asarray(times_from_u(u, t_max_s), dtype=np.float64)[keep])

    loop = run_optax(
        f,
        u0,
        method,
        max_iterations,
        tolerance,
        learning_rate,
        progress,
        save if checkpoint is not None else None,
        checkpoint_every,
        operands,
        stop_when_stalled,
    )
    times = np.asarray(times_from_u(loop.u, t_max_s), dtype=np.float64)[keep]
    return OptimizationResult(
        times_s=times,
        objective=loop.final_value,
        iterations=loop.iterations,
        converged=loop.converged,
        stop_reason=loop.stop_reason,
        history=loop.history,
        compile_s=loop.compile_s,
        optimise_s=loop.optimise_s,
        method=method,
    )


def save_checkpoint(path: str | Path, times_s: np.ndarray, iteration: int, key: str = "") -> None:
    """Write dwell times, iteration and an identifying ``key`` to ``path`` (.npz) atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        times_s=np.asarray(times_s, np.float64),
        iteration=np.asarray(int(iteration)),
        key=np.asarray(str(key)),
    )
    tmp.replace(path)


class CheckpointRejected(ValueError):
    """A checkpoint file that cannot be used (damaged, foreign or out of bounds); the message
    says why. Never fatal to a run: it starts afresh."""


#: Largest uncompressed member of a checkpoint read at all (a hostile file could be huge).
MAX_MEMBER_BYTES = 64 * 1024 * 1024


def read_npz_checked(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz file, read without pickle and with bounded sizes.

    Raises:
        CheckpointRejected: unreadable, not an .npz, a key missing, a member too large or holding
            objects (every exception of the reader is turned into this one).
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            sizes = {info.filename: info.file_size for info in zf.infolist()}
        missing = [k for k in keys if f"{k}.npy" not in sizes]
        if missing:
            raise CheckpointRejected(f"missing {missing}")
        big = [k for k in keys if sizes[f"{k}.npy"] > MAX_MEMBER_BYTES]
        if big:
            raise CheckpointRejected(f"{big} larger than {MAX_MEMBER_BYTES} bytes")
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in keys}
    except CheckpointRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file may raise anything
        raise CheckpointRejected(
            f"not a readable .npz file ({type(exc).__name__}: {exc})"
        ) from None


def _scalar(value: np.ndarray, kind: str, name: str):
    if value.shape != () or value.dtype.kind not in kind:
        raise CheckpointRejected(f"{name} is {value.dtype}{list(value.shape)}, expected a scalar")
    return value.item()


def load_checkpoint(
    path: str | Path, n_dwells: int | None = None, t_max_s: float | None = None
) -> tuple[np.ndarray, int, str]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle): times, iteration, key.

    Checks the keys, that ``times_s`` is a finite float vector of ``n_dwells`` values in
    [0, ``t_max_s``] (when given), the iteration a non-negative integer and the key a string.

    Raises:
        CheckpointRejected: saying what is wrong.
    """
    data = read_npz_checked(path, ("times_s", "iteration", "key"))
    times = data["times_s"]
    if times.dtype.kind != "f" or times.ndim != 1:
        raise CheckpointRejected(f"times_s is {times.dtype}{list(times.shape)}, expected floats")
    if n_dwells is not None and times.shape != (n_dwells,):
        raise CheckpointRejected(f"times_s has {times.size} values, the plan {n_dwells} dwells")
    if not np.all(np.isfinite(times)):
        raise CheckpointRejected("times_s holds NaN or infinite values")
    if np.any(times < 0) or (t_max_s is not None and np.any(times > t_max_s * (1 + 1e-6))):
        raise CheckpointRejected(f"times_s outside [0, {t_max_s if t_max_s else 'inf'}] s")
    iteration = _scalar(data["iteration"], "iu", "iteration")
    if iteration < 0:
        raise CheckpointRejected(f"iteration {iteration} < 0")
    key = _scalar(data["key"], "U", "key")
    return times.astype(np.float64), int(iteration), str(key)
