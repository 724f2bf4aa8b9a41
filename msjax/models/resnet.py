"""The MGE reference's plain residual network (597,699 parameters by default).

1x1 open to ``hidden`` channels, ``nlayers`` residual blocks at full resolution, 1x1 close. Each
block is conv3x3, + time embedding, per-sample layer norm, LeakyReLU(0.2), conv3x3, and updates
x <- x + block(x). With ``time_embed=False, hidden=100, nlayers=9`` it is the SR option
(1,622,503 parameters).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from msjax.models import MODELS
from msjax.models.layers import (
    Conv,
    Dense,
    ModuleDef,
    conv1x1,
    conv3x3,
    per_sample_t,
    sample_layer_norm,
    scaled,
    sinusoidal_embedding,
    torch_default_init,
)


class TimeEmbedding(nn.Module):
    """[N] -> [N, features]: fixed sinusoids of t next to a learned MLP of t.

    For features=128: [sin, cos](t * 10000^(-k/32)), k < 32 (64 dims), then t -> 32 -> 32 -> 64.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t):
        quarter = self.features // 4
        fixed = sinusoidal_embedding(t, 2 * quarter).astype(self.dtype)
        learned = nn.relu(Dense(quarter, dtype=self.dtype)(t[:, None]))
        learned = nn.relu(Dense(quarter, dtype=self.dtype)(learned))
        learned = Dense(self.features - 2 * quarter, dtype=self.dtype)(learned)
        return jnp.concatenate([fixed, learned], axis=-1)


class ResidualBlock(nn.Module):
    features: int
    time_embed: bool
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, t):
        Conv3x3 = conv3x3(self.conv)
        h = Conv3x3(self.features, dtype=self.dtype)(x)
        if self.time_embed:
            h = h + TimeEmbedding(self.features, dtype=self.dtype)(t)[:, None, None, :]
        h = nn.leaky_relu(sample_layer_norm(h), negative_slope=0.2)
        return x + Conv3x3(self.features, dtype=self.dtype)(h)


@MODELS.register("resnet", upsamples=False, minimum={"hidden": 1, "nlayers": 0})
class ResNet(nn.Module):
    hidden: int = 128
    nlayers: int = 2
    time_embed: bool = True
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, t=None, train: bool = False):
        Conv1x1 = conv1x1(self.conv)
        out_channels = x.shape[-1]
        t = per_sample_t(t, x.shape[0])
        h = Conv1x1(self.hidden, dtype=self.dtype)(x)
        for _ in range(self.nlayers):
            h = ResidualBlock(self.hidden, self.time_embed, dtype=self.dtype, conv=self.conv)(h, t)
        # The reference scales the close weights by 1e-3 so the untrained net outputs ~0.
        close_init = scaled(torch_default_init, 1e-3)
        return Conv1x1(out_channels, kernel_init=close_init, dtype=self.dtype)(h)
