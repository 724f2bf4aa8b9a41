"""Small pieces shared by the model families: the convolution module, initialisers, time
embeddings and the per-sample layer norm.

Every regular convolution of every family is a ``Conv`` built through the family's ``conv``
field (``ModuleDef``, default ``Conv``), as flax's ResNet example takes ``conv: ModuleDef``: a
backend hands a model ``partial(Conv, convolution=...)`` to run its convolutions on other kernels,
and the models import nothing platform-specific. Transposed convolutions stay flax's.

Initialisers follow the PyTorch defaults of the reference code where they shape early training:
``nn.Conv2d`` / ``nn.Linear`` draw kernels from kaiming-uniform with a=sqrt(5), which is
``variance_scaling(1/3, 'fan_in', 'uniform')``. Biases start at zero (PyTorch draws them from
U(+-1/sqrt(fan_in)); that difference does not matter for training). Parameters are float32 whatever
the compute ``dtype``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

# A Module class, or a functools.partial of one, that a model instantiates (flax ResNet's alias).
ModuleDef = Any
Padding = Union[str, int, Sequence[Union[int, tuple[int, int]]]]

torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
zeros_init = nn.initializers.zeros


def scaled(init: nn.initializers.Initializer, factor: float) -> nn.initializers.Initializer:
    """``init`` multiplied by ``factor``: the reference shrinks some output layers at init."""

    def scaled_init(key, shape, dtype=jnp.float32):
        return factor * init(key, shape, dtype)

    return scaled_init


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Conv(nn.Module):
    """2-D NHWC convolution with the parameters and dtype rule of ``nn.Conv``.

    ``kernel`` (H, W, in, out) and ``bias`` (out) are named and shaped as nn.Conv's, so parameter
    trees and checkpoints are the same; inputs, kernel and bias are promoted to ``dtype`` (None:
    their common type) before the convolution, as nn.Conv does. ``kernel_size``, ``strides`` and
    ``kernel_dilation`` are pairs or one int for both axes. ``padding`` is 'SAME', 'VALID', an int,
    one int per spatial axis (both sides), or (lo, hi) pairs; it reaches ``convolution`` as
    explicit pairs. ``convolution`` has ``lax.conv_general_dilated``'s signature and is the only
    thing a backend needs to replace.
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    convolution: Callable[..., jax.Array] = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Conv takes NHWC inputs, got shape {x.shape}")
        kernel_size, strides = _pair(self.kernel_size), _pair(self.strides)
        dilation = _pair(self.kernel_dilation)
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = self._explicit_padding(x.shape[1:3], kernel_size, strides, dilation)
        y = self.convolution(x, kernel, strides, padding, lhs_dilation=None, rhs_dilation=dilation,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=1,
                             precision=None, preferred_element_type=None)
        return y if bias is None else y + bias.reshape(1, 1, 1, -1)

    def _explicit_padding(self, spatial, kernel_size, strides, dilation):
        padding = self.padding
        if isinstance(padding, str):
            if padding not in ("SAME", "VALID"):
                raise ValueError(
                    f"Conv padding must be 'SAME', 'VALID' or explicit, got {padding!r}")
            dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
            return tuple(lax.padtype_to_pads(spatial, dilated, strides, padding))
        if isinstance(padding, int):
            return ((padding, padding),) * 2
        return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def torch_conv(conv: ModuleDef = Conv, **fields) -> ModuleDef:
    """``conv`` with PyTorch's default kernel init, float32 params and ``fields`` preset."""
    return partial(conv, kernel_init=torch_default_init, param_dtype=jnp.float32, **fields)


# Explicit symmetric padding, as in PyTorch: 'SAME' pads (0, 1) for stride 2 on even sizes, which
# would shift the downsampling grid by half a pixel relative to the reference.
def conv3x3(conv: ModuleDef = Conv) -> ModuleDef:
    return torch_conv(conv, kernel_size=(3, 3), padding=1)


def conv1x1(conv: ModuleDef = Conv) -> ModuleDef:
    return torch_conv(conv, kernel_size=(1, 1), padding=0)


TorchConv = torch_conv()
Conv3x3 = conv3x3()
Conv1x1 = conv1x1()
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
