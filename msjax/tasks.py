"""Tasks: what the network sees and what it is asked to predict.

A task binds a corruption from ``operators`` (clean batch -> corrupted batch and time t) to how the
model is applied (bilinear upsampling of an LR input, a global input skip) and to the per-term loss.
Everything here is pure and configured once; the estimator in ``multiscale`` only calls it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from msjax import damage, metrics, operators, resize
from msjax.registry import Registry
from msjax.settings import TaskSettings

# name -> builder(settings, *, operator_per_level) -> the Task fields that differ by task:
# ``corrupt`` and, where it applies, ``scale``, ``time_conditioned``, ``eval_t``,
# ``host_corrupt``, ``validation_corrupt``. A new task is one builder with this decorator.
TASKS = Registry("task", field="task.name")
# neg_ssim: the official MGE SR loss, -SSIM with zero padding (metrics.ssim_zero_padded_batch).
LOSSES = ("mse", "l1", "l1_255", "neg_ssim")
# The range the model sees: data stays in [0, 1]; "signed" feeds the model 2y - 1 and reads its
# output o as (o + 1) / 2, i.e. a tanh head on [-1, 1] data as the pyramidal reference.
MODEL_RANGES = ("unit", "signed")
# Fixed validation damage for every run, whatever config.seed: runs stay comparable.
VALIDATION_DAMAGE_SEED = 0


@dataclasses.dataclass(frozen=True)
class Task:
    """How one restoration problem is posed.

    ``corrupt(x, key, level)`` maps a clean NHWC batch to (y, t); ``level`` says how many grids
    coarser than the data grid x lives on (only used when the operator is applied per level).
    ``scale`` is the SR factor (1 otherwise): targets are ``scale`` times the input's size.
    ``host_corrupt(target) -> input`` (numpy) marks a corruption that cannot run under jit (JPEG
    by Pillow): the data pipeline applies it at the finest grid and the estimator restricts the
    result like a paired input. ``validation_corrupt(target) -> (y, t)`` is the fixed validation
    form where the task has one (otherwise validation uses ``corrupt`` with a fixed key).
    """

    name: str
    corrupt: Callable
    scale: int = 1
    upsample_input: bool = False   # feed bilinear-upsampled LR to a model that keeps sizes
    residual: bool = False         # output = model(input) + input
    loss: str = "mse"
    time_conditioned: bool = True
    model_range: str = "unit"      # what the model sees: MODEL_RANGES
    host_corrupt: Optional[Callable] = None
    validation_corrupt: Optional[Callable] = None
    # (mean, std) per channel: the model sees (y - mean) / std and predicts normalised images,
    # and the loss is taken there (the official loaders' Normalize); data stays in [0, 1].
    normalize: Optional[tuple] = None
    eval_t: Optional[float] = None

    def baseline(self, y: jax.Array) -> jax.Array:
        """What the input itself scores as a restoration: the corrupted image, or for SR its
        MATLAB-bicubic upsampling (the literature's baseline), in [0, 1]."""
        up = y if self.scale == 1 else resize.imresize(y, float(self.scale))
        # numpy stays numpy: folder evaluation scores in float64
        return (np.clip if isinstance(up, np.ndarray) else jnp.clip)(up, 0, 1)

    def model_input(self, y: jax.Array) -> jax.Array:
        if not self.upsample_input or self.scale == 1:
            return y
        n, h, w, _ = y.shape
        return resize.resize_bilinear(y, h * self.scale, w * self.scale)

    def predict(self, apply_fn, variables, y, t, **kwargs):
        """Applies the model to a corrupted batch; returns (output, apply_fn's extra outputs)."""
        inp = self.model_input(y)
        if self.normalize is not None:
            mean, std = (jnp.asarray(v, jnp.float32) for v in self.normalize)
            seen = (inp - mean) / std
        else:
            seen = 2 * inp - 1 if self.model_range == "signed" else inp
        out = apply_fn(variables, seen, t if self.time_conditioned else None, **kwargs)
        extra = None
        if isinstance(out, tuple):
            out, extra = out
        if self.normalize is not None:
            out = out * std + mean
        elif self.model_range == "signed":
            out = (out + 1) / 2
        if self.residual:
            out = out + inp.astype(out.dtype)
        return out, extra

    def _pixel_loss(self, output: jax.Array, target: jax.Array) -> jax.Array:
        diff = output.astype(jnp.float32) - target.astype(jnp.float32)
        if self.normalize is not None:  # the difference of the normalised images
            diff = diff / jnp.asarray(self.normalize[1], jnp.float32)
        if self.loss == "mse":
            return diff**2
        if self.loss == "l1":
            return jnp.abs(diff)
        if self.loss == "l1_255":  # ECO's official loss: L1 on the 0-255 scale
            return jnp.abs(255.0 * diff)
        raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")

    def term_loss(self, output: jax.Array, target: jax.Array) -> jax.Array:
        """ell: the mean over the term's batch, in float32 whatever the compute dtype."""
        if self.loss == "neg_ssim":  # the official order: C, H, W per image, then the batch
            return jnp.mean(self.image_loss(output, target))
        return jnp.mean(self._pixel_loss(output, target))

    def image_loss(self, output: jax.Array, target: jax.Array) -> jax.Array:
        """The loss of each image [N] (its mean over H, W and C), float32: validation's loss."""
        if self.loss == "neg_ssim":
            return -metrics.ssim_zero_padded_batch(output, target)
        per_pixel = self._pixel_loss(output, target)
        return jnp.mean(per_pixel, axis=tuple(range(1, per_pixel.ndim)))


def _ignore_level(fn):
    return lambda x, key, level: fn(x, key)


@TASKS.register("denoise")
def denoise(s: TaskSettings, *, operator_per_level: bool) -> dict:
    if s.noise == "gaussian":
        fn = functools.partial(operators.denoise_gaussian, sigma=s.sigma)
    else:
        fn = operators.denoise_interpolation
    return dict(corrupt=_ignore_level(fn), eval_t=0.5)


def _blur_at_level(x, key, level, *, sigma, t_max, per_level, level_blur):
    # "scaled": the same physical blur on every grid (sigma 2^-l pixels at level l); "fixed": the
    # same blur in pixels, so every level poses the fine problem again at a coarser sampling.
    scale = 2.0**-level if per_level and level_blur == "scaled" else 1.0
    return operators.deblur(x, key, sigma=(sigma[0] * scale, sigma[1] * scale), t_max=t_max)


@TASKS.register("deblur")
def deblur(s: TaskSettings, *, operator_per_level: bool) -> dict:
    return dict(corrupt=functools.partial(
        _blur_at_level, sigma=tuple(s.blur_sigma), t_max=s.t_max, per_level=operator_per_level,
        level_blur=s.level_blur), eval_t=0.05)


@TASKS.register("inpaint")
def inpaint(s: TaskSettings, *, operator_per_level: bool) -> dict:
    return dict(corrupt=_ignore_level(functools.partial(
        operators.inpaint, count=tuple(s.box_count), size=tuple(s.box_size), t_max=s.t_max)),
        eval_t=0.05)


@TASKS.register("sr")
def super_resolution(s: TaskSettings, *, operator_per_level: bool) -> dict:
    return dict(corrupt=_ignore_level(functools.partial(operators.downsample, scale=s.scale,
                                                        kernel=s.kernel)),
                scale=s.scale, time_conditioned=False)


@TASKS.register("damage")
def damage_suite(s: TaskSettings, *, operator_per_level: bool) -> dict:
    """The pyramidal damage suite (msjax.damage); no t, damage ignores the level (its layouts
    scale with the image, so per-level damage stays the same damage)."""
    name = s.damage
    if name not in damage.DAMAGES:
        raise ValueError(f"unknown damage {name!r}; choose one of {', '.join(damage.DAMAGES)}")

    def validation(x):
        fixed = damage.validation_damage(name, x, VALIDATION_DAMAGE_SEED)
        return jnp.asarray(fixed, jnp.float32), None

    if name == "jpeg":
        # Pillow runs on the host; outside jit ``corrupt`` still works (e.g. evaluating folders).
        def host(x):
            return damage.jpeg(np.asarray(x))

        return dict(corrupt=lambda x, key, level: (jnp.asarray(host(x)), None),
                    host_corrupt=host, validation_corrupt=validation, time_conditioned=False)
    return dict(corrupt=lambda x, key, level: (damage.damage(name, x, key), None),
                validation_corrupt=validation, time_conditioned=False)


def make_task(settings: TaskSettings, *, operator_per_level: bool = False,
              normalize=None) -> Task:
    """The Task of ``settings`` (its ``name`` picks the registered builder). ``normalize``:
    (mean, std) per channel, the official loaders' Normalize (``data.normalize``), or None."""
    fields = TASKS.get(settings.name)(settings, operator_per_level=operator_per_level)
    if settings.model_range not in MODEL_RANGES:
        raise ValueError(f"unknown model_range {settings.model_range!r}; choose one of "
                         f"{MODEL_RANGES}")
    if normalize is not None:
        mean, std = (tuple(float(v) for v in part) for part in normalize)
        fields["corrupt"] = _in_normalized_space(fields["corrupt"], mean, std)
        normalize = (mean, std)
    return Task(name=settings.name, upsample_input=settings.upsample_input,
                residual=settings.residual, loss=settings.loss,
                model_range=settings.model_range, normalize=normalize, **fields)


def _in_normalized_space(corrupt, mean, std):
    """The corruption applied to (x - mean) / std and mapped back, as the official code corrupts
    normalised images (its noise has unit variance in normalised units)."""
    m, s = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def corrupt_normalized(x, key, level):
        y, t = corrupt((x - m) / s, key, level)
        return y * s + m, t

    return corrupt_normalized
