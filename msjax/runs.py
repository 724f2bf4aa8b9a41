"""Loading a trained run: its config (laid over today's defaults), its best or latest checkpoint,
and a ``Run`` that restores images::

    run = msjax.load_run("runs/quickstart")
    restored = run.restore(corrupted)          # HWC or NHWC in, float32 in [0, 1] out
    big = run.restore(photo, tile=256)         # tiled: bounded memory

``eval.py``, warm starts (``train.init_from``), ECO's teacher and Multiblock's phases load runs
through here. The saved ``config.json`` goes through ``build`` like any config.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from msjax import build, checkpoints, logs
from msjax.errors import DataError, RunDirError

load_config = build.load_config


@dataclasses.dataclass
class Run:
    """A trained run, loaded: ``restore`` restores images (see there); ``state`` /
    ``experiment`` for anything else."""

    workdir: Path
    experiment: build.Experiment
    state: Any
    step: int
    #: Image channels the model takes (its template is built with 3).
    channels: int = 3

    @functools.cached_property
    def _restorer(self):
        from msjax import evaluate  # evaluate imports this module

        return evaluate.make_restorer(self.state, self.experiment.task,
                                      backend=self.experiment.backend)

    def restore(self, image, t=None, *, tile: int = 0, overlap: int = 16) -> np.ndarray:
        """The restored image(s), float32 in [0, 1], in the layout given: HxWxC for an HxWxC
        image, NxHxWxC for a batch (LR in, ``scale`` times larger out for SR).

        ``image``: uint8 (divided by 255), uint16 (divided by 65535) or float in [0, 1], with
        the model's ``channels`` channels; anything else is refused with a DataError naming its
        shape / dtype. ``t``: the time of a time-conditioned task (a number, or one per image;
        default: the task's ``eval_t``). Images are padded by mirroring to a multiple of 8, as
        ``eval.py`` pads them. ``tile`` > 0 restores each image in tile x tile pieces with
        bounded memory (``evaluate.restore_image``): exactly the whole-image result for models
        without image-wide operations; for those with them (resnet / srnet layer norm, unet,
        rcan / multiblock channel attention) it prints a warning with the measured deviation.
        """
        batch, single = as_float_images(image, self.channels)
        task = self.experiment.task
        n = batch.shape[0]
        if task.time_conditioned and t is None:
            t = task.eval_t
        ts = None if t is None else np.broadcast_to(np.asarray(t, np.float32), (n,))
        from msjax import evaluate

        restore = self._restorer
        if tile:
            out = np.stack([evaluate.restore_image(
                restore, im, scale=task.scale, tile=tile, overlap=overlap,
                t=None if ts is None else float(ts[i])) for i, im in enumerate(batch)])
        else:
            h, w = batch.shape[1:3]
            padded = np.pad(batch, ((0, 0), (0, (-h) % 8), (0, (-w) % 8), (0, 0)),
                            mode="symmetric")
            out = np.asarray(restore(jnp.asarray(padded),
                                     None if ts is None else jnp.asarray(ts)))
            out = out[:, :h * task.scale, :w * task.scale]
        return out[0] if single else out


def as_float_images(image, channels: int = 3) -> tuple[np.ndarray, bool]:
    """(NxHxWxC float32 batch, whether ``image`` was one HxWxC image): uint8 / 255, uint16 /
    65535, float as it is. A DataError names any other shape or dtype and what is expected."""
    a = np.asarray(image)
    expected = (f"expected an HxWx{channels} image or an NxHxWx{channels} batch, uint8, uint16 "
                "or float in [0, 1]")
    if a.ndim not in (3, 4) or a.shape[-1] != channels or 0 in a.shape:
        raise DataError(f"cannot restore an array of shape {a.shape} ({a.dtype}): {expected}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535
    elif a.dtype.kind == "f":
        a = a.astype(np.float32)
    else:
        raise DataError(f"cannot restore an array of dtype {a.dtype} (shape {a.shape}): "
                        f"{expected}")
    return (a[None], True) if a.ndim == 3 else (a, False)


def load_state(workdir, which: str | int = "best", *,
               experiment: build.Experiment | None = None):
    """(state, experiment, step) of the run's best (or latest) checkpoint, or of the checkpoint
    at a step (an int or its digits), on one device. ``experiment``: the run's own, already
    built (else built from its config.json)."""
    state, exp, step, _ = load_checkpoint(workdir, which, experiment=experiment)
    return state, exp, step


def load_checkpoint(workdir, which: str | int = "best", *,
                    experiment: build.Experiment | None = None, portable: bool = False):
    """``load_state`` and the checkpoint's metadata (its ``best_psnr``: the run's best
    validation PSNR up to that step). An unknown step is refused with the steps kept.
    ``portable``: the model on XLA's own convolutions whatever the run trained with (the CPU
    backend's oneDNN kernels are custom calls no exporter can carry)."""
    logs.quiet_library_logs()
    workdir = Path(workdir)
    if experiment is None:
        config = load_config(workdir)
        if portable:  # the CPU backend dispatches to oneDNN only when asked for or measured
            config.runtime.cpu_convolutions = "eigen"
    exp = experiment or build.experiment(config, num_devices=1)
    side = exp.input.patch // exp.task.scale
    template = build.initial_state(exp, (1, side, side, 3))
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        kept = ckpt.steps()
        if not kept:
            raise RunDirError(f"no checkpoint in {workdir / 'checkpoints'}: the run saved none "
                              "yet; train it first (python train.py ... --workdir "
                              f"{workdir})")
        if str(which).isdigit():
            step = int(which)
            if step not in kept:
                raise RunDirError(
                    f"--checkpoint {step}: {workdir / 'checkpoints'} keeps no checkpoint of that "
                    f"step; it keeps {', '.join(map(str, kept))} (or pass best, latest)")
        elif which in ("best", "latest"):
            step = ckpt.best_step() if which == "best" else None
            if step is None:
                step = max(kept)
        else:
            raise RunDirError(f"--checkpoint {which}: not best, latest or a step number; the "
                              f"run keeps steps {', '.join(map(str, kept))}")
        try:
            state, meta = ckpt.restore(step, template)
        except checkpoints.DamagedCheckpointError as e:
            others = [s for s in kept if s != step]
            raise RunDirError(
                f"checkpoint {step} in {workdir / 'checkpoints'} is damaged ({e.reason}); pass "
                f"--checkpoint one of the other steps kept: "
                f"{', '.join(map(str, others)) or 'none'}") from e
    finally:
        ckpt.close()
    return state, exp, step, meta


def load_run(workdir, which: str = "best") -> Run:
    """The run in ``workdir`` at its best (or latest) checkpoint, ready to restore images."""
    state, exp, step = load_state(workdir, which)
    return Run(Path(workdir), exp, state, step)
