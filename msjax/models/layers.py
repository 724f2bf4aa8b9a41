"""Small pieces shared by the MGE model families (UNet, ResNet, SRNet, ResidualCNN).

Initialisers follow the PyTorch defaults of the reference code where they shape early training:
``nn.Conv2d`` / ``nn.Linear`` draw kernels from kaiming-uniform with a=sqrt(5), which is
``variance_scaling(1/3, 'fan_in', 'uniform')``. Biases start at zero (PyTorch draws them from
U(+-1/sqrt(fan_in)); that difference does not matter for training). Parameters are float32 whatever
the compute ``dtype``.
"""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.backend import convolutions as _convolutions

torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
zeros_init = nn.initializers.zeros


def scaled(init: nn.initializers.Initializer, factor: float) -> nn.initializers.Initializer:
    """``init`` multiplied by ``factor``: the reference shrinks some output layers at init."""

    def scaled_init(key, shape, dtype=jnp.float32):
        return factor * init(key, shape, dtype)

    return scaled_init


# Explicit symmetric padding, as in PyTorch: 'SAME' pads (0, 1) for stride 2 on even sizes, which
# would shift the downsampling grid by half a pixel relative to the reference.
# nn.Conv whose convolution msjax.kernels picks (oneDNN's on CPU under runtime.cpu_convolutions=
# auto|onednn, else XLA's). flax marks the conv_general_dilated field deprecated; without it every
# convolution stays on XLA and oneDNN is refused (kernels.require_onednn).
NNConv = partial(nn.Conv, conv_general_dilated=_convolutions.dispatch)
Conv = partial(NNConv, kernel_init=torch_default_init, param_dtype=jnp.float32)
Conv3x3 = partial(Conv, kernel_size=(3, 3), padding=1)
Conv1x1 = partial(Conv, kernel_size=(1, 1), padding=0)
Dense = partial(nn.Dense, kernel_init=torch_default_init, param_dtype=jnp.float32)


def per_sample_t(t, batch: int) -> jax.Array:
    """t as a float32 vector of shape [batch]; None means t = 0.

    A scalar or [batch, 1] t is accepted too: the reference squeezed t to 0-d for a batch of one
    and then crashed.
    """
    if t is None:
        return jnp.zeros((batch,), jnp.float32)
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (batch,))


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 1e4) -> jax.Array:
    """[sin(t w_k), cos(t w_k)] with w_k = max_period^(-k / (dim/2)), k < dim/2: shape [N, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sample_layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Normalises each sample over all of (H, W, C), no affine (``F.layer_norm(x, x.shape[1:])``).

    Statistics are taken in float32: over a whole image, bfloat16 sums lose too many digits.
    """
    return _layer_norm_f32(x.astype(jnp.float32), eps).astype(x.dtype)


# The gradient written out, dx = rstd * (g - mean(g) - y * mean(g * y)) with y the output: two
# reductions over the sample that XLA fuses into one pass. Autodiff of mean / var instead emits
# a chain of separate full-image reductions and broadcasts, which on CPU cost the SRNet / ResNet
# step more than a tenth of its time (bench/step_time.py).
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _layer_norm_f32(x: jax.Array, eps: float) -> jax.Array:
    return _layer_norm_forward(x, eps)[0]


def _layer_norm_forward(x, eps):
    axes = tuple(range(1, x.ndim))
    centred = x - x.mean(axis=axes, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=axes, keepdims=True) + eps)
    y = centred * rstd
    return y, (y, rstd)


def _layer_norm_backward(eps, residuals, g):
    y, rstd = residuals
    axes = tuple(range(1, g.ndim))
    return (rstd * (g - g.mean(axis=axes, keepdims=True)
                    - y * jnp.mean(g * y, axis=axes, keepdims=True)),)


_layer_norm_f32.defvjp(_layer_norm_forward, _layer_norm_backward)
