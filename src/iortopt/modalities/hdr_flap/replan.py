"""Replanning an HDR flap plan without restarting: the case, the influence matrix and the compiled
optimiser stay in memory, so a changed goal, objective weight or dose, or a changed set of active
dwells re-optimises without recompiling (0.08-0.95 s on the built-in case, 2-core CPU: 2-46
iterations, stopping where the line search stalls; ``benchmarks/bench_replan.py``,
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
The problem is padded to size buckets (:mod:`iortopt.optimisation.bucketed`), so a session of
another case of similar size runs the same compiled step.

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
from iortopt.modalities.hdr_flap.pareto import structure_blocks
from iortopt.optimisation import bucketed
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
        # the objective reads only its structures' rows (each a contiguous block padded to a size
        # bucket; a structure of mean-dose terms only as its mean row): several times fewer rows
        # per iteration, and a case of similar size reuses the compiled step
        blocks = structure_blocks(cfg, prepared.weights, np.asarray(matrix_gy_per_s))
        self._problem = bucketed.build_problem(
            cfg.objectives,
            blocks,
            prepared.dwells.neighbour_pairs(),
            prepared.case.grid.voxel_volume_cm3,
            cfg.prescription.dose_gy,
            dtype,
        )
        self._f = bucketed.objective_of_u(self._problem.layout, jnp.dtype(dtype).name)
        n = len(prepared.dwells)
        self._t_max = cfg.applicator.max_dwell_time_s
        self._active = np.ones(n, bool)
        self._objectives = list(cfg.objectives)
        self._goals = list(cfg.goals)
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
        objs = list(self._objectives)
        objs[index] = obj.model_copy(update=update)
        try:
            _, _, params = bucketed.term_specs(
                objs,
                self._structures(),
                self._prepared.case.grid.voxel_volume_cm3,
                self._cfg.prescription.dose_gy,
                self._prepared.dtype,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._objectives = objs
        self._problem = self._problem.with_params(params)

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
    def catheters(self) -> list[int]:
        """The catheter indices the plan's dwells lie on (for :meth:`set_active_catheters`)."""
        return sorted({int(c) for c in self._prepared.dwells.catheter})

    @property
    def goals(self) -> list[Goal]:
        return list(self._goals)

    def config(self) -> PlanConfig:
        """The plan config with the changed objectives and goals (for ``iortopt run``)."""
        # copies: later changes to the session must not reach a config handed out before
        return self._cfg.model_copy(
            update={"objectives": list(self._objectives), "goals": list(self._goals)}
        )

    def optimise(self, max_iterations: int | None = None, warm_start: bool = True) -> Replan:
        """Re-optimise the dwell times, from the last times unless ``warm_start`` is false."""
        t0 = time.perf_counter()
        cfg, dtype = self._cfg.optimizer, self._prepared.dtype
        start = self._times_s if warm_start else self._start_s
        result = bucketed.minimise_problem(
            self._problem.with_mask(self._active),
            start,
            self._t_max,
            method=cfg.method,
            max_iterations=max_iterations or cfg.max_iterations,
            tolerance=cfg.tolerance,
            learning_rate=cfg.learning_rate,
            stop_when_stalled=True,  # replans stop where the line search stalls (run_optax)
        )
        times = result.times_s
        self._times_s = times
        applied = times * self._active
        dose = np.asarray(self._matrix @ jnp.asarray(applied, dtype), np.float64)
        value = result.objective
        metrics, goals = self._evaluate(dose)
        return Replan(
            applied, value, result.iterations, result.converged, metrics, goals,
            time.perf_counter() - t0,
        )  # fmt: skip

    # -- internals ---------------------------------------------------------------------------

    def _objective(self, index: int):
        if not 0 <= index < len(self._objectives):
            raise ConfigError(f"objectives[{index}]: the plan has {len(self._objectives)} terms")
        return self._objectives[index]

    def _structures(self) -> list[str]:
        return sorted({o.structure for o in self._cfg.objectives if o.structure})

    def _evaluate(self, dose_opt_gy: np.ndarray) -> tuple[dict, list[dict]]:
        vv = self._prepared.case.grid.voxel_volume_cm3
        rx = self._cfg.prescription.dose_gy
        metrics = {
            name: dvh.structure_metrics(dose_opt_gy, np.asarray(w), vv, rx)
            for name, w in self._prepared.weights.items()
        }
        goals = goal_rows(self._goals, metrics)
        return metrics, goals
