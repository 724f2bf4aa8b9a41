"""RCAN (Zhang et al., ECCV 2018): residual-in-residual groups of channel-attention blocks."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.sr_blocks import (
    ResidualGroup,
    Upsampler,
    conv,
    from_network_range,
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

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | None = None, train: bool = False) -> jax.Array:
        del t, train  # no conditioning, no dropout or batch norm
        hidden = max(1, self.n_feats // self.reduction)
        head = conv(self.n_feats, dtype=self.dtype, name="head")(
            to_network_range(x, self.rgb_range, self.dtype)
        )
        h = head
        for i in range(self.n_resgroups):
            h = ResidualGroup(
                self.n_feats, self.n_resblocks, hidden, self.dtype, name=f"group_{i}"
            )(h)
        h = head + conv(self.n_feats, dtype=self.dtype, name="body_end")(h)
        h = Upsampler(self.n_feats, self.scale, self.dtype, name="upsampler")(h)
        y = conv(3, dtype=self.dtype, name="tail")(h)
        return from_network_range(y, self.rgb_range, self.dtype)
