"""Where each tensor of a PyTorch state dict goes in an msjax model, and how it is laid out.

``entries(model_name, model, scheme)`` lists, for the model as configured, every msjax parameter
with the PyTorch key it comes from and its ``Kind`` (the layout change), plus the fixed tensors a
file carries that msjax keeps as constants (EDSR's mean-shift layers), checked against them.

The key names are the published code's:

- ``official``: the MGE reference, ``multiscale/models.py`` of ahxmeds/multiscale-gradient-
  estimation. ``UNetModel`` (improved-diffusion, trimmed): ``time_embed.{0,2}``,
  ``input_blocks.0.0`` (conv in), ``input_blocks.K.0`` ResBlocks (``in_layers.{0: GroupNorm,
  2: conv}``, ``emb_layers.1``, ``out_layers.{0: GroupNorm, 3: conv}``, ``skip_connection``
  where the channels change) and ``input_blocks.K.0.op`` downsampling convs,
  ``middle_block.{0, 2}`` ResBlocks around ``middle_block.1`` attention (``norm``, ``qkv`` and
  ``proj_out`` as Conv1d k=1), ``output_blocks.K.0`` ResBlocks with ``output_blocks.K.1.conv``
  the upsampling conv after the last block of a level, ``out.{0: GroupNorm, 2: conv}``. Its
  ``timestep_embedding`` is [cos, sin] where msjax's is [sin, cos]: the first time-embedding
  layer's input rows are swapped by halves. ``resnet``: ``Open``, ``blocks.I.{Conv1, Conv2}``,
  ``blocks.I.te.fc{1,2,3}`` (its learned MLP is 32 wide whatever the features; msjax's is
  features / 4, equal at the published 128), ``Close``. ``SRParaConvNet``:
  ``conv_layers.{0..3}``, ``output_conv``.
- ``edsr``: the EDSR-PyTorch framework (sanghyun-son/EDSR-PyTorch, also RCAN's and MSRN's code):
  ``head.0``, ``body.I.body.{0, 2}`` (EDSR ResBlock), ``body.N`` (the conv closing the body),
  ``tail.0.{0, 2}`` (the upsampler's convs, one per x2 stage; PixelShuffle at the odd indices),
  ``tail.1``, and ``sub_mean`` / ``add_mean`` (MeanShift, a fixed 1x1 conv). RCAN:
  ``body.G.body.B.body.{0, 2}`` convs and ``body.G.body.B.body.3.conv_du.{0, 2}`` channel
  attention (1x1 convs on the pooled vector), ``body.G.body.N`` the group's closing conv.
  MSRN (``MSRN/Train/model/msrn.py``): ``body.I.{conv_3_1, conv_5_1, conv_3_2, conv_5_2,
  confusion}``, ``tail.0`` the 1x1 fusion of every block output and the head (in that order),
  ``tail.1``, ``tail.2.{0, 2}`` the upsampler, ``tail.3``.
- ``basicsr``: BasicSR's ``EDSR``: ``conv_first``, ``body.I.{conv1, conv2}``,
  ``conv_after_body``, ``upsample.{0, 2}``, ``conv_last``; its mean is a plain attribute, not
  in the state dict.

PixelShuffle needs no reordering: msjax's ``pixel_shuffle`` reads channels in PyTorch's order
(c * r^2 + i * r + j), so the upsampler convs' output channels map one to one.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re

import numpy as np

from msjax.models.sr_blocks import DIV2K_RGB_MEAN

SCHEMES = {"official": ("unet", "resnet", "srnet"), "edsr": ("edsr", "rcan", "msrn"),
           "basicsr": ("edsr",)}


class Kind(enum.Enum):
    CONV = "conv"              # Conv2d weight OIHW -> HWIO
    LINEAR = "linear"          # Linear weight (out, in) -> (in, out)
    POINTWISE = "pointwise"    # a 1x1 Conv2d / Conv1d weight used as a dense layer -> (in, out)
    SWAPPED = "swapped"        # Linear (out, in) -> (in, out) with the input halves swapped
    PLAIN = "plain"            # biases, GroupNorm weight / bias: as they are


def to_msjax(kind: Kind, a: np.ndarray) -> np.ndarray:
    if kind is Kind.CONV:
        return a.transpose(2, 3, 1, 0)
    if kind is Kind.LINEAR:
        return a.T
    if kind is Kind.POINTWISE:
        return a.reshape(a.shape[:2]).T
    if kind is Kind.SWAPPED:
        half = a.shape[1] // 2
        return np.concatenate([a.T[half:], a.T[:half]])
    return a


def torch_shape(kind: Kind, shape: tuple, pointwise_dims: int = 4) -> tuple:
    """The shape the PyTorch tensor must have for an msjax parameter of ``shape``."""
    if kind is Kind.CONV:
        h, w, i, o = shape
        return (o, i, h, w)
    if kind in (Kind.LINEAR, Kind.SWAPPED):
        return tuple(reversed(shape))
    if kind is Kind.POINTWISE:
        return (shape[1], shape[0]) + (1,) * (pointwise_dims - 2)
    return tuple(shape)


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str                    # the PyTorch key
    path: str                   # the msjax parameter path ('' for a checked constant)
    kind: Kind = Kind.PLAIN
    dims: int = 4               # a pointwise weight's rank in PyTorch (4: Conv2d, 3: Conv1d)
    value: np.ndarray | None = None   # a checked constant's expected value


def _conv(key, path):
    return [Entry(f"{key}.weight", f"{path}/kernel", Kind.CONV),
            Entry(f"{key}.bias", f"{path}/bias")]


def _linear(key, path, kind=Kind.LINEAR, dims=4):
    return [Entry(f"{key}.weight", f"{path}/kernel", kind, dims),
            Entry(f"{key}.bias", f"{path}/bias")]


def _norm(key, path):
    return [Entry(f"{key}.weight", f"{path}/scale"), Entry(f"{key}.bias", f"{path}/bias")]


def _unet(m) -> list[Entry]:
    out = _linear("time_embed.0", "Dense_0", Kind.SWAPPED) + _linear("time_embed.2", "Dense_1")
    out += _conv("input_blocks.0.0", "Conv_0")
    counters = {"conv": 1, "block": 0}

    def resblock(key, cin, cout):
        path = f"ResBlock_{counters['block']}"
        counters["block"] += 1
        entries = (_norm(f"{key}.in_layers.0", f"{path}/GroupNorm_0")
                   + _conv(f"{key}.in_layers.2", f"{path}/Conv_0")
                   + _linear(f"{key}.emb_layers.1", f"{path}/Dense_0")
                   + _norm(f"{key}.out_layers.0", f"{path}/GroupNorm_1")
                   + _conv(f"{key}.out_layers.3", f"{path}/Conv_1"))
        if cin != cout:
            entries += _conv(f"{key}.skip_connection", f"{path}/Conv_2")
        return entries

    def top_conv(key):
        counters["conv"] += 1
        return _conv(key, f"Conv_{counters['conv'] - 1}")

    ch, chans, index = m.model_channels, [m.model_channels], 1
    last = len(m.channel_mult) - 1
    for level, mult in enumerate(m.channel_mult):
        for _ in range(m.num_res_blocks):
            out += resblock(f"input_blocks.{index}.0", ch, mult * m.model_channels)
            ch = mult * m.model_channels
            chans.append(ch)
            index += 1
        if level != last:
            out += top_conv(f"input_blocks.{index}.0.op")
            chans.append(ch)
            index += 1
    out += resblock("middle_block.0", ch, ch)
    out += (_norm("middle_block.1.norm", "AttentionBlock_0/GroupNorm_0")
            + _linear("middle_block.1.qkv", "AttentionBlock_0/Dense_0", Kind.POINTWISE, 3)
            + _linear("middle_block.1.proj_out", "AttentionBlock_0/Dense_1", Kind.POINTWISE, 3))
    out += resblock("middle_block.2", ch, ch)
    index = 0
    for level, mult in reversed(list(enumerate(m.channel_mult))):
        for i in range(m.num_res_blocks + 1):
            cin = ch + chans.pop()
            ch = mult * m.model_channels
            out += resblock(f"output_blocks.{index}.0", cin, ch)
            if level and i == m.num_res_blocks:
                out += top_conv(f"output_blocks.{index}.1.conv")
            index += 1
    out += _norm("out.0", "GroupNorm_0") + top_conv("out.2")
    return out


def _resnet(m) -> list[Entry]:
    out = _conv("Open", "Conv_0")
    for i in range(m.nlayers):
        path = f"ResidualBlock_{i}"
        out += _conv(f"blocks.{i}.Conv1", f"{path}/Conv_0")
        if m.time_embed:
            for j in range(3):
                out += _linear(f"blocks.{i}.te.fc{j + 1}", f"{path}/TimeEmbedding_0/Dense_{j}")
        out += _conv(f"blocks.{i}.Conv2", f"{path}/Conv_1")
    return out + _conv("Close", "Conv_1")


def _srnet(m) -> list[Entry]:
    out = [e for i in range(4) for e in _conv(f"conv_layers.{i}", f"Conv_{i}")]
    return out + _conv("output_conv", "Conv_4")


def _upsampler(key, scale) -> list[Entry]:
    stages = 1 if scale == 3 else int(round(math.log2(scale)))
    return [e for s in range(stages) for e in _conv(f"{key}.{2 * s}", f"upsampler/Conv_{s}")]


def _mean_shift(m) -> list[Entry]:
    """EDSR-PyTorch's MeanShift layers: 1x1 convs of weight I / std and bias -+ rgb_range * mean
    / std (std 1), fixed at construction; msjax applies the same shift as constants."""
    eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    shift = np.float32(m.rgb_range) * np.asarray(DIV2K_RGB_MEAN, np.float32)
    return [Entry("sub_mean.weight", "", value=eye), Entry("sub_mean.bias", "", value=-shift),
            Entry("add_mean.weight", "", value=eye), Entry("add_mean.bias", "", value=shift)]


def _edsr(m, scheme) -> list[Entry]:
    if scheme == "basicsr":
        out = _conv("conv_first", "head")
        for i in range(m.n_resblocks):
            out += _conv(f"body.{i}.conv1", f"resblock_{i}/Conv_0")
            out += _conv(f"body.{i}.conv2", f"resblock_{i}/Conv_1")
        return (out + _conv("conv_after_body", "body_end") + _upsampler("upsample", m.scale)
                + _conv("conv_last", "tail"))
    out = _conv("head.0", "head")
    for i in range(m.n_resblocks):
        out += _conv(f"body.{i}.body.0", f"resblock_{i}/Conv_0")
        out += _conv(f"body.{i}.body.2", f"resblock_{i}/Conv_1")
    out += _conv(f"body.{m.n_resblocks}", "body_end")
    return out + _upsampler("tail.0", m.scale) + _conv("tail.1", "tail") + _mean_shift(m)


def _rcan(m) -> list[Entry]:
    out = _conv("head.0", "head")
    for g in range(m.n_resgroups):
        for b in range(m.n_resblocks):
            key, path = f"body.{g}.body.{b}.body", f"group_{g}/RCAB_{b}"
            out += _conv(f"{key}.0", f"{path}/Conv_0") + _conv(f"{key}.2", f"{path}/Conv_1")
            for j, index in enumerate((0, 2)):
                out += _linear(f"{key}.3.conv_du.{index}",
                               f"{path}/ChannelAttention_0/Dense_{j}", Kind.POINTWISE)
        out += _conv(f"body.{g}.body.{m.n_resblocks}", f"group_{g}/Conv_0")
    out += _conv(f"body.{m.n_resgroups}", "body_end")
    return out + _upsampler("tail.0", m.scale) + _conv("tail.1", "tail") + _mean_shift(m)


def _msrn(m) -> list[Entry]:
    out = _conv("head.0", "head")
    names = ("conv_3_1", "conv_5_1", "conv_3_2", "conv_5_2", "confusion")  # msjax's build order
    for i in range(m.n_blocks):
        for j, name in enumerate(names):
            out += _conv(f"body.{i}.{name}", f"msrb_{i}/Conv_{j}")
    out += _conv("tail.0", "fusion") + _conv("tail.1", "fusion_conv")
    return out + _upsampler("tail.2", m.scale) + _conv("tail.3", "tail") + _mean_shift(m)


def entries(model_name: str, model, scheme: str) -> list[Entry]:
    """The mapping for ``model`` (the configured msjax module) from a ``scheme`` state dict;
    ValueError where the scheme does not name that family's weights."""
    if model_name not in SCHEMES.get(scheme, ()):
        known = "; ".join(f"{s}: {', '.join(f)}" for s, f in SCHEMES.items())
        raise ValueError(f"the {scheme} scheme holds no {model_name} weights (schemes and their "
                         f"models: {known})")
    build = {"unet": _unet, "resnet": _resnet, "srnet": _srnet, "rcan": _rcan, "msrn": _msrn}
    if model_name == "edsr":
        return _edsr(model, scheme)
    return build[model_name](model)


def detect_scheme(keys) -> str | None:
    """The scheme the key names show, or None."""
    keys = set(keys)
    if keys & {"time_embed.0.weight", "Open.weight", "conv_layers.0.weight"}:
        return "official"
    if "conv_first.weight" in keys:
        return "basicsr"
    if "head.0.weight" in keys:
        return "edsr"
    return None


def _count(keys, pattern: str) -> int:
    """How many distinct indices ``pattern`` (a regex with one group) finds among ``keys``."""
    found = {m.group(1) for k in keys if (m := re.match(pattern, k))}
    return len(found)


def _upscale(keys, shapes, prefix: str, feats: int) -> int | None:
    convs = sorted(k for k in keys if re.fullmatch(rf"{re.escape(prefix)}\.\d+\.weight", k))
    if not convs or not feats:
        return None
    if len(convs) == 1 and shapes[convs[0]][0] == 9 * feats:
        return 3
    return 2 ** len(convs)


def revealed(shapes: dict, model_name: str, scheme: str) -> dict:
    """The model_kwargs the tensors' keys and shapes show ({key: shape} in, {field: value}
    out; fields they cannot show are left out), for the error that says what the file holds."""
    keys, out = set(shapes), {}

    def first_dim(key):
        return shapes[key][0] if key in shapes and shapes[key] else None

    if scheme == "official" and model_name == "unet":
        out["model_channels"] = first_dim("input_blocks.0.0.weight")
    elif scheme == "official" and model_name == "resnet":
        out["hidden"] = first_dim("Open.weight")
        out["nlayers"] = _count(keys, r"blocks\.(\d+)\.Conv1\.weight")
        out["time_embed"] = any(".te." in k for k in keys)
    elif scheme == "basicsr" and model_name == "edsr":
        out["n_feats"] = first_dim("conv_first.weight")
        out["n_resblocks"] = _count(keys, r"body\.(\d+)\.conv1\.weight")
        out["scale"] = _upscale(keys, shapes, "upsample", out["n_feats"])
    elif scheme == "edsr" and model_name == "edsr":
        out["n_feats"] = first_dim("head.0.weight")
        out["n_resblocks"] = _count(keys, r"body\.(\d+)\.body\.0\.weight")
        out["scale"] = _upscale(keys, shapes, "tail.0", out["n_feats"])
    elif scheme == "edsr" and model_name == "rcan":
        feats = out["n_feats"] = first_dim("head.0.weight")
        out["n_resgroups"] = _count(keys, r"body\.(\d+)\.body\.0\.body\.0\.weight")
        out["n_resblocks"] = _count(keys, r"body\.0\.body\.(\d+)\.body\.0\.weight")
        squeezed = first_dim("body.0.body.0.body.3.conv_du.0.weight")
        out["reduction"] = feats // squeezed if feats and squeezed else None
        out["scale"] = _upscale(keys, shapes, "tail.0", feats)
    elif scheme == "edsr" and model_name == "msrn":
        out["n_feats"] = first_dim("head.0.weight")
        out["n_blocks"] = _count(keys, r"body\.(\d+)\.conv_3_1\.weight")
        out["scale"] = _upscale(keys, shapes, "tail.2", out["n_feats"])
    return {k: v for k, v in out.items() if v not in (None, 0)}
