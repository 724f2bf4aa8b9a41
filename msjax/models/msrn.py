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

from msjax.models import MODELS
from msjax.models.layers import Conv, ModuleDef
from msjax.models.sr_blocks import UpsamplingSR, same_conv


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


@MODELS.register("msrn", upsamples=True, minimum={"n_blocks": 1, "n_feats": 1})
class MSRN(UpsamplingSR, kw_only=True):
    """Body: n_blocks MSRBs -> 1x1 fusion of all block outputs and the head -> conv. No global
    residual around the body. [0, 1] in, [0, 1] out, ``scale`` times larger."""

    n_blocks: int = 8

    def body(self, head: jax.Array) -> jax.Array:
        features, h = [], head
        for i in range(self.n_blocks):
            h = MSRB(self.n_feats, self.dtype, self.conv, name=f"msrb_{i}")(h)
            features.append(h)
        # The official code appends the head output last; the order only matters for weight porting.
        fused = self.conv_layer(self.n_feats, 1, name="fusion")(
            jnp.concatenate(features + [head], axis=-1))
        return self.conv_layer(self.n_feats, name="fusion_conv")(fused)
