"""A small, fast restoration CNN for CPU quickstarts and tests (64,995 parameters by default)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from msjax.models import MODELS
from msjax.models.layers import (
    Conv,
    Dense,
    ModuleDef,
    conv3x3,
    per_sample_t,
    sinusoidal_embedding,
    zeros_init,
)

# Sinusoid size for the optional time input; the learned Dense maps it to one offset per channel.
TIME_FEATURES = 16


@MODELS.register("residual_cnn", upsamples=False, minimum={"features": 1, "depth": 2})
class ResidualCNN(nn.Module):
    """``depth`` conv3x3 layers with ReLU between; the last maps back to the input's channels.

    The last layer starts at zero, so with the training code's ``x + model(x)`` the untrained
    model is the identity. With ``time_embed`` a learned per-channel function of t is added after
    the first conv; otherwise t is ignored.
    """

    features: int = 48
    depth: int = 5
    time_embed: bool = False
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, t=None, train: bool = False):
        Conv3x3 = conv3x3(self.conv)
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2, got {self.depth}")
        h = Conv3x3(self.features, dtype=self.dtype)(x)
        if self.time_embed:
            t = per_sample_t(t, x.shape[0])
            offset = Dense(self.features, dtype=self.dtype)(sinusoidal_embedding(t, TIME_FEATURES))
            h = h + offset[:, None, None, :]
        h = nn.relu(h)
        for _ in range(self.depth - 2):
            h = nn.relu(Conv3x3(self.features, dtype=self.dtype)(h))
        return Conv3x3(x.shape[-1], kernel_init=zeros_init, dtype=self.dtype)(h)
