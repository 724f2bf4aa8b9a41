"""The MGE reference's SR backbone ("SRParaConvNet", ESPCN-like; 69,603 parameters).

It has no upsampling and no time input: the SR task upsamples the LR image bilinearly, feeds it
here, and adds it back (``out = up + net(up)``), so this module returns the residual only.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from msjax.models import MODELS
from msjax.models.layers import Conv, ModuleDef, conv1x1, sample_layer_norm, torch_conv

RELU_GAIN = math.sqrt(2.0)


@MODELS.register("srnet", upsamples=False)
class SRNet(nn.Module):
    dtype: Any = jnp.float32
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, t=None, train: bool = False):
        del t, train  # unconditioned, no dropout
        out_channels = x.shape[-1]
        # (features, kernel size, orthogonal gain): ReLU gain for the first three, 1 for the fourth.
        layers = ((64, 5, RELU_GAIN), (64, 3, RELU_GAIN), (32, 3, RELU_GAIN), (32, 3, 1.0))
        h = x
        for features, size, gain in layers:
            h = torch_conv(self.conv)(
                features,
                kernel_size=(size, size),
                padding=size // 2,
                kernel_init=nn.initializers.orthogonal(gain),
                dtype=self.dtype,
            )(h)
            h = nn.leaky_relu(sample_layer_norm(h), negative_slope=0.2)
        # Tiny output weights: the residual starts near zero, so the net starts near bilinear.
        head_init = nn.initializers.normal(stddev=1e-3)
        return conv1x1(self.conv)(out_channels, kernel_init=head_init, dtype=self.dtype)(h)
