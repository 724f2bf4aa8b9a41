"""Tasks: what the network sees and what it is asked to predict.

A task binds a corruption from ``operators`` (clean batch -> corrupted batch and time t) to how the
model is applied (bilinear upsampling of an LR input, a global input skip) and to the per-term loss.
Everything here is pure and configured once; the estimator in ``multiscale`` only calls it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from msjax import operators, resize

TASKS = ("denoise", "deblur", "inpaint", "sr")
LOSSES = ("mse", "l1", "l1_255")


@dataclasses.dataclass(frozen=True)
class Task:
    """How one restoration problem is posed.

    ``corrupt(x, key, level)`` maps a clean NHWC batch to (y, t); ``level`` says how many grids
    coarser than the data grid x lives on (only used when the operator is applied per level).
    ``scale`` is the SR factor (1 otherwise): targets are ``scale`` times the input's size.
    """

    name: str
    corrupt: Callable
    scale: int = 1
    upsample_input: bool = False   # feed bilinear-upsampled LR to a model that keeps sizes
    residual: bool = False         # output = model(input) + input
    loss: str = "mse"
    time_conditioned: bool = True

    def model_input(self, y: jax.Array) -> jax.Array:
        if not self.upsample_input or self.scale == 1:
            return y
        n, h, w, _ = y.shape
        return resize.resize_bilinear(y, h * self.scale, w * self.scale)

    def predict(self, apply_fn, variables, y, t, **kwargs):
        """Applies the model to a corrupted batch; returns (output, apply_fn's extra outputs)."""
        inp = self.model_input(y)
        out = apply_fn(variables, inp, t if self.time_conditioned else None, **kwargs)
        extra = None
        if isinstance(out, tuple):
            out, extra = out
        if self.residual:
            out = out + inp.astype(out.dtype)
        return out, extra

    def term_loss(self, output: jax.Array, target: jax.Array) -> jax.Array:
        """ell: the mean over the term's batch, in float32 whatever the compute dtype."""
        diff = output.astype(jnp.float32) - target.astype(jnp.float32)
        if self.loss == "mse":
            return jnp.mean(diff**2)
        if self.loss == "l1":
            return jnp.mean(jnp.abs(diff))
        if self.loss == "l1_255":  # ECO's official loss: L1 on the 0-255 scale
            return jnp.mean(jnp.abs(255.0 * diff))
        raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")


def _blur_at_level(x, key, level, *, sigma, t_max, per_level, level_blur):
    # "scaled": the same physical blur on every grid (sigma 2^-l pixels at level l); "fixed": the
    # same blur in pixels, so every level poses the fine problem again at a coarser sampling.
    scale = 2.0**-level if per_level and level_blur == "scaled" else 1.0
    return operators.deblur(x, key, sigma=(sigma[0] * scale, sigma[1] * scale), t_max=t_max)


def _ignore_level(fn):
    return lambda x, key, level: fn(x, key)


def make_task(task_config, *, operator_per_level: bool = False) -> Task:
    """Builds a Task from the config's ``task`` section (see configs/base.py)."""
    c = task_config
    name = c.name
    if name == "denoise":
        if c.get("noise", "interpolation") == "gaussian":
            fn = functools.partial(operators.denoise_gaussian, sigma=c.get("sigma", 25.0))
        else:
            fn = operators.denoise_interpolation
        corrupt = _ignore_level(fn)
    elif name == "deblur":
        corrupt = functools.partial(
            _blur_at_level, sigma=tuple(c.get("blur_sigma", (3.0, 3.0))),
            t_max=c.get("t_max", 0.1), per_level=operator_per_level,
            level_blur=c.get("level_blur", "scaled"))
    elif name == "inpaint":
        corrupt = _ignore_level(functools.partial(
            operators.inpaint, count=tuple(c.get("box_count", (1, 4))),
            size=tuple(c.get("box_size", (0.1, 0.3))), t_max=c.get("t_max", 0.1)))
    elif name == "sr":
        corrupt = _ignore_level(functools.partial(
            operators.downsample, scale=c.get("scale", 2), kernel=c.get("kernel", "bicubic")))
    else:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return Task(
        name=name, corrupt=corrupt, scale=c.get("scale", 1) if name == "sr" else 1,
        upsample_input=c.get("upsample_input", False), residual=c.get("residual", False),
        loss=c.get("loss", "mse"), time_conditioned=name != "sr")
