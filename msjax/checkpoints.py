"""Orbax checkpoints: the latest (for resume) and the best by validation PSNR, both kept.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames). If the
latest checkpoint cannot be read (a half-written or damaged copy), restore falls back to the next
newest one and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)


def _psnr(metrics) -> float:
    return float(metrics["psnr"])


class Checkpoints:
    def __init__(self, directory: Path, *, keep_best: int = 1, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(
            best_fn=_psnr, best_mode="max", read_only=read_only,
            # The legacy max_to_keep=1 + best_fn deletes the latest and breaks resume; this policy
            # keeps the newest two (the older one is the fallback if the newest is damaged) and
            # the best ones side by side.
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=2),
                policies.BestN(get_metric_fn=_psnr, n=keep_best,
                               keep_checkpoints_without_metrics=False)]),
            enable_async_checkpointing=True)
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_savable(state)), meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def restore(self, step: int, template):
        """(state, meta) of ``step``, laid out like ``template`` (shapes, dtypes, shardings)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(template))
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return template.replace(**out["state"]), dict(out["meta"])

    def restore_latest(self, template, on_fallback=None):
        """The newest readable checkpoint as (state, meta, step), or None if there is none."""
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, template)
                return state, meta, step
            except Exception as e:  # a damaged checkpoint: try the one before it
                message = (f"checkpoint {step} in {self.directory} cannot be read "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                           "falling back to the previous one")
                log.warning(message)
                if on_fallback:
                    on_fallback(message)
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _savable(state):
    """The parts of a TrainState that a checkpoint holds (apply_fn and tx are code, not data)."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "model_state": state.model_state}
