"""Multiscale gradient estimation (MGE): level plans, the telescoping loss, schedules, cost.

Level 0 is the data grid (H x W); level l is H/2^l x W/2^l and R_l restricts to it. A plan with
L+1 terms, each on its own batch (x_k clean, y_k corrupted), estimates the finest-level loss by

    sum_{k<L} [ ell(f(R_k y_k), R_k x_k) - ell(f(R_{k+1} y_k), R_{k+1} x_k) ] + ell(f(R_L y_L), R_L x_L)

where the fine and coarse evaluations of one term share the samples, noise and t. Its ``jax.grad``
is the MGE gradient: equal to the single-scale gradient when every term shares one batch, and
unbiased for it when the terms draw independent batches. A full-multiscale (FMS) schedule runs
such plans coarse to fine, each as a stage whose finest grid is ``finest_level`` levels coarse.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from msjax import resize

MODES = ("single", "multiscale", "fullmultiscale")


@dataclasses.dataclass(frozen=True)
class LevelPlan:
    """One MGE estimator's shape: the batch of each term (finest first) and how levels are made."""

    batch_sizes: tuple[int, ...]
    finest_level: int = 0            # how many levels below the data grid the finest term lives
    restriction: str = "area"
    shared_batch: bool = False       # every term reuses term 0's batch, noise and t
    operator_per_level: bool = False  # corrupt each level's clean image instead of restricting y

    @property
    def num_terms(self) -> int:
        return len(self.batch_sizes)

    @property
    def levels(self) -> int:
        """L: the number of difference terms (0 for single-scale)."""
        return self.num_terms - 1

    @property
    def coarsest_level(self) -> int:
        return self.finest_level + self.levels

    def evaluations(self):
        """(term, level, batch size) of every network evaluation the loss makes, fine first."""
        for k, n in enumerate(self.batch_sizes):
            yield k, self.finest_level + k, n
            if k < self.levels:
                yield k, self.finest_level + k + 1, n


@dataclasses.dataclass(frozen=True)
class Stage:
    """A run of ``steps`` optimizer steps with one plan, starting at global step ``first_step``."""

    plan: LevelPlan
    steps: int
    first_step: int = 0

    @property
    def end_step(self) -> int:
        return self.first_step + self.steps


# --- schedules ---------------------------------------------------------------------------------

def growing_batches(finest: int, growth: int, terms: int) -> tuple[int, ...]:
    """Per-term batch sizes finest first: ``finest * growth**k`` (paper: growth 4; code: 1)."""
    return tuple(int(finest * growth**k) for k in range(terms))


def split_steps(total: int, weights: Sequence[float]) -> tuple[int, ...]:
    """Splits ``total`` steps over stages in proportion to ``weights`` (the last takes the rest)."""
    w = [float(x) for x in weights]
    parts = [int(round(total * x / sum(w))) for x in w[:-1]]
    return tuple(parts + [total - sum(parts)])


def make_schedule(mode: str, *, steps: int, batch_size: int, levels: int = 3,
                  batch_sizes: Sequence[int] = (), finest_batch: int = 4, batch_growth: int = 4,
                  stage_steps: Sequence[int] = (), stage_weights: Sequence[float] = (),
                  stage_batch_growth: int = 1, stage_batch_factor: int = 2, max_terms: int = 0,
                  restriction: str = "area", shared_batch: bool = False,
                  operator_per_level: bool = False) -> list[Stage]:
    """The stages of a run.

    single: one term of ``batch_size``. multiscale: ``levels`` difference terms with
    ``batch_sizes`` (or ``finest_batch * batch_growth**k``). fullmultiscale: stages j = 0..levels,
    stage j on finest level ``levels - j`` with j difference terms, base batch
    ``batch_size * stage_batch_factor**(levels - j)`` (official: 2) growing by
    ``stage_batch_growth`` per coarser term, running
    ``stage_steps`` steps each (official: 2000/1000/500/250), or else ``steps`` split by
    ``stage_weights`` (default: halving per finer stage, 8:4:2:1). ``max_terms`` > 0 caps a
    stage's terms (1: every stage a single-scale step on its own grid, coarse to fine).
    """
    common = dict(restriction=restriction, shared_batch=shared_batch,
                  operator_per_level=operator_per_level)
    if mode == "single":
        return [Stage(LevelPlan((batch_size,), **common), steps)]
    if mode == "multiscale":
        sizes = tuple(batch_sizes) or growing_batches(finest_batch, batch_growth, levels + 1)
        if len(sizes) != levels + 1:
            raise ValueError(f"mge.batch_sizes has {len(sizes)} entries; multiscale with "
                             f"levels={levels} needs {levels + 1} (finest first)")
        return [Stage(LevelPlan(sizes, **common), steps)]
    if mode == "fullmultiscale":
        if stage_steps:
            if len(stage_steps) != levels + 1:
                raise ValueError(f"fms.stage_steps has {len(stage_steps)} entries; "
                                 f"fullmultiscale with levels={levels} needs {levels + 1}")
            counts = tuple(int(n) for n in stage_steps)
        else:
            # Default: each stage half as long as the coarser one before it (official 8:4:2:1).
            stage_weights = (tuple(stage_weights)
                             or tuple(2 ** (levels - j) for j in range(levels + 1)))
            if len(stage_weights) != levels + 1:
                raise ValueError(f"fms.stage_weights has {len(stage_weights)} entries; "
                                 f"fullmultiscale with levels={levels} needs {levels + 1}")
            counts = split_steps(steps, stage_weights)
        stages, first = [], 0
        for j, n in enumerate(counts):
            base = batch_size * stage_batch_factor ** (levels - j)
            terms = min(j + 1, max_terms) if max_terms > 0 else j + 1
            plan = LevelPlan(growing_batches(base, stage_batch_growth, terms),
                             finest_level=levels - j, **common)
            stages.append(Stage(plan, n, first))
            first += n
        return stages
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def stage_at(stages: Sequence[Stage], step: int) -> int:
    """Index of the stage that runs global step ``step`` (the last stage past the end)."""
    for i, s in enumerate(stages):
        if step < s.end_step:
            return i
    return len(stages) - 1


# --- cost ---------------------------------------------------------------------------------------

def work_units(plan: LevelPlan, reference_batch: int) -> float:
    """Pixels pushed through forward+backward by one step, relative to one single-scale step of
    ``reference_batch`` images on the data grid (every level-l pixel costs 4^-l)."""
    return sum(n * 4.0**-level for _, level, n in plan.evaluations()) / reference_batch


def schedule_work_units(stages: Sequence[Stage], reference_batch: int) -> float:
    return sum(s.steps * work_units(s.plan, reference_batch) for s in stages)


# --- the estimator -------------------------------------------------------------------------------

def restrict_to(x: jax.Array, level: int, method: str) -> jax.Array:
    """R_level as a pyramid of 2x restrictions, so that R_{l+1} = R_1 R_l holds for every method
    (the antialiased bilinear filter does not compose exactly otherwise)."""
    for _ in range(level):
        x = resize.restrict(x, 1, method)
    return x


def _term_pyramid(plan: LevelPlan, task, batch: Mapping[str, jax.Array], key, level: int,
                  coarse: bool):
    """(y, x, t) of one term at ``level`` and, if ``coarse``, at ``level + 1``, sharing t."""
    x0 = batch["target"]
    if "input" in batch:   # paired data (e.g. real LR/HR): no synthetic corruption
        y0, t = batch["input"], None
    elif plan.operator_per_level:
        x = restrict_to(x0, level, plan.restriction)
        y, t = task.corrupt(x, key, level)
        out = [(y, x)]
        if coarse:
            xc = resize.restrict(x, 1, plan.restriction)
            yc, _ = task.corrupt(xc, key, level + 1)
            out.append((yc, xc))
        return out, t
    else:
        y0, t = task.corrupt(x0, key, 0)
    y = restrict_to(y0, level, plan.restriction)
    x = restrict_to(x0, level, plan.restriction)
    out = [(y, x)]
    if coarse:
        out.append((resize.restrict(y, 1, plan.restriction), resize.restrict(x, 1, plan.restriction)))
    return out, t


def telescoping_loss(params, batches: Sequence[Mapping[str, jax.Array]], rng: jax.Array, *,
                     plan: LevelPlan, task, apply_fn: Callable,
                     model_state: Mapping[str, Any] | None = None, train: bool = True):
    """The MGE loss (the telescoping sum of this module's docstring) as a function of ``params``.

    ``batches[k]`` holds term k's clean ``target`` on the data grid (and ``input`` for paired
    data); with ``plan.shared_batch`` only ``batches[0]`` is used. Returns ``(loss, aux)`` with
    aux = {'terms': per-term values, 'finest': ell at the finest evaluation, 'model_state': state
    updated by the finest evaluation (BatchNorm running statistics describe the finest grid)}.
    """
    model_state = dict(model_state or {})
    mutable = list(model_state) if (train and model_state) else False
    variables = {"params": params, **model_state}

    def evaluate(y, x, t, dropout_key):
        kwargs = dict(train=train, rngs={"dropout": dropout_key})
        if mutable:
            kwargs["mutable"] = mutable
        out, new_state = task.predict(apply_fn, variables, y, t, **kwargs)
        return task.term_loss(out, x), new_state

    terms, finest, new_model_state = [], None, model_state
    for k in range(plan.num_terms):
        batch = batches[0] if plan.shared_batch else batches[k]
        # Shared-batch terms share noise and dropout masks, so the sum telescopes exactly.
        term_key = jax.random.fold_in(rng, 0 if plan.shared_batch else k)
        level = plan.finest_level + k
        coarsest = k == plan.levels
        pairs, t = _term_pyramid(plan, task, batch, jax.random.fold_in(term_key, 0), level,
                                 coarse=not coarsest)
        dropout = [jax.random.fold_in(term_key, 1 + level + i) for i in range(len(pairs))]
        fine, state = evaluate(*pairs[0], t, dropout[0])
        if k == 0:
            finest = fine
            if mutable:
                new_model_state = dict(state)
        if coarsest:   # the coarsest term, once: ell(f(R_L y_L), R_L x_L)
            terms.append(fine)
        else:          # ell(f(R_k y_k), R_k x_k) - ell(f(R_{k+1} y_k), R_{k+1} x_k)
            coarse, _ = evaluate(*pairs[1], t, dropout[1])
            terms.append(fine - coarse)
    total = sum(terms)
    return total, {"terms": jnp.stack(terms), "finest": finest, "model_state": new_model_state}


def mge_gradient(params, batches, rng, **kwargs):
    """(loss, aux), grads of ``telescoping_loss``: the MGE gradient estimate."""
    return jax.value_and_grad(telescoping_loss, has_aux=True)(params, batches, rng, **kwargs)


# --- an adaptive full-multiscale schedule ---------------------------------------------------------

class AdaptiveSchedule:
    """``fms.schedule=adaptive``: every coarse stage moves on as soon as it stops paying, and
    what it leaves of its work goes to the finest stage.

    The fixed schedule sets the plans, each coarse stage's largest share and the budget (its
    total work units, or ``budget_units``). A coarse stage ends early when the mean finest-level
    training loss of its last ``window`` steps improved on the window before by less than
    ``min_improvement`` (relative), but not before ``min_share`` of its fixed steps; the finest
    stage runs until the budget is spent. Decisions depend only on the training losses, so they
    are deterministic, and ``state()`` (for the checkpoint) lets a resumed run repeat them.
    """

    def __init__(self, fixed: Sequence[Stage], reference_batch: int, *, window: int,
                 min_improvement: float, min_share: float, budget_units: float = 0.0):
        self.fixed, self.reference = list(fixed), reference_batch
        self.window, self.min_improvement, self.min_share = window, min_improvement, min_share
        self.budget = budget_units or schedule_work_units(self.fixed, reference_batch)
        self.ends: list[int] = []            # end steps of the coarse stages that moved on
        self.sum, self.count, self.previous = 0.0, 0, None

    def stages(self) -> list[Stage]:
        """The stages as planned now: the ended ones as they ran, the current and later coarse
        ones at their fixed length, the finest with what is left of the budget."""
        out, first, used = [], 0, 0.0
        for j, stage in enumerate(self.fixed[:-1]):
            steps = self.ends[j] - first if j < len(self.ends) else stage.steps
            out.append(Stage(stage.plan, steps, first))
            first += steps
            used += steps * work_units(stage.plan, self.reference)
        finest = self.fixed[-1].plan
        steps = max(1, int((self.budget - used) / work_units(finest, self.reference)))
        return out + [Stage(finest, steps, first)]

    def observe(self, stage: int, step: int, loss_sum: float, count: int) -> bool:
        """Adds the finest-level losses of ``count`` steps up to ``step`` (a log interval) of
        ``stage``; True when the stage ends at ``step + 1`` (``stages()`` has changed)."""
        while len(self.ends) < stage:  # a stage that ran its full fixed length
            self.ends.append(self.stages()[len(self.ends)].end_step)
            self.sum, self.count, self.previous = 0.0, 0, None
        if stage >= len(self.fixed) - 1:
            return False  # the finest stage runs to the budget
        self.sum, self.count = self.sum + loss_sum, self.count + count
        if self.count < self.window:
            return False
        mean, previous = self.sum / self.count, self.previous
        self.sum, self.count, self.previous = 0.0, 0, mean
        first = self.stages()[stage].first_step
        long_enough = step + 1 - first >= self.min_share * self.fixed[stage].steps
        if previous is None or not long_enough or (previous - mean) > self.min_improvement * abs(
                previous):
            return False
        self.ends.append(step + 1)
        self.previous = None
        return True

    def state(self) -> dict:
        return {"ends": list(self.ends), "sum": self.sum, "count": self.count,
                "previous": self.previous}

    def load(self, state: dict) -> None:
        self.ends = [int(e) for e in state.get("ends", [])]
        self.sum, self.count = float(state.get("sum", 0.0)), int(state.get("count", 0))
        self.previous = state.get("previous")
