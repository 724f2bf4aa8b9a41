"""EDSR and EDSR-baseline (Lim et al., CVPRW 2017): plain residual blocks without batch norm."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.layers import Conv, ModuleDef
from msjax.models.sr_blocks import (
    ResBlock,
    Upsampler,
    from_network_range,
    same_conv,
    to_network_range,
)


class EDSR(nn.Module):
    """Head conv -> n_resblocks residual blocks + conv with a global skip -> upsampler -> conv.

    Defaults are EDSR-baseline (16 x 64, res_scale 1); full EDSR is (32, 256, 0.1). Takes [0, 1]
    LR images and returns [0, 1] images ``scale`` times larger.
    """

    scale: int = 2
    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0
    rgb_range: float = 255.0  # the reference trains on 0..255 values; weights depend on that scale
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | None = None, train: bool = False) -> jax.Array:
        del t, train  # no conditioning, no dropout or batch norm
        conv = partial(same_conv, self.conv, dtype=self.dtype)
        head = conv(self.n_feats, name="head")(to_network_range(x, self.rgb_range, self.dtype))
        h = head
        for i in range(self.n_resblocks):
            h = ResBlock(self.n_feats, self.res_scale, self.dtype, self.conv,
                         name=f"resblock_{i}")(h)
        h = head + conv(self.n_feats, name="body_end")(h)
        h = Upsampler(self.n_feats, self.scale, self.dtype, self.conv, name="upsampler")(h)
        y = conv(3, name="tail")(h)
        return from_network_range(y, self.rgb_range, self.dtype)
