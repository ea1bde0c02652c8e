"""Replanning an HDR flap plan without restarting: the case, the influence matrix and the compiled
optimiser stay in memory, so a changed goal, objective weight or dose, or a changed set of active
dwells re-optimises without recompiling (about 0.2-1.1 s on the built-in case, 2-core CPU;
benchmarks/RESULTS.md).

    session = iortopt.pipeline.replan_session("configs/flap_default.toml")
    first = session.optimise()                       # compiles once (or loads the cache)
    session.set_objective(0, dose_gy=10.5)           # numbers only: no recompilation
    session.set_goal(1, 9.0)
    session.set_active_catheters([0, 1, 2, 3, 4, 5]) # dwells of the others off
    second = session.optimise()                      # warm: starts from the last times

What stays compiled: the objective's structure (term types and their structures, the dwells and
optimisation voxels). Everything a replan changes enters the compiled step as an argument: the
terms' weights, doses and volumes (:func:`iortopt.optimisation.objectives.term_params`) and the
active-dwell mask (times of inactive dwells are multiplied by 0, so the matrix keeps its shape).

Metrics and goals of a replan are evaluated on the optimisation voxels (every structure voxel and a
margin), so they equal the full-grid metrics of the same times; the full-grid dose, DVH figures
and files come from ``iortopt run`` with the changed config (:meth:`ReplanSession.config`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from iortopt.config import Goal, PlanConfig
from iortopt.errors import ConfigError
from iortopt.evaluation import dvh
from iortopt.modalities.hdr_flap.pareto import term_blocks
from iortopt.optimisation import objectives
from iortopt.optimisation.optax_loop import run_optax, times_from_u, u_from_times
from iortopt.outputs.plan_files import goal_rows


@dataclass(frozen=True)
class Replan:
    """One re-optimisation: dwell times (s; 0 for inactive dwells), the objective, the metrics
    per structure on the optimisation voxels, the goals met or not, and its wall time (s)."""

    times_s: np.ndarray
    objective: float
    iterations: int
    converged: bool
    metrics: dict[str, dict[str, float]]
    goals: list[dict]
    wall_s: float


class ReplanSession:
    """An HDR flap plan kept in memory for fast re-optimisation (see the module docstring).

    Needs the explicit influence matrix (``optimizer.influence`` "matrix" or "auto" when it
    fits); shields are not re-placed here (a plan with ``[[shields]]`` is refused)."""

    def __init__(self, prepared, matrix_gy_per_s, start_time_s: float):
        """``prepared``: the plan's PreparedPlan; ``matrix_gy_per_s``: (P, N) influence matrix on
        its optimisation voxels; ``start_time_s``: the equal dwell time the plan run starts from
        (:func:`iortopt.modalities.hdr_flap.pipeline.replan_session` builds both)."""
        cfg = prepared.config
        if prepared.shield_specs:
            raise ConfigError("shields: a replanning session does not place shields; use run")
        self._prepared, self._cfg = prepared, cfg
        dtype = prepared.dtype
        self._matrix = matrix_gy_per_s  # every optimisation voxel: the metrics
        # the objective reads only its structures' rows (each a contiguous block; a structure of
        # mean-dose terms only as its mean row): several times fewer rows per iteration
        rows, weights = term_blocks(cfg, prepared.weights, np.asarray(matrix_gy_per_s), dtype)
        self._term_matrix = jnp.asarray(rows)
        self._weights = {k: jnp.asarray(v, dtype) for k, v in weights.items()}
        n = len(prepared.dwells)
        self._t_max = cfg.applicator.max_dwell_time_s
        self._active = np.ones(n, bool)
        self._objectives = list(cfg.objectives)
        self._goals = list(cfg.goals)
        self._build_objective()
        self._start_s = np.full(n, start_time_s)  # the run's start: mean target dose = Rx
        self._times_s = self._start_s

    # -- what a replan may change ------------------------------------------------------------

    def set_objective(
        self,
        index: int,
        *,
        weight: float | None = None,
        dose_gy: float | None = None,
        volume_percent: float | None = None,
    ) -> None:
        """Change the numbers of objective ``index`` (the compiled optimiser is kept)."""
        obj = self._objective(index)
        update = {
            k: v
            for k, v in (
                ("weight", weight),
                ("dose_gy", dose_gy),
                ("volume_percent", volume_percent),
            )
            if v is not None
        }
        if "volume_percent" in update and obj.volume_percent is None:
            raise ConfigError(f"objectives[{index}].volume_percent: this term has no volume in %")
        if update.get("weight", 1.0) < 0 or update.get("dose_gy", 1.0) < 0:
            raise ConfigError(f"objectives[{index}]: weight and dose_gy must be >= 0")
        self._objectives[index] = obj.model_copy(update=update)
        self._terms = self._terms_for(self._objectives)

    def set_goal(self, index: int, value: float) -> None:
        """Change the limit of clinical goal ``index`` (evaluation only)."""
        if not 0 <= index < len(self._goals):
            raise ConfigError(f"goals[{index}]: the plan has {len(self._goals)} goals")
        self._goals[index] = self._goals[index].model_copy(update={"value": float(value)})

    def set_active(self, active: np.ndarray) -> None:
        """Which dwells may hold the source: (N,) bool over the plan's active dwells."""
        active = np.asarray(active, bool)
        if active.shape != self._active.shape:
            raise ConfigError(
                f"active: expected {self._active.shape[0]} dwells, got {active.shape}"
            )
        if not active.any():
            raise ConfigError("active: at least one dwell must stay active")
        self._active = active

    def set_active_catheters(self, catheters) -> None:
        """Only the dwells of these catheter indices stay active."""
        self.set_active(np.isin(self._prepared.dwells.catheter, np.asarray(list(catheters))))

    # -- results -----------------------------------------------------------------------------

    @property
    def goals(self) -> list[Goal]:
        return list(self._goals)

    def config(self) -> PlanConfig:
        """The plan config with the changed objectives and goals (for ``iortopt run``)."""
        return self._cfg.model_copy(update={"objectives": self._objectives, "goals": self._goals})

    def optimise(self, max_iterations: int | None = None, warm_start: bool = True) -> Replan:
        """Re-optimise the dwell times, from the last times unless ``warm_start`` is false."""
        t0 = time.perf_counter()
        cfg, dtype = self._cfg.optimizer, self._prepared.dtype
        start = self._times_s if warm_start else self._start_s
        mask = jnp.asarray(self._active, dtype)
        params = objectives.term_params(self._terms, dtype)
        loop = run_optax(
            self._f,
            u_from_times(start, self._t_max).astype(dtype),
            cfg.method,
            max_iterations or cfg.max_iterations,
            cfg.tolerance,
            cfg.learning_rate,
            operands=(params, mask, self._term_matrix),
        )
        times = np.asarray(times_from_u(loop.u, self._t_max), np.float64)
        self._times_s = times
        applied = times * self._active
        dose = np.asarray(self._matrix @ jnp.asarray(applied, dtype), np.float64)
        value = loop.final_value
        metrics, goals = self._evaluate(dose)
        return Replan(
            applied, value, loop.iterations, loop.converged, metrics, goals,
            time.perf_counter() - t0,
        )  # fmt: skip

    # -- internals ---------------------------------------------------------------------------

    def _objective(self, index: int):
        if not 0 <= index < len(self._objectives):
            raise ConfigError(f"objectives[{index}]: the plan has {len(self._objectives)} terms")
        return self._objectives[index]

    def _terms_for(self, objs) -> list[objectives.Term]:
        grid = self._prepared.case.grid
        return objectives.build_terms(
            objs,
            self._weights,
            grid.voxel_volume_cm3,
            self._prepared.dwells.neighbour_pairs(),
            self._cfg.prescription.dose_gy,
        )

    def _build_objective(self) -> None:
        """One objective function object for the session, so the optimiser's compiled step
        (cached per function) is reused by every replan."""
        self._terms = self._terms_for(self._objectives)
        total = objectives.combine(self._terms)
        t_max, dtype = self._t_max, self._prepared.dtype

        def f(u, params, mask, matrix):
            t = times_from_u(u, t_max) * mask
            return jnp.asarray(total(matrix @ t, t, params), dtype)

        self._f = f

    def _evaluate(self, dose_opt_gy: np.ndarray) -> tuple[dict, list[dict]]:
        vv = self._prepared.case.grid.voxel_volume_cm3
        rx = self._cfg.prescription.dose_gy
        metrics = {
            name: dvh.structure_metrics(dose_opt_gy, np.asarray(w), vv, rx)
            for name, w in self._prepared.weights.items()
        }
        goals = goal_rows(self._goals, metrics)
        return metrics, goals
