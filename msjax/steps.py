"""The compiled steps: one MGE training step and one validation step, pure and top-level.

Static dependencies (plan, task) are bound with ``functools.partial`` before ``jax.jit``; each
distinct plan therefore compiles once. The step rng is ``fold_in(seed_key, step)``, so a resumed
run draws exactly the noise the uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from msjax import metrics, multiscale


class TrainState(train_state.TrainState):
    """Flax TrainState plus the model's non-trainable collections (e.g. BatchNorm batch_stats)
    and, with ``train.ema_decay``, an exponential moving average of the parameters, which
    evaluation then uses."""

    model_state: Any = flax.struct.field(default_factory=dict)
    ema_params: Any = None


def train_step(state: TrainState, batches, seed_key, *, plan, task, skip_nonfinite: bool = False,
               ema_decay: float = 0.0):
    """One optimizer step on the MGE gradient of ``plan``; returns (state, metrics).

    A step whose loss or gradient is not finite leaves the state untouched except for the step
    counter when ``skip_nonfinite``; otherwise it is applied and the loop stops on the metric.
    The optimizer also sees the finest-level loss (``value``), for transforms that act on it
    (``optim.skip_loss_spikes``): it is a real loss, where the telescoping sum is an estimate.
    """
    rng = jax.random.fold_in(seed_key, state.step)
    (loss, aux), grads = multiscale.mge_gradient(
        state.params, batches, rng, plan=plan, task=task, apply_fn=state.apply_fn,
        model_state=state.model_state, train=True)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    tx = optax.with_extra_args_support(state.tx)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=aux["finest"])
    params = optax.apply_updates(state.params, updates)
    ema = None if state.ema_params is None else optax.incremental_update(
        params, state.ema_params, step_size=1.0 - ema_decay)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=aux["model_state"], ema_params=ema)
    if skip_nonfinite:
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        new_state = kept.replace(step=new_state.step)
    return new_state, {"loss": loss, "finest_loss": aux["finest"], "grad_norm": grad_norm,
                       "finite": finite}


def predict(state: TrainState, y, t, *, task):
    """The restored batch in evaluation mode (BatchNorm running averages, no dropout, the
    averaged weights where the run keeps them)."""
    params = state.params if state.ema_params is None else state.ema_params
    variables = {"params": params, **state.model_state}
    out, _ = task.predict(state.apply_fn, variables, y, t, train=False)
    return out.astype(jnp.float32)


def eval_step(state: TrainState, batch, *, task, crop_border: int = 0, y_channel: bool = False):
    """Per-image loss, PSNR and SSIM of the restored (clipped) validation batch.

    ``batch`` holds a fixed corrupted ``input``, its ``t`` and the clean ``target``.
    """
    out = predict(state, batch["input"], batch.get("t"), task=task)
    target = batch["target"]
    loss = task.image_loss(out, target)  # the training loss, per image
    out = jnp.clip(out, 0.0, 1.0)
    return {"loss": loss,
            "psnr": metrics.psnr_batch(out, target, crop_border=crop_border, y_channel=y_channel),
            "ssim": metrics.ssim_batch(out, target, crop_border=crop_border, y_channel=y_channel)}
