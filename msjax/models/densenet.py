"""DenseNet building blocks of the pyramidal autoencoders (FC-DenseNet / "Tiramisu" style).

A dense layer is pre-activation: BatchNorm -> ReLU -> 3x3 conv -> dropout. A dense block feeds each
layer the concatenation of the block input and every earlier layer's output, and returns only the
new features (L * growth channels); the caller concatenates the input back where it wants it.
Transitions halve or double the resolution and are picked by name, so a model can swap them all at
once, as the reference's transition factories do. BatchNorm follows PyTorch defaults (momentum 0.1,
i.e. flax momentum 0.9; epsilon 1e-5).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from msjax.models.layers import Conv, ModuleDef
from msjax.models.sr_blocks import pixel_shuffle

DOWN_KINDS = ("maxpool", "avgpool", "strided")
UP_KINDS = ("transposed", "transposed_ext", "pixel_shuffle", "resize_conv")

# Padding on the stride-2-dilated input that makes a 3x3 transposed conv map H -> 2H exactly: the
# PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) geometry.
TRANSPOSED_X2_PADDING = ((1, 2), (1, 2))
# PyTorch's padding=1 for a stride-2 3x3 conv; 'SAME' would put the extra pad only at the end.
STRIDED_X2_PADDING = ((1, 1), (1, 1))


def batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


class DenseLayer(nn.Module):
    growth: int
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(batch_norm(train, self.dtype)(x))
        x = self.conv(self.growth, (3, 3), padding="SAME", dtype=self.dtype)(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns their outputs concatenated (num_layers * growth ch)."""

    num_layers: int
    growth: int
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        new_features = []
        for _ in range(self.num_layers):
            layer_input = jnp.concatenate([x, *new_features], axis=-1)
            layer = DenseLayer(self.growth, self.dropout_rate, self.dtype, self.conv)
            new_features.append(layer(layer_input, train))
        return jnp.concatenate(new_features, axis=-1)


class TransitionDown(nn.Module):
    """Halves H and W; keeps the channel count unless ``features`` is given.

    'maxpool' / 'avgpool': 1x1 conv -> BN -> ReLU -> dropout -> 2x2 pool (the reference's final
    model pools by max; its average-pool transition is the alternative). 'strided' (msjax's): a
    learned 3x3 stride-2 conv -> BN -> ReLU -> dropout instead of conv + pool.
    """

    kind: str = "maxpool"
    features: Optional[int] = None
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.kind not in DOWN_KINDS:
            raise ValueError(f"unknown transition down {self.kind!r}; choose one of {DOWN_KINDS}")
        features = self.features or x.shape[-1]
        if self.kind == "strided":
            x = self.conv(features, (3, 3), (2, 2), padding=STRIDED_X2_PADDING, dtype=self.dtype)(x)
        else:
            x = self.conv(features, (1, 1), dtype=self.dtype)(x)
        x = nn.relu(batch_norm(train, self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.kind == "maxpool":
            x = nn.max_pool(x, (2, 2), (2, 2))
        elif self.kind == "avgpool":
            x = nn.avg_pool(x, (2, 2), (2, 2))
        return x


class TransitionUp(nn.Module):
    """Doubles H and W. Output channels: ``features``, or as the kind says.

    The reference's three (its final model uses the first):
    'transposed': 3x3 transposed conv, stride 2, c -> c; no BN, no activation.
    'transposed_ext': BN -> ReLU -> 3x3 transposed conv, stride 2, c -> c // ``reduction`` ->
      dropout.
    'pixel_shuffle': depth-to-space by 2, c -> c / 4 channels, no parameters (c must divide by 4).
    msjax's: 'resize_conv': nearest-neighbour x2 then a 3x3 conv, c -> c, which avoids
    checkerboard artefacts.
    """

    kind: str = "transposed"
    features: Optional[int] = None
    dropout_rate: float = 0.2
    reduction: int = 2  # 'transposed_ext': the reference's factory argument n (it sets no default)
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.kind not in UP_KINDS:
            raise ValueError(f"unknown transition up {self.kind!r}; choose one of {UP_KINDS}")
        channels = x.shape[-1]
        if self.kind == "pixel_shuffle":
            if channels % 4 or self.features not in (None, channels // 4):
                raise ValueError(
                    f"the pixel_shuffle transition up maps c -> c / 4 channels; got c = {channels}"
                    f" and features = {self.features} (use a growth that divides by 4)")
            return pixel_shuffle(x, 2)
        if self.kind == "resize_conv":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            return self.conv(self.features or channels, (3, 3), padding="SAME", dtype=self.dtype)(x)
        up = functools.partial(nn.ConvTranspose, kernel_size=(3, 3), strides=(2, 2),
                               padding=TRANSPOSED_X2_PADDING, dtype=self.dtype)
        if self.kind == "transposed":
            return up(self.features or channels)(x)
        if not 1 <= self.reduction <= channels:
            raise ValueError(
                f"transition up reduction must be in 1..{channels}, got {self.reduction}")
        x = nn.relu(batch_norm(train, self.dtype)(x))
        x = up(self.features or channels // self.reduction)(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)
