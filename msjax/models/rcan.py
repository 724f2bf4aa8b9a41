"""RCAN (Zhang et al., ECCV 2018): residual-in-residual groups of channel-attention blocks."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.layers import Conv, ModuleDef
from msjax.models.sr_blocks import (
    ResidualGroup,
    Upsampler,
    from_network_range,
    same_conv,
    to_network_range,
)


class RCAN(nn.Module):
    """Head conv -> n_resgroups residual groups + conv with a long skip -> upsampler -> conv.

    Each group is n_resblocks RCABs whose channel attention squeezes n_feats to n_feats // reduction
    (64 -> 4 at full size). Takes [0, 1] LR images and returns [0, 1] images ``scale`` times larger.
    """

    scale: int = 2
    n_resgroups: int = 10
    n_resblocks: int = 20
    n_feats: int = 64
    reduction: int = 16
    rgb_range: float = 255.0  # the reference trains on 0..255 values; weights depend on that scale
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | None = None, train: bool = False) -> jax.Array:
        del t, train  # no conditioning, no dropout or batch norm
        conv = partial(same_conv, self.conv, dtype=self.dtype)
        hidden = max(1, self.n_feats // self.reduction)
        head = conv(self.n_feats, name="head")(to_network_range(x, self.rgb_range, self.dtype))
        h = head
        for i in range(self.n_resgroups):
            h = ResidualGroup(
                self.n_feats, self.n_resblocks, hidden, self.dtype, self.conv, name=f"group_{i}"
            )(h)
        h = head + conv(self.n_feats, name="body_end")(h)
        h = Upsampler(self.n_feats, self.scale, self.dtype, self.conv, name="upsampler")(h)
        y = conv(3, name="tail")(h)
        return from_network_range(y, self.rgb_range, self.dtype)
