"""PyTorch re-statements of msjax's MGE models (unet, resnet, srnet) for step-time comparisons.

Written from the layer facts in the reference notes (section 2), with the same layer shapes as the
Flax modules in msjax/models, so both frameworks run the same network; ``PARAMS`` pins the counts
and ``build`` asserts them. Initialisation is PyTorch's default: it does not change step time.
Images are NCHW here (PyTorch's native CPU layout); callers transpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = {"unet": 2_537_187, "resnet": 597_699, "srnet": 69_603}


def sinusoids(t: torch.Tensor, dim: int, max_period: float = 1e4) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    angles = t[:, None].float() * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sample_layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[1:])


# --- resnet: 1x1 open, residual blocks with a time embedding each, 1x1 close ---------------------

class TimeEmbedding(nn.Module):
    """Fixed sinusoids (features/2) next to a learned MLP t -> f/4 -> f/4 -> f/2."""

    def __init__(self, features: int):
        super().__init__()
        q = features // 4
        self.mlp = nn.Sequential(nn.Linear(1, q), nn.ReLU(), nn.Linear(q, q), nn.ReLU(),
                                 nn.Linear(q, features - 2 * q))
        self.fixed = 2 * q

    def forward(self, t):
        return torch.cat([sinusoids(t, self.fixed), self.mlp(t[:, None])], dim=-1)


class ResidualBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.embed = TimeEmbedding(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x, t):
        h = self.conv1(x) + self.embed(t)[:, :, None, None]
        return x + self.conv2(F.leaky_relu(sample_layer_norm(h), 0.2))


class ResNet(nn.Module):
    def __init__(self, hidden: int = 128, nlayers: int = 2, channels: int = 3):
        super().__init__()
        self.open = nn.Conv2d(channels, hidden, 1)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(nlayers))
        self.close = nn.Conv2d(hidden, channels, 1)

    def forward(self, x, t):
        h = self.open(x)
        for block in self.blocks:
            h = block(h, t)
        return self.close(h)


# --- srnet: four conv + layer norm + LeakyReLU layers, 1x1 head ----------------------------------

class SRNet(nn.Module):
    def __init__(self, channels: int = 3):
        super().__init__()
        shapes = ((channels, 64, 5), (64, 64, 3), (64, 32, 3), (32, 32, 3))
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, padding=k // 2) for i, o, k in shapes)
        self.head = nn.Conv2d(32, channels, 1)

    def forward(self, x, t=None):
        h = x
        for conv in self.convs:
            h = F.leaky_relu(sample_layer_norm(conv(h)), 0.2)
        return self.head(h)


# --- unet: trimmed improved-diffusion UNet ---------------------------------------------------------

class UNetResBlock(nn.Module):
    """GN, SiLU, conv; + Linear(SiLU(emb)); GN, SiLU, dropout, conv; identity or 1x1 skip."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int = 16, dropout: float = 0.5):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, residual."""

    def __init__(self, channels: int, groups: int = 16):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv, self.proj = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)

    def forward(self, x):
        n, c, hgt, wid = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)           # N, HW, C
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = F.softmax(q @ k.transpose(1, 2) * c**-0.5, dim=-1) @ v
        return x + self.proj(h).transpose(1, 2).reshape(n, c, hgt, wid)


class UNet(nn.Module):
    def __init__(self, ch: int = 32, mult=(1, 2, 4), num_res_blocks: int = 1, channels: int = 3):
        super().__init__()
        self.ch, emb = ch, 4 * ch
        self.time = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        self.down, skip_ch, c = nn.ModuleList(), [ch], ch
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                self.down.append(UNetResBlock(c, m * ch, emb))
                c = m * ch
                skip_ch.append(c)
            if level != len(mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_ch.append(c)
        self.middle = nn.ModuleList([UNetResBlock(c, c, emb), Attention(c), UNetResBlock(c, c, emb)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(UNetResBlock(c + skip_ch.pop(), m * ch, emb))
                c = m * ch
            if level != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))
        self.norm_out, self.conv_out = nn.GroupNorm(16, c), nn.Conv2d(c, channels, 3, padding=1)

    def forward(self, x, t):
        emb = self.time(sinusoids(t, self.ch))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, UNetResBlock) else layer(h)
            skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, UNetResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


MODELS = {"unet": UNet, "resnet": ResNet, "srnet": SRNet}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str) -> nn.Module:
    """The model ``name`` with its reference parameter count checked."""
    model = MODELS[name]()
    if num_params(model) != PARAMS[name]:
        raise AssertionError(f"torch {name} has {num_params(model):,} parameters, "
                             f"the reference {PARAMS[name]:,}")
    return model
