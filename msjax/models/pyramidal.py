"""Pyramidal autoencoders for image restoration (the abel-bernabeu/autoencoder experiments).

Two families, picked by ``variant``:

- Plain conv encoder-decoders (``basic21`` .. ``pyramidal52``; digits = levels, convs per level).
  Encoder: 3x3 conv + ReLU, then per level a stride-2 conv -> BN -> ReLU (plus a stride-1 one
  for "x2"). Decoder mirrors it with transposed convs -> BN -> ReLU. ``basic*`` have no skips,
  ``pyramidal5x`` add each encoder level to the decoder (y_l = x_l + up(y_{l+1})),
  ``pyramidal51cat`` concatenates instead. Channels per level come from ``level_channels`` (the
  reference reads them from a provider object that is not in the repository; ours is a choice).
- DenseNet pyramids (``pyramidal44``, ``pyramidal457``, ``pyramidal103``): input conv, then per
  level a dense block whose new features are concatenated to its input (the skip s_l) and a
  transition down; a bottleneck dense block; per level a transition up whose output is
  concatenated with s_l and fed to a dense block. ``pyramidal103`` with (features, growth) =
  (48, 16) is the reference's final 103-layer model (blocks 4, 5, 7, 10, 12 | 15 | 12, 10, 7, 5, 5;
  the last decoder block has 5 layers in the reference code although its README figure says 4).
  Their transitions are chosen as the reference's factories choose them: ``down`` = 'maxpool'
  (its final model) or 'avgpool', ``up`` = 'transposed' (its final model), 'transposed_ext' (BN,
  ReLU, transposed conv to c // ``up_reduction``, dropout) or 'pixel_shuffle' (c -> c / 4, no
  parameters); msjax adds 'strided' and 'resize_conv' (densenet.py). A transition up's output
  width sets the decoder blocks' input width, hence the parameter count.

Every variant ends in a 3x3 conv to the input's channel count, then tanh (``output='tanh'``, data
in [-1, 1] as in the reference) or nothing (``output='linear'``, data in [0, 1]). msjax data stay
in [0, 1]: train a tanh model with ``task.model_range='signed'``, which feeds it 2y - 1 and reads
its output o as (o + 1) / 2 (msjax/tasks.py). H and W must be multiples of
``model.downsampling``: 4 for the two-level conv variants, 2 for pyramidal44, 4 for pyramidal457
and 32 for the five-level ones (so 64 and 96 work for all).

BatchNorm under MGE: in training every evaluation normalises with its own batch's statistics, so
each level sees its own grid's statistics; the running averages follow the finest evaluation only
(msjax/multiscale.py), and evaluation uses them.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from msjax.models import MODELS
from msjax.models.densenet import (
    DOWN_KINDS,
    STRIDED_X2_PADDING,
    TRANSPOSED_X2_PADDING,
    UP_KINDS,
    DenseBlock,
    TransitionDown,
    TransitionUp,
    batch_norm,
)
from msjax.models.layers import Conv, ModuleDef

# variant -> (levels, convs per level, skip: None | 'add' | 'cat')
CONV_VARIANTS = {
    "basic21": (2, 1, None),
    "basic22": (2, 2, None),
    "basic51": (5, 1, None),
    "basic52": (5, 2, None),
    "pyramidal51": (5, 1, "add"),
    "pyramidal51cat": (5, 1, "cat"),
    "pyramidal52": (5, 2, "add"),
}
# variant -> (encoder dense-block sizes, bottleneck size, decoder sizes deepest level first)
DENSE_VARIANTS = {
    "pyramidal44": ((4,), 4, (4,)),
    "pyramidal457": ((4, 5), 7, (5, 4)),
    "pyramidal103": ((4, 5, 7, 10, 12), 15, (12, 10, 7, 5, 5)),
}
VARIANTS = tuple(CONV_VARIANTS) + tuple(DENSE_VARIANTS)
OUTPUTS = ("tanh", "linear")


class ConvBNReLU(nn.Module):
    """Conv (stride 1 or 2 down) or transposed conv (stride 2 up) -> BN -> ReLU."""

    features: int
    resample: Optional[str] = None  # None, 'down' or 'up'
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.resample == "up":
            conv = nn.ConvTranspose(
                self.features, (3, 3), (2, 2), padding=TRANSPOSED_X2_PADDING, dtype=self.dtype
            )
        elif self.resample == "down":
            conv = self.conv(
                self.features, (3, 3), (2, 2), padding=STRIDED_X2_PADDING, dtype=self.dtype
            )
        else:
            conv = self.conv(self.features, (3, 3), padding="SAME", dtype=self.dtype)
        return nn.relu(batch_norm(train, self.dtype)(conv(x)))


@MODELS.register("pyramidal", upsamples=False,
                 minimum={"features": 1, "growth": 1, "up_reduction": 1})
class PyramidalAutoencoder(nn.Module):
    variant: str = "pyramidal103"
    features: int = 48  # dense variants: width of the input conv (the reference's num_channels)
    growth: int = 16  # dense variants: channels each dense layer adds (k)
    level_channels: Sequence[int] = (32, 64, 128, 256, 256, 256)  # conv variants: level 0..L
    down: str = "maxpool"  # dense variants' transition down (densenet.DOWN_KINDS)
    up: str = "transposed"  # dense variants' transition up (densenet.UP_KINDS)
    up_reduction: int = 2  # up='transposed_ext' maps c -> c // this (the reference's n; no default)
    output: str = "tanh"
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @property
    def size_multiple(self) -> int:
        """What H and W must divide by; checks the fields first (config validation reads this)."""
        self._check_fields()
        return self.downsampling

    @property
    def downsampling(self) -> int:
        if self.variant in CONV_VARIANTS:
            return 2 ** CONV_VARIANTS[self.variant][0]
        if self.variant in DENSE_VARIANTS:
            return 2 ** len(DENSE_VARIANTS[self.variant][0])
        raise ValueError(f"unknown pyramidal variant {self.variant!r}; choose one of {VARIANTS}")

    @nn.compact
    def __call__(self, x, t=None, train: bool = False):
        del t  # not time-conditioned
        self._check_fields()
        factor = self.downsampling
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"{self.variant} needs H and W divisible by {factor}, got {x.shape[1]}x{x.shape[2]}"
            )
        out_channels = x.shape[-1]
        x = nn.relu(self.conv(self._input_width(), (3, 3), padding="SAME", dtype=self.dtype)(x))
        if self.variant in CONV_VARIANTS:
            y = self._conv_pyramid(x, train)
        else:
            y = self._dense_pyramid(x, train)
        y = self.conv(out_channels, (3, 3), padding="SAME", dtype=self.dtype)(y)
        return jnp.tanh(y) if self.output == "tanh" else y

    def _check_fields(self) -> None:
        for field, value, choices in (("output", self.output, OUTPUTS),
                                      ("down", self.down, DOWN_KINDS), ("up", self.up, UP_KINDS)):
            if value not in choices:
                raise ValueError(f"unknown {field} {value!r}; choose one of {choices}")
        if self.up_reduction < 1:
            raise ValueError(f"up_reduction must be at least 1, got {self.up_reduction}")

    def _input_width(self) -> int:
        if self.variant in DENSE_VARIANTS:
            return self.features
        levels = CONV_VARIANTS[self.variant][0]
        if len(self.level_channels) < levels + 1:
            raise ValueError(f"{self.variant} needs {levels + 1} level_channels")
        return self.level_channels[0]

    def _conv_pyramid(self, x, train):
        levels, convs, skip = CONV_VARIANTS[self.variant]
        ch = self.level_channels
        block = functools.partial(ConvBNReLU, dtype=self.dtype, conv=self.conv)
        if convs == 2:
            x = block(ch[0])(x, train)
        encoded = [x]
        for level in range(1, levels + 1):
            x = block(ch[level], "down")(x, train)
            if convs == 2:
                x = block(ch[level])(x, train)
            encoded.append(x)
        y = encoded[-1]
        for level in range(levels, 0, -1):
            if convs == 2:
                y = block(ch[level])(y, train)
            y = block(ch[level - 1], "up")(y, train)
            if skip == "add":
                y = encoded[level - 1] + y
            elif skip == "cat":
                y = jnp.concatenate([encoded[level - 1], y], axis=-1)
        if convs == 2:
            y = block(ch[0])(y, train)
        return y

    def _dense_pyramid(self, x, train):
        encoder_sizes, bottleneck_size, decoder_sizes = DENSE_VARIANTS[self.variant]
        dense = functools.partial(DenseBlock, growth=self.growth, dropout_rate=self.dropout_rate,
                                  dtype=self.dtype, conv=self.conv)
        down = functools.partial(TransitionDown, self.down, dropout_rate=self.dropout_rate,
                                 dtype=self.dtype, conv=self.conv)
        up = functools.partial(TransitionUp, self.up, dropout_rate=self.dropout_rate,
                               reduction=self.up_reduction, dtype=self.dtype, conv=self.conv)
        skips = []
        for n in encoder_sizes:
            x = jnp.concatenate([x, dense(n)(x, train)], axis=-1)
            skips.append(x)
            x = down()(x, train)
        y = dense(bottleneck_size)(x, train)
        for n, skip in zip(decoder_sizes, reversed(skips)):
            y = up()(y, train)
            y = dense(n)(jnp.concatenate([skip, y], axis=-1), train)
        return y
