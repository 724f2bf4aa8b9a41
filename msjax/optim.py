"""The run's optimizer and learning-rate schedules (``make_optimizer``), and the pieces optax does
not have: ECO's LAMB and a step that skips on loss spikes.

Why not ``optax.lamb``: it always applies Adam's bias correction and never caps the weight norm in
the trust ratio, while ECO's official training (torch-optimizer's Lamb with ``debias=False``)
uses the raw moments and ``clip(|w|, 0, 10) / |r|``. With bias
correction on and no cap, ``lamb`` here computes the same update as ``optax.lamb`` (a test pins
it), so one implementation serves both.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from msjax.errors import ConfigError
from msjax.settings import OptimizerSettings


class LambState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_lamb(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                  weight_decay: float = 0.0, bias_correction: bool = True,
                  max_weight_norm: float = 0.0) -> optax.GradientTransformation:
    """The LAMB direction ``trust * r`` per tensor, with r = m / (sqrt(v) + eps) + wd * w and
    trust = min(|w|, max_weight_norm) / |r| (1 where either norm is 0); max_weight_norm 0: no cap."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return LambState(jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params):
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        c1 = 1 - b1**count.astype(jnp.float32) if bias_correction else 1.0
        c2 = 1 - b2**count.astype(jnp.float32) if bias_correction else 1.0

        def direction(m, v, w):
            r = (m / c1) / (jnp.sqrt(v / c2) + eps) + weight_decay * w
            w_norm, r_norm = jnp.linalg.norm(w.ravel()), jnp.linalg.norm(r.ravel())
            if max_weight_norm:
                w_norm = jnp.minimum(w_norm, max_weight_norm)
            trust = jnp.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, 1.0)
            return (trust * r).astype(w.dtype)

        return jax.tree.map(direction, mu, nu, params), LambState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def lamb(learning_rate, **kwargs) -> optax.GradientTransformation:
    return optax.chain(scale_by_lamb(**kwargs), optax.scale_by_learning_rate(learning_rate))


class SkipSpikesState(NamedTuple):
    inner: optax.OptState
    last_loss: jax.Array   # the last accepted step's loss (inf before the first step)
    skipped: jax.Array     # how many steps were skipped so far


def skip_loss_spikes(inner: optax.GradientTransformation,
                     factor: float) -> optax.GradientTransformationExtraArgs:
    """Skips (zero update, ``inner``'s state untouched, so neither moments nor the learning-rate
    schedule advance) a step whose ``value`` exceeds ``factor`` times the last accepted one, as ECO's
    official trainer does. The state lives in the optimizer state, so checkpoints and resume carry it.
    The caller passes the loss: ``tx.update(grads, state, params, value=loss)``."""

    def init(params):
        return SkipSpikesState(inner.init(params), jnp.asarray(jnp.inf, jnp.float32),
                               jnp.zeros([], jnp.int32))

    def update(grads, state, params=None, *, value, **extra):
        del extra
        updates, inner_state = inner.update(grads, state.inner, params)
        value = jnp.asarray(value, jnp.float32)
        spike = value > factor * state.last_loss
        keep = lambda new, old: jnp.where(spike, old, new)  # noqa: E731
        return (jax.tree.map(lambda u: jnp.where(spike, jnp.zeros_like(u), u), updates),
                SkipSpikesState(jax.tree.map(keep, inner_state, state.inner),
                                keep(value, state.last_loss),
                                state.skipped + spike.astype(jnp.int32)))

    return optax.GradientTransformationExtraArgs(init, update)


# --- the run's optimizer and schedules -----------------------------------------------------

OPTIMIZERS = ("adam", "lamb", "adadelta")
LR_SCHEDULES = ("cosine", "cosine_per_stage", "stage_restarts", "constant_decay", "step")
# Adadelta's constants as the Multiblock seed (and torch's defaults): rho 0.9, eps 1e-6.
ADADELTA_RHO, ADADELTA_EPS = 0.9, 1e-6


def learning_rate(c: OptimizerSettings, total_steps: int, stage_ends=()) -> optax.Schedule:
    """``train.lr_schedule``: ``cosine`` from lr to lr_end over the whole run (the official
    recipe, never restarted), ``cosine_per_stage``: the same cosine inside every full-multiscale
    stage (``stage_ends``: each stage's last step + 1), so the fine stage trains at full rate
    instead of at the tail of the coarse stages' schedule, ``stage_restarts``: that cosine with a
    peak ``stage_peak_decay`` times the previous stage's (coarse first), ``constant_decay``: lr
    until the last ``decay_fraction`` of the run, then a cosine to lr_end (in full multiscale
    the coarse stages train at the full rate and the finest stage ends with the decay), or
    ``step``: lr times ``lr_step_factor`` after every ``lr_step_period`` steps of the run (EDSR /
    RCAN / MSRN: halved every 200k; lr_end plays no part)."""
    schedule = c.lr_schedule
    if schedule == "step":
        if c.lr_step_period <= 0 or c.lr_step_factor <= 0:
            raise ConfigError(
                f"train.lr_schedule=step needs train.lr_step_period > 0 and train.lr_step_factor "
                f"> 0 (got {c.lr_step_period} and {c.lr_step_factor}); the papers: 200000 and 0.5")
        return optax.exponential_decay(c.lr, transition_steps=int(c.lr_step_period),
                                       decay_rate=c.lr_step_factor, staircase=True)
    alpha = c.lr_end / c.lr
    if schedule in ("cosine_per_stage", "stage_restarts") and len(stage_ends) > 1:
        starts = (0, *stage_ends[:-1])
        factor = c.stage_peak_decay if schedule == "stage_restarts" else 1.0
        return optax.join_schedules(
            [optax.cosine_decay_schedule(c.lr * factor**j, max(end - start, 1),
                                         alpha=c.lr_end / (c.lr * factor**j))
             for j, (start, end) in enumerate(zip(starts, stage_ends))],
            boundaries=list(stage_ends[:-1]))
    if schedule == "constant_decay":
        if not 0 < c.decay_fraction <= 1:
            raise ConfigError(f"train.decay_fraction={c.decay_fraction} must lie in (0, 1]")
        decay = max(1, int(round(total_steps * c.decay_fraction)))
        return optax.join_schedules(
            [optax.constant_schedule(c.lr),
             optax.cosine_decay_schedule(c.lr, decay, alpha=alpha)],
            boundaries=[max(total_steps - decay, 0)])
    return optax.cosine_decay_schedule(c.lr, max(total_steps, 1), alpha=alpha)


def make_optimizer(c: OptimizerSettings,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam, LAMB or Adadelta following ``schedule`` (``learning_rate``; official MGE: Adam,
    cosine 5e-4 -> 1e-6 over all stages, never restarted).

    ECO's official extras, read with defaults that leave them off: ``beta2`` (ECO: 0.99),
    ``lamb_bias_correction`` (ECO: False), ``lamb_max_weight_norm`` (ECO: 10), and
    ``loss_spike_factor`` (ECO: 5; skip a step whose loss exceeds it times the last accepted one).
    Adadelta (the Multiblock seed's warm phase: lr 1, rho 0.9, eps 1e-6) is optax's, with
    ``weight_decay`` coupled as in torch.
    """
    b2 = c.beta2
    if c.optimizer == "adam":
        opt = optax.adam(schedule, b2=b2)
        if c.weight_decay:  # coupled L2, as torch's Adam(weight_decay=...)
            opt = optax.chain(optax.add_decayed_weights(c.weight_decay), opt)
    elif c.optimizer == "lamb":
        opt = lamb(schedule, b2=b2, weight_decay=c.weight_decay,
                   bias_correction=c.lamb_bias_correction,
                   max_weight_norm=c.lamb_max_weight_norm)
    elif c.optimizer == "adadelta":
        opt = optax.adadelta(schedule, rho=ADADELTA_RHO, eps=ADADELTA_EPS,
                             weight_decay=c.weight_decay)
    else:
        raise ConfigError(f"train.optimizer={c.optimizer!r} is unknown; choose one of "
                          f"{', '.join(OPTIMIZERS)}")
    parts = []
    if c.grad_clip_value:
        parts.append(optax.clip(c.grad_clip_value))
    if c.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    tx = optax.chain(*parts, opt)
    if c.loss_spike_factor:
        tx = skip_loss_spikes(tx, c.loss_spike_factor)
    return tx
