"""Multiblock (LEEPEIQIN/Multiblock): a chain of same-resolution restoration blocks.

Each block N_i maps an image to an image of the same size: the first sees the LR image already at
HR size (RealSR "LR2" pairs, or a bicubic upsample), later ones see the previous block's output.
There is no upsampler. Phased training trains block_i with blocks < i frozen, then fine-tunes the
whole chain.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models import MODELS
from msjax.models.layers import Conv, ModuleDef
from msjax.models.sr_blocks import RCAB, same_conv

# The reference initialises every conv and attention weight with init.orthogonal_ (gain 1).
orthogonal_init = nn.initializers.orthogonal()


class MultiblockBlock(nn.Module):
    """Block N_i: conv 3 -> 64, 16 RCABs (attention squeeze 64 -> 16), conv 64 -> 64, conv 64 -> 3,
    plus the input image; with ``clamp`` the output is clipped to [0, 1] (the N_i^+ variant)."""

    n_feats: int = 64
    n_rcab: int = 16
    attention_hidden: int = 16  # reduction 4, not RCAN's 16
    clamp: bool = False
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array | None = None, train: bool = False) -> jax.Array:
        del t, train  # no conditioning, no dropout or batch norm
        conv = partial(same_conv, self.conv, dtype=self.dtype, kernel_init=orthogonal_init)
        h = conv(self.n_feats, name="head")(x.astype(self.dtype))
        for i in range(self.n_rcab):
            h = RCAB(self.n_feats, self.attention_hidden, self.dtype, orthogonal_init, self.conv,
                     name=f"rcab_{i}")(h)
        # No feature-level long skip here (unlike RCAN): only the image-level residual below.
        h = conv(self.n_feats, name="body_end")(h)
        y = conv(3, name="to_rgb")(h)
        y = y + x.astype(self.dtype)
        # clip has zero gradient where it clips, like the reference's masked in-place assignment.
        return jnp.clip(y, 0.0, 1.0) if self.clamp else y


@MODELS.register("multiblock", upsamples=False,
                 minimum={"n_blocks": 1, "n_feats": 1, "n_rcab": 1, "attention_hidden": 1})
class MultiblockChain(nn.Module):
    """``n_blocks`` blocks applied in sequence, as submodules block_0, block_1, ...

    ``num_active`` runs only the first k blocks (their output is the chain's output); blocks beyond
    it get no gradient. ``num_frozen`` stops gradients through the first j blocks, so training
    block j on the fly (``num_active=j + 1, num_frozen=j``) neither updates nor backpropagates into
    earlier blocks. Initialise with the defaults so that every block's parameters exist.

    ``frozen`` is ``num_frozen``'s default and ``clamp_last`` the last block's clamp when it
    differs from the others' (None: the same): phased training sets both from the config, since
    the loop calls the model without extra arguments (warm phase of N_i after N_1+..N_{i-1}+ is
    ``clamp=True, clamp_last=False, frozen=i-1``).
    """

    n_blocks: int = 3
    n_feats: int = 64
    n_rcab: int = 16
    attention_hidden: int = 16
    clamp: bool = False
    clamp_last: bool | None = None
    frozen: int = 0
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array | None = None,
        train: bool = False,
        num_active: int | None = None,
        num_frozen: int | None = None,
    ) -> jax.Array:
        active = self.n_blocks if num_active is None else num_active
        num_frozen = self.frozen if num_frozen is None else num_frozen
        last_clamp = self.clamp if self.clamp_last is None else self.clamp_last
        if not 1 <= active <= self.n_blocks:
            raise ValueError(f"num_active must be in 1..{self.n_blocks}, got {num_active}")
        blocks = [
            MultiblockBlock(
                self.n_feats,
                self.n_rcab,
                self.attention_hidden,
                last_clamp if i == self.n_blocks - 1 else self.clamp,
                self.dtype,
                self.conv,
                name=f"block_{i}",
            )
            for i in range(self.n_blocks)
        ]
        y = x
        for i in range(active):
            y = blocks[i](y, t, train)
            if i < num_frozen:
                y = jax.lax.stop_gradient(y)
        return y
