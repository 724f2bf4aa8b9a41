"""The trimmed improved-diffusion UNet of the MGE reference (2,537,187 parameters by default).

Encoder levels of ResBlocks with strided-conv downsampling, a middle ResBlock / self-attention /
ResBlock, a decoder of ``num_res_blocks + 1`` ResBlocks per level fed by skip concatenation, and a
zero-initialised head, so the untrained network outputs exactly zero. Every ResBlock is conditioned
on the time embedding. H and W must be divisible by 2^(len(channel_mult) - 1).
"""

from __future__ import annotations

from functools import partial
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
    sinusoidal_embedding,
    zeros_init,
)

# PyTorch's GroupNorm epsilon; flax's default is 1e-6. Flax reduces the statistics in float32.
GroupNorm = partial(nn.GroupNorm, epsilon=1e-5, param_dtype=jnp.float32)


class ResBlock(nn.Module):
    """GN, SiLU, conv; + Dense(SiLU(emb)); GN, SiLU, dropout, zero conv; identity or 1x1 skip."""

    out_channels: int
    dropout: float
    groups: int
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, emb, train: bool):
        Conv3x3, Conv1x1 = conv3x3(self.conv), conv1x1(self.conv)
        h = nn.silu(GroupNorm(self.groups, dtype=self.dtype)(x))
        h = Conv3x3(self.out_channels, dtype=self.dtype)(h)
        h = h + Dense(self.out_channels, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(GroupNorm(self.groups, dtype=self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        # Zero-initialised so every block starts as its skip path.
        h = Conv3x3(self.out_channels, kernel_init=zeros_init, dtype=self.dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = Conv1x1(self.out_channels, dtype=self.dtype)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual, zero-initialised projection."""

    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, height, width, channels = x.shape
        h = GroupNorm(self.groups, dtype=self.dtype)(x).reshape(n, height * width, channels)
        q, k, v = jnp.split(Dense(3 * channels, dtype=self.dtype)(h), 3, axis=-1)
        # Scaling q and k by channels^-1/4 each (rather than the logits by ^-1/2) keeps bfloat16
        # products in range.
        scale = channels**-0.25
        logits = jnp.einsum("nqc,nkc->nqk", q * scale, k * scale)
        weights = nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("nqk,nkc->nqc", weights, v)
        h = Dense(channels, kernel_init=zeros_init, dtype=self.dtype)(h)
        return x + h.reshape(n, height, width, channels)


@MODELS.register("unet", upsamples=False,
                 minimum={"model_channels": 1, "num_res_blocks": 1, "groups": 1})
class UNet(nn.Module):
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    dropout: float = 0.5
    groups: int = 16
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @property
    def size_multiple(self) -> int:
        """Input sides must divide by this (one stride-2 conv per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)

    @nn.compact
    def __call__(self, x, t=None, train: bool = False):
        out_channels = x.shape[-1]
        ch = self.model_channels
        Conv3x3 = conv3x3(self.conv)
        block = partial(ResBlock, dropout=self.dropout, groups=self.groups, dtype=self.dtype,
                        conv=self.conv)

        t = per_sample_t(t, x.shape[0])
        emb = Dense(4 * ch, dtype=self.dtype)(sinusoidal_embedding(t, ch))
        emb = Dense(4 * ch, dtype=self.dtype)(nn.silu(emb))

        h = Conv3x3(ch, dtype=self.dtype)(x)
        skips = [h]
        last_level = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = block(mult * ch)(h, emb, train)
                skips.append(h)
            if level != last_level:
                h = Conv3x3(h.shape[-1], strides=2, dtype=self.dtype)(h)
                skips.append(h)

        h = block(h.shape[-1])(h, emb, train)
        h = AttentionBlock(self.groups, dtype=self.dtype)(h)
        h = block(h.shape[-1])(h, emb, train)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(mult * ch)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
                h = Conv3x3(h.shape[-1], dtype=self.dtype)(h)

        h = nn.silu(GroupNorm(self.groups, dtype=self.dtype)(h))
        return Conv3x3(out_channels, kernel_init=zeros_init, dtype=self.dtype)(h)
