"""EDSR and EDSR-baseline (Lim et al., CVPRW 2017): plain residual blocks without batch norm."""

from __future__ import annotations

import jax

from msjax.models import MODELS
from msjax.models.sr_blocks import ResBlock, UpsamplingSR


@MODELS.register("edsr", upsamples=True, minimum={"n_resblocks": 1, "n_feats": 1})
class EDSR(UpsamplingSR, kw_only=True):
    """Body: n_resblocks residual blocks + conv, with a global skip from the head.

    Defaults are EDSR-baseline (16 x 64, res_scale 1); full EDSR is (32, 256, 0.1). Takes [0, 1]
    LR images and returns [0, 1] images ``scale`` times larger.
    """

    n_resblocks: int = 16
    res_scale: float = 1.0

    def body(self, head: jax.Array) -> jax.Array:
        h = head
        for i in range(self.n_resblocks):
            h = ResBlock(self.n_feats, self.res_scale, self.dtype, self.conv,
                         name=f"resblock_{i}")(h)
        return head + self.conv_layer(self.n_feats, name="body_end")(h)
