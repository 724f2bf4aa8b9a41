"""RCAN (Zhang et al., ECCV 2018): residual-in-residual groups of channel-attention blocks."""

from __future__ import annotations

import jax

from msjax.models import MODELS
from msjax.models.sr_blocks import ResidualGroup, UpsamplingSR


@MODELS.register("rcan", upsamples=True,
                 minimum={"n_resgroups": 1, "n_resblocks": 1, "reduction": 1, "n_feats": 1})
class RCAN(UpsamplingSR, kw_only=True):
    """Body: n_resgroups residual groups + conv, with a long skip from the head.

    Each group is n_resblocks RCABs whose channel attention squeezes n_feats to n_feats // reduction
    (64 -> 4 at full size). Takes [0, 1] LR images and returns [0, 1] images ``scale`` times larger.
    """

    n_resgroups: int = 10
    n_resblocks: int = 20
    reduction: int = 16

    def body(self, head: jax.Array) -> jax.Array:
        hidden = max(1, self.n_feats // self.reduction)
        h = head
        for i in range(self.n_resgroups):
            h = ResidualGroup(
                self.n_feats, self.n_resblocks, hidden, self.dtype, self.conv, name=f"group_{i}"
            )(h)
        return head + self.conv_layer(self.n_feats, name="body_end")(h)
