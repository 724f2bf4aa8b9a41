"""DenseNet building blocks of the pyramidal autoencoders (FC-DenseNet / "Tiramisu" style).

A dense layer is pre-activation: BatchNorm -> ReLU -> 3x3 conv -> dropout. A dense block feeds each
layer the concatenation of the block input and every earlier layer's output, and returns only the
new features (L * growth channels); the caller concatenates the input back where it wants it.
Transitions halve or double the resolution and are picked by name, so a model can swap them all at
once. BatchNorm follows PyTorch defaults (momentum 0.1, i.e. flax momentum 0.9; epsilon 1e-5).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from msjax.models.layers import NNConv

DOWN_KINDS = ("maxpool", "avgpool", "strided")
UP_KINDS = ("transposed", "resize_conv")

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

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(batch_norm(train, self.dtype)(x))
        x = NNConv(self.growth, (3, 3), padding="SAME", dtype=self.dtype)(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns their outputs concatenated (num_layers * growth ch)."""

    num_layers: int
    growth: int
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        new_features = []
        for _ in range(self.num_layers):
            layer_input = jnp.concatenate([x, *new_features], axis=-1)
            layer = DenseLayer(self.growth, self.dropout_rate, self.dtype)
            new_features.append(layer(layer_input, train))
        return jnp.concatenate(new_features, axis=-1)


class TransitionDown(nn.Module):
    """Halves H and W; keeps the channel count unless ``features`` is given.

    'maxpool' / 'avgpool': 1x1 conv -> BN -> ReLU -> dropout -> 2x2 pool (the reference's choices).
    'strided': a learned 3x3 stride-2 conv -> BN -> ReLU -> dropout instead of conv + pool.
    """

    kind: str = "maxpool"
    features: Optional[int] = None
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.kind not in DOWN_KINDS:
            raise ValueError(f"unknown transition down {self.kind!r}; choose one of {DOWN_KINDS}")
        features = self.features or x.shape[-1]
        if self.kind == "strided":
            x = NNConv(features, (3, 3), (2, 2), padding=STRIDED_X2_PADDING, dtype=self.dtype)(x)
        else:
            x = NNConv(features, (1, 1), dtype=self.dtype)(x)
        x = nn.relu(batch_norm(train, self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.kind == "maxpool":
            x = nn.max_pool(x, (2, 2), (2, 2))
        elif self.kind == "avgpool":
            x = nn.avg_pool(x, (2, 2), (2, 2))
        return x


class TransitionUp(nn.Module):
    """Doubles H and W; keeps the channel count unless ``features`` is given. No BN, no activation.

    'transposed': 3x3 transposed conv, stride 2 (the reference's choice).
    'resize_conv': nearest-neighbour x2 then a 3x3 conv, which avoids checkerboard artefacts.
    """

    kind: str = "transposed"
    features: Optional[int] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.kind not in UP_KINDS:
            raise ValueError(f"unknown transition up {self.kind!r}; choose one of {UP_KINDS}")
        features = self.features or x.shape[-1]
        if self.kind == "transposed":
            return nn.ConvTranspose(
                features, (3, 3), (2, 2), padding=TRANSPOSED_X2_PADDING, dtype=self.dtype
            )(x)
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return NNConv(features, (3, 3), padding="SAME", dtype=self.dtype)(x)
