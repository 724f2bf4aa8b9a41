"""MSRN (Li et al., ECCV 2018): multi-scale residual blocks with hierarchical feature fusion.

This is the RGB retrain of the official code (`MSRN/Train/model/msrn.py`), not the Y-channel
paper-era model: it keeps the extra conv after fusion and the 2^n-stage upsampler for x4.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.layers import Conv, ModuleDef
from msjax.models.sr_blocks import Upsampler, from_network_range, same_conv, to_network_range


class MSRB(nn.Module):
    """Two cross-fed scales: 3x3 and 5x5 paths at M, then at 2M channels, fused by a 1x1 to M."""

    features: int
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = partial(same_conv, self.conv, dtype=self.dtype)
        m = self.features
        c1 = jnp.concatenate([nn.relu(conv(m, 3)(x)), nn.relu(conv(m, 5)(x))], axis=-1)
        c2 = jnp.concatenate([nn.relu(conv(2 * m, 3)(c1)), nn.relu(conv(2 * m, 5)(c1))], axis=-1)
        return x + conv(m, 1)(c2)


class MSRN(nn.Module):
    """Head conv -> n_blocks MSRBs -> 1x1 fusion of all block outputs and the head -> conv ->
    upsampler -> conv. No global residual around the body. [0, 1] in, [0, 1] out, ``scale`` x."""

    scale: int = 2
    n_blocks: int = 8
    n_feats: int = 64
    rgb_range: float = 255.0  # the reference trains on 0..255 values; weights depend on that scale
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | None = None, train: bool = False) -> jax.Array:
        del t, train  # no conditioning, no dropout or batch norm
        conv = partial(same_conv, self.conv, dtype=self.dtype)
        head = conv(self.n_feats, name="head")(to_network_range(x, self.rgb_range, self.dtype))
        features, h = [], head
        for i in range(self.n_blocks):
            h = MSRB(self.n_feats, self.dtype, self.conv, name=f"msrb_{i}")(h)
            features.append(h)
        # The official code appends the head output last; the order only matters for weight porting.
        fused = conv(self.n_feats, 1, name="fusion")(jnp.concatenate(features + [head], axis=-1))
        h = conv(self.n_feats, name="fusion_conv")(fused)
        h = Upsampler(self.n_feats, self.scale, self.dtype, self.conv, name="upsampler")(h)
        y = conv(3, name="tail")(h)
        return from_network_range(y, self.rgb_range, self.dtype)
