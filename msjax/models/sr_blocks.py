"""Building blocks shared by the super-resolution families (EDSR, RCAN, MSRN, Multiblock), and
the frame the upsampling ones share (`UpsamplingSR`).

Layer facts follow the EDSR-PyTorch framework the reference models were written in: every conv has a
bias and 'same' padding, the upsampler is conv + pixel shuffle without activation, and the RGB mean
shift is a fixed constant (not a parameter), applied on the rgb_range = 255 scale.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.layers import Conv, ModuleDef, torch_default_init

Initializer = Callable[..., jax.Array]

# DIV2K training-set RGB mean, as in EDSR/RCAN/MSRN (`MeanShift` with std 1).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def same_conv(
    conv: ModuleDef,
    features: int,
    kernel: int = 3,
    *,
    dtype: Any = jnp.float32,
    kernel_init: Initializer = torch_default_init,
    name: str | None = None,
) -> nn.Module:
    """A k x k ``conv`` with bias and 'same' padding (PyTorch's padding k // 2 for odd k).

    PyTorch's default init (variance 1 / (3 fan_in)) is kept: the reference models were trained
    from it without normalisation layers."""
    return conv(
        features,
        (kernel, kernel),
        padding="SAME",
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        name=name,
    )


def to_network_range(x: jax.Array, rgb_range: float, dtype: Any) -> jax.Array:
    """[0, 1] images -> mean-subtracted values on the rgb_range scale (the reference `sub_mean`)."""
    mean = jnp.asarray(DIV2K_RGB_MEAN, jnp.float32)
    return ((x.astype(jnp.float32) - mean) * rgb_range).astype(dtype)


def from_network_range(y: jax.Array, rgb_range: float, dtype: Any) -> jax.Array:
    """Inverse of `to_network_range` (the reference `add_mean`), back to [0, 1] images."""
    mean = jnp.asarray(DIV2K_RGB_MEAN, jnp.float32)
    return (y.astype(jnp.float32) / rgb_range + mean).astype(dtype)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """NHWC depth-to-space in PyTorch's channel order: channel c * r^2 + i * r + j -> (c, i, j)."""
    n, h, w, c = x.shape
    out_c = c // (factor * factor)
    x = x.reshape(n, h, w, out_c, factor, factor)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # n, h, i, w, j, c
    return x.reshape(n, h * factor, w * factor, out_c)


class Upsampler(nn.Module):
    """Conv + pixel shuffle: x2 and x4 as one or two (conv F -> 4F, shuffle 2) stages, x3 as one
    (conv F -> 9F, shuffle 3) stage, as in the reference `common.Upsampler`."""

    features: int
    scale: int
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = partial(same_conv, self.conv, dtype=self.dtype)
        if self.scale == 3:
            return pixel_shuffle(conv(9 * self.features)(x), 3)
        stages = int(round(math.log2(self.scale))) if self.scale > 1 else 0
        if self.scale < 2 or 2**stages != self.scale:
            raise ValueError(f"scale must be 3 or a power of 2, got {self.scale}")
        for _ in range(stages):
            x = pixel_shuffle(conv(4 * self.features)(x), 2)
        return x


class ResBlock(nn.Module):
    """EDSR residual block: conv -> ReLU -> conv, scaled by res_scale, plus the input; no BN."""

    features: int
    res_scale: float = 1.0
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = partial(same_conv, self.conv, dtype=self.dtype)
        h = nn.relu(conv(self.features)(x))
        h = conv(self.features)(h)
        return x + h * self.res_scale


class ChannelAttention(nn.Module):
    """Squeeze-excitation: global average pool -> dense C -> hidden -> ReLU -> dense hidden -> C ->
    sigmoid, rescaling the channels. A 1x1 conv on the pooled vector is a dense layer with bias."""

    hidden: int
    dtype: Any = jnp.float32
    kernel_init: Initializer = torch_default_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # Pool in float32: a bfloat16 sum over a whole image loses most of its mantissa.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
        options = dict(dtype=self.dtype, param_dtype=jnp.float32, kernel_init=self.kernel_init)
        squeezed = nn.relu(nn.Dense(self.hidden, **options)(pooled))
        return x * nn.sigmoid(nn.Dense(x.shape[-1], **options)(squeezed))


class RCAB(nn.Module):
    """Residual channel-attention block: conv -> ReLU -> conv -> channel attention, + the input."""

    features: int
    attention_hidden: int
    dtype: Any = jnp.float32
    kernel_init: Initializer = torch_default_init
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = partial(same_conv, self.conv, dtype=self.dtype, kernel_init=self.kernel_init)
        h = conv(self.features)(x)
        h = conv(self.features)(nn.relu(h))
        h = ChannelAttention(self.attention_hidden, self.dtype, self.kernel_init)(h)
        return x + h


class ResidualGroup(nn.Module):
    """RCAN residual group: n RCABs -> conv, plus the group input (short skip)."""

    features: int
    n_resblocks: int
    attention_hidden: int
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for _ in range(self.n_resblocks):
            h = RCAB(self.features, self.attention_hidden, self.dtype, conv=self.conv)(h)
        return x + same_conv(self.conv, self.features, dtype=self.dtype)(h)


class UpsamplingSR(nn.Module, kw_only=True):
    """What EDSR, RCAN and MSRN share: [0, 1] LR images -> mean shift onto the rgb_range scale ->
    head conv -> ``body`` -> upsampler -> conv to RGB -> back to [0, 1] images ``scale`` times
    larger. A family subclasses it and writes only ``body`` (and its own fields).

    ``body`` runs inside ``__call__``'s compact scope, so the layers it makes are direct children
    of the model (``head``, ``resblock_0``, ..., ``upsampler``, ``tail``), the paths checkpoints
    store. Fields are keyword-only: each family adds its own after these, so positions would not
    say which field a value sets.
    """

    scale: int = 2
    n_feats: int = 64
    rgb_range: float = 255.0  # the reference trains on 0..255 values; weights depend on that scale
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    def body(self, head: jax.Array) -> jax.Array:
        """Head features -> the upsampler's input, n_feats channels at the LR size."""
        raise NotImplementedError(f"{type(self).__name__} defines no body")

    @nn.nowrap
    def conv_layer(self, features: int, kernel: int = 3, name: str | None = None) -> nn.Module:
        """The model's k x k conv (its ``conv``, compute ``dtype``), for ``body``."""
        return same_conv(self.conv, features, kernel, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | None = None, train: bool = False) -> jax.Array:
        del t, train  # no conditioning, no dropout or batch norm
        head = self.conv_layer(self.n_feats, name="head")(
            to_network_range(x, self.rgb_range, self.dtype))
        h = self.body(head)
        h = Upsampler(self.n_feats, self.scale, self.dtype, self.conv, name="upsampler")(h)
        y = self.conv_layer(3, name="tail")(h)
        return from_network_range(y, self.rgb_range, self.dtype)
