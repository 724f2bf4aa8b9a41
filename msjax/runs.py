"""Loading a trained run: its config (laid over today's defaults), its best or latest checkpoint,
and a ``Run`` that restores images::

    run = msjax.load_run("runs/quickstart")
    restored = run.restore(corrupted)          # NHWC float32 in [0, 1]

``eval.py``, warm starts (``train.init_from``), ECO's teacher and Multiblock's phases load runs
through here. The saved ``config.json`` goes through ``build`` like any config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from msjax import build, checkpoints, logs, steps
from msjax.errors import RunDirError

load_config = build.load_config


@dataclasses.dataclass
class Run:
    """A trained run, loaded: ``restore(y, t=None)`` maps a corrupted NHWC float batch in [0, 1]
    (LR for SR) to the restored batch, jitted; ``state`` / ``experiment`` for anything else."""

    workdir: Path
    experiment: build.Experiment
    state: Any
    step: int
    restore: Any


def load_state(workdir, which: str = "best", *, experiment: build.Experiment | None = None):
    """(state, experiment, step) of the run's best (or latest) checkpoint, on one device.
    ``experiment``: the run's own, already built (else built from its config.json)."""
    logs.quiet_library_logs()
    workdir = Path(workdir)
    exp = experiment or build.experiment(load_config(workdir), num_devices=1)
    side = exp.input.patch // exp.task.scale
    template = build.initial_state(exp, (1, side, side, 3))
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        step = ckpt.best_step() if which == "best" else None
        if step is None:
            step = max(ckpt.steps(), default=None)
        if step is None:
            raise RunDirError(f"no checkpoint in {workdir / 'checkpoints'}: the run saved none "
                              "yet; train it first (python train.py ... --workdir "
                              f"{workdir})")
        state, _ = ckpt.restore(step, template)
    finally:
        ckpt.close()
    return state, exp, step


def load_run(workdir, which: str = "best") -> Run:
    """The run in ``workdir`` at its best (or latest) checkpoint, ready to restore images."""
    state, exp, step = load_state(workdir, which)
    task = exp.task
    # The state is an argument, not a closure: closed-over arrays would be compiled in as
    # constants.
    program = exp.backend.jit(lambda s, y, t: jnp.clip(steps.predict(s, y, t, task=task), 0, 1))

    def restore(y, t=None):
        if task.time_conditioned and t is None:
            t = jnp.full((y.shape[0],), task.eval_t)
        return program(state, jnp.asarray(y, jnp.float32), t)

    return Run(Path(workdir), exp, state, step, restore)
