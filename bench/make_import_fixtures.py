"""Writes the PyTorch weight files under tests/fixtures/torch_import/ that
tests/test_import_torch.py imports without torch, with PyTorch's outputs beside them.

Needs torch (the ``bench`` extra). Run from the repository root:

    python bench/make_import_fixtures.py

The networks below are written here with the published code's module names, so their state dict
keys are those files carry (msjax/models/torch_keys.py says where each name comes from). Weights
are random at reduced depth; the last layer is rescaled so the output moves about 0.1 around its
mean and stays inside [0, 1] (clipped pixels would agree whatever the weights). Each fixture's
input is a crop of scikit-image's astronaut photo; its output went through what ``run.restore``
does: official MGE models normalise, run ``net(x, t)`` and denormalise (SRNet: bilinear x2, net,
add back), the SR models take 0..255 images and return them, /255 here; all clipped to [0, 1].

- Files: ``unet_official.pt`` (an official checkpoint dict, zip), ``resnet_official_legacy.pth``
  (the same, legacy format, float16 tensors), ``srnet_official_module.pth`` (``module.``
  keys), ``edsr_x2.safetensors``, ``edsr_x4.pt``, ``basicsr_edsr_x{2,4}.pth`` (``params`` /
  ``params_ema``), ``rcan_x{2,4}.pt``, ``msrn_x{2,4}.pt``.
- ``expected.npz``: '<name>/input' (HxWx3 float32 in [0, 1]), '<name>/output', '<name>/t'.
- ``full_shapes.json``: the key -> shape lists of the full-size PyTorch networks (the MGE paper
  sizes, EDSR-baseline, RCAN, MSRN at x2 and x4), which the tests compare against msjax's
  mapping without torch.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import numpy as np
import safetensors.torch
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch_import"
SIDE = 24                                    # input crop side (the SR models' LR)
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))    # the official CIFAR-10 Normalize
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


# --- the official MGE networks (multiscale/models.py's module names) ---------------------------

def _cos_sin(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Seq(nn.Sequential):
    """A TimestepEmbedSequential: blocks that take the embedding get it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, UResBlock) else layer(x)
        return x


class UResBlock(nn.Module):
    def __init__(self, cin, emb, cout):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(16, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3,
                                                                                  padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(nn.GroupNorm(16, cout), nn.SiLU(), nn.Dropout(0.5),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm, self.qkv, self.proj_out = nn.GroupNorm(16, c), nn.Conv1d(c, 3 * c, 1), \
            nn.Conv1d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        flat = x.reshape(b, c, -1)
        q, k, v = torch.split(self.qkv(self.norm(flat)), c, dim=1)
        scale = 1 / math.sqrt(math.sqrt(c))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        return (flat + self.proj_out(torch.einsum("bts,bcs->bct", weight, v))).reshape(x.shape)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    def __init__(self, mc=32, mult=(1, 2, 4), nrb=1):
        super().__init__()
        self.mc, emb = mc, 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(3, mc, 3, padding=1))])
        chans, ch = [mc], mc
        for level, m in enumerate(mult):
            for _ in range(nrb):
                self.input_blocks.append(Seq(UResBlock(ch, emb, m * mc)))
                ch = m * mc
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(Seq(Down(ch)))
                chans.append(ch)
        self.middle_block = Seq(UResBlock(ch, emb, ch), Attention(ch), UResBlock(ch, emb, ch))
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb + 1):
                layers = [UResBlock(ch + chans.pop(), emb, m * mc)]
                ch = m * mc
                if level and i == nrb:
                    layers.append(Up(ch))
                self.output_blocks.append(Seq(*layers))
        self.out = nn.Sequential(nn.GroupNorm(16, ch), nn.SiLU(), nn.Conv2d(mc, 3, 3, padding=1))

    def forward(self, x, t):
        emb = self.time_embed(_cos_sin(t, self.mc))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)

    def last(self):
        return self.out[2]


class TimeEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.fc1, self.fc2 = nn.Linear(1, 32), nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, dim - dim // 2)

    def forward(self, t):
        half = (self.dim // 2) // 2
        args = t[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)
        learned = self.fc3(F.relu(self.fc2(F.relu(self.fc1(t[:, None])))))
        return torch.cat([torch.sin(args), torch.cos(args), learned], dim=-1)


class Block(nn.Module):
    def __init__(self, c, time_embed=True):
        super().__init__()
        self.Conv1, self.Conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.te = TimeEmbedding(c) if time_embed else None

    def forward(self, x, t):
        q = self.Conv1(x)
        if self.te is not None:
            q = q + self.te(t)[:, :, None, None]
        return self.Conv2(F.leaky_relu(F.layer_norm(q, q.shape[1:]), 0.2))


class ResNet(nn.Module):
    def __init__(self, hid=128, nlayers=2, time_embed=True):
        super().__init__()
        self.Open, self.Close = nn.Conv2d(3, hid, 1), nn.Conv2d(hid, 3, 1)
        self.blocks = nn.ModuleList(Block(hid, time_embed) for _ in range(nlayers))

    def forward(self, x, t):
        x = self.Open(x)
        for block in self.blocks:
            x = x + block(x, t)
        return self.Close(x)

    def last(self):
        return self.Close


class SRParaConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        shapes = ((3, 64, 5), (64, 64, 3), (64, 32, 3), (32, 32, 3))
        self.conv_layers = nn.ModuleList(nn.Conv2d(i, o, k, padding=k // 2) for i, o, k in shapes)
        self.output_conv = nn.Conv2d(32, 3, 1)

    def forward(self, x, t=None):
        for layer in self.conv_layers:
            y = layer(x)
            x = F.leaky_relu(F.layer_norm(y, y.shape[1:]), 0.2)
        return self.output_conv(x)

    def last(self):
        return self.output_conv


# --- the SR field's networks (EDSR-PyTorch and BasicSR module names) ----------------------------

def conv(cin, cout, k=3):
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class MeanShift(nn.Conv2d):
    def __init__(self, sign, rgb_range=255.0):
        super().__init__(3, 3, 1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(DIV2K_MEAN)
        self.requires_grad_(False)


def upsampler(scale, n):
    layers = []
    if scale == 3:
        return nn.Sequential(conv(n, 9 * n), nn.PixelShuffle(3))
    for _ in range(int(math.log2(scale))):
        layers += [conv(n, 4 * n), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


class EResBlock(nn.Module):
    def __init__(self, n, res_scale):
        super().__init__()
        self.body, self.res_scale = nn.Sequential(conv(n, n), nn.ReLU(True), conv(n, n)), res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class EDSRFamily(nn.Module):
    """EDSR-PyTorch's frame, shared by EDSR and RCAN: mean shifts, head.0, body.{blocks, N},
    tail.{0: upsampler, 1}, and a long skip over the body."""

    def __init__(self, blocks, n_feats, scale):
        super().__init__()
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(1)
        self.head = nn.Sequential(conv(3, n_feats))
        self.body = nn.Sequential(*blocks, conv(n_feats, n_feats))
        self.tail = nn.Sequential(upsampler(scale, n_feats), conv(n_feats, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))

    def last(self):
        return self.tail[1]


class EDSR(EDSRFamily):
    """EDSR-PyTorch's: head.0, body.I.body.{0,2}, body.N, tail.{0: upsampler, 1}, mean shifts."""

    def __init__(self, n_resblocks=16, n_feats=64, scale=2, res_scale=1.0):
        super().__init__([EResBlock(n_feats, res_scale) for _ in range(n_resblocks)], n_feats,
                         scale)


class BasicBlock(nn.Module):
    def __init__(self, n, res_scale):
        super().__init__()
        self.conv1, self.conv2, self.res_scale = conv(n, n), conv(n, n), res_scale

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x))) * self.res_scale


class BasicSREDSR(nn.Module):
    """BasicSR's EDSR: conv_first, body.I.{conv1,conv2}, conv_after_body, upsample, conv_last;
    its mean is an attribute, not a buffer."""

    def __init__(self, num_block=16, num_feat=64, upscale=2, res_scale=1.0):
        super().__init__()
        self.mean = torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1)
        self.conv_first = conv(3, num_feat)
        self.body = nn.Sequential(*[BasicBlock(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = conv(num_feat, num_feat)
        self.upsample = upsampler(upscale, num_feat)
        self.conv_last = conv(num_feat, 3)

    def forward(self, x):  # 0..255 in and out, as the EDSR-PyTorch models here
        x = (x / 255 - self.mean) * 255
        h = self.conv_first(x)
        h = self.conv_after_body(self.body(h)) + h
        return (self.conv_last(self.upsample(h)) / 255 + self.mean) * 255

    def last(self):
        return self.conv_last


class CALayer(nn.Module):
    def __init__(self, n, reduction):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(n, n // reduction, 1), nn.ReLU(True),
                                     nn.Conv2d(n // reduction, n, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(F.adaptive_avg_pool2d(x, 1))


class RCAB(nn.Module):
    def __init__(self, n, reduction):
        super().__init__()
        self.body = nn.Sequential(conv(n, n), nn.ReLU(True), conv(n, n), CALayer(n, reduction))

    def forward(self, x):
        return x + self.body(x)


class ResidualGroup(nn.Module):
    def __init__(self, n, reduction, n_resblocks):
        super().__init__()
        self.body = nn.Sequential(*[RCAB(n, reduction) for _ in range(n_resblocks)], conv(n, n))

    def forward(self, x):
        return x + self.body(x)


class RCAN(EDSRFamily):
    def __init__(self, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=2):
        super().__init__([ResidualGroup(n_feats, reduction, n_resblocks)
                          for _ in range(n_resgroups)], n_feats, scale)


class MSRB(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv_3_1, self.conv_3_2 = conv(n, n), conv(2 * n, 2 * n)
        self.conv_5_1, self.conv_5_2 = conv(n, n, 5), conv(2 * n, 2 * n, 5)
        self.confusion = nn.Conv2d(4 * n, n, 1)

    def forward(self, x):
        c1 = torch.cat([F.relu(self.conv_3_1(x)), F.relu(self.conv_5_1(x))], 1)
        c2 = torch.cat([F.relu(self.conv_3_2(c1)), F.relu(self.conv_5_2(c1))], 1)
        return x + self.confusion(c2)


class MSRN(nn.Module):
    def __init__(self, n_blocks=8, n_feats=64, scale=2):
        super().__init__()
        self.n_blocks = n_blocks
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(1)
        self.head = nn.Sequential(conv(3, n_feats))
        self.body = nn.Sequential(*[MSRB(n_feats) for _ in range(n_blocks)])
        self.tail = nn.Sequential(nn.Conv2d(n_feats * (n_blocks + 1), n_feats, 1),
                                  conv(n_feats, n_feats), upsampler(scale, n_feats),
                                  conv(n_feats, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        outs, h = [], x
        for block in self.body:
            h = block(h)
            outs.append(h)
        return self.add_mean(self.tail(torch.cat(outs + [x], 1)))

    def last(self):
        return self.tail[3]


# --- fixtures -----------------------------------------------------------------------------------

def _photo(offset: int) -> np.ndarray:
    """A SIDE x SIDE crop of the astronaut photo, float32 in [0, 1]."""
    img = skimage.data.astronaut()[100 + offset:100 + offset + SIDE, 180:180 + SIDE]
    return (img.astype(np.float32) / 255).copy()


def _nchw(img):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def _hwc(x):
    return x[0].detach().numpy().transpose(1, 2, 0)


def _mge_output(net, img, t, *, normalize=None, upsample=False):
    x = _nchw(img)
    if upsample:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    seen = x
    if normalize:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalize)
        seen = (x - mean) / std
    out = net(seen, torch.full((1,), t))
    if normalize:
        out = out * std + mean
    if upsample:
        out = out + x
    return out


def _sr_output(net, img):
    return net(_nchw(img) * 255) / 255


def _calibrate(net, contribution) -> None:
    """Rescales the last layer so the network's ``contribution()`` to the output has a standard
    deviation of 0.1."""
    with torch.no_grad():
        spread = float(contribution().std())
        last = net.last()
        last.weight.mul_(0.1 / spread)
        last.bias.mul_(0.1 / spread)


def _checkpoint(state, epoch, it):
    """The official MGE checkpoint dict (multiscale/utils.py), with a small real optimizer."""
    params = [torch.zeros(1, requires_grad=True)]
    opt = torch.optim.SGD(params, lr=1e-3)
    return {"epoch": epoch, "iter": it, "model_state_dict": state,
            "optimizer_state_dict": opt.state_dict(), "train_loss": 0.25, "val_loss": 0.5}


def _shapes(net) -> dict:
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {}

    def record(name, img, out, t=0.0):
        out = np.clip(_hwc(out), 0, 1)
        inside = float(np.mean((out > 0) & (out < 1)))
        assert inside > 0.9, f"{name}: only {inside:.2f} of the output inside (0, 1)"
        expected.update({f"{name}/input": img, f"{name}/output": out,
                         f"{name}/t": np.float32(t)})

    with torch.no_grad():
        # Official MGE networks: the paper's layer shapes at reduced depth / width.
        img = np.clip(_photo(0) + np.random.default_rng(0).normal(0, 0.1, (SIDE, SIDE, 3)),
                      0, 1).astype(np.float32)
        unet = UNetModel(mc=16, mult=(1, 2), nrb=1).eval()
        for m in unet.modules():  # GroupNorm's affine away from (1, 0), so its mapping shows
            if isinstance(m, nn.GroupNorm):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
        _calibrate(unet, lambda: _mge_output(unet, img, 0.3, normalize=HALF))
        record("unet", img, _mge_output(unet, img, 0.3, normalize=HALF), 0.3)
        torch.save(_checkpoint(unet.state_dict(), 2, 3500), OUT / "unet_official.pt")

        resnet = ResNet(hid=128, nlayers=1).eval()
        _calibrate(resnet, lambda: _mge_output(resnet, img, 0.3, normalize=HALF))
        half = collections.OrderedDict((k, v.half()) for k, v in resnet.state_dict().items())
        resnet.load_state_dict({k: v.float() for k, v in half.items()})  # what the file holds
        record("resnet", img, _mge_output(resnet, img, 0.3, normalize=HALF), 0.3)
        torch.save(_checkpoint(half, 0, 1999), OUT / "resnet_official_legacy.pth",
                   _use_new_zipfile_serialization=False)

        lr = _photo(40)
        srnet = SRParaConvNet().eval()
        _calibrate(srnet, lambda: srnet(F.interpolate(_nchw(lr), scale_factor=2,
                                                     mode="bilinear", align_corners=False)))
        record("srnet", lr, _mge_output(srnet, lr, 0.0, upsample=True))
        prefixed = collections.OrderedDict(("module." + k, v)
                                           for k, v in srnet.state_dict().items())
        torch.save(_checkpoint(prefixed, 3, 7999), OUT / "srnet_official_module.pth")

        # SR networks at x2 and x4.
        for scale in (2, 4):
            edsr = EDSR(n_resblocks=2, n_feats=16, scale=scale, res_scale=0.1).eval()
            _calibrate(edsr, lambda: _sr_output(edsr, lr))
            record(f"edsr_x{scale}", lr, _sr_output(edsr, lr))
            if scale == 2:
                safetensors.torch.save_file(edsr.state_dict(), OUT / "edsr_x2.safetensors")
            else:
                torch.save(edsr.state_dict(), OUT / "edsr_x4.pt")

            basic = BasicSREDSR(num_block=2, num_feat=16, upscale=scale).eval()
            _calibrate(basic, lambda: _sr_output(basic, lr))
            record(f"basicsr_x{scale}", lr, _sr_output(basic, lr))
            key = "params_ema" if scale == 4 else "params"
            torch.save({key: basic.state_dict()}, OUT / f"basicsr_edsr_x{scale}.pth")

            rcan = RCAN(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4, scale=scale).eval()
            _calibrate(rcan, lambda: _sr_output(rcan, lr))
            record(f"rcan_x{scale}", lr, _sr_output(rcan, lr))
            torch.save(rcan.state_dict(), OUT / f"rcan_x{scale}.pt")

            msrn = MSRN(n_blocks=2, n_feats=8, scale=scale).eval()
            _calibrate(msrn, lambda: _sr_output(msrn, lr))
            record(f"msrn_x{scale}", lr, _sr_output(msrn, lr))
            torch.save(msrn.state_dict(), OUT / f"msrn_x{scale}.pt")

    np.savez_compressed(OUT / "expected.npz", **expected)
    full = {"unet_official": _shapes(UNetModel()), "resnet_official": _shapes(ResNet()),
            "resnet_sr_official": _shapes(ResNet(hid=100, nlayers=9, time_embed=False)),
            "srnet_official": _shapes(SRParaConvNet())}
    for scale in (2, 4):
        full[f"edsr_x{scale}"] = _shapes(EDSR(scale=scale))
        full[f"basicsr_edsr_x{scale}"] = _shapes(BasicSREDSR(upscale=scale))
        full[f"rcan_x{scale}"] = _shapes(RCAN(scale=scale))
        full[f"msrn_x{scale}"] = _shapes(MSRN(scale=scale))
    (OUT / "full_shapes.json").write_text(json.dumps(full, sort_keys=True) + "\n")
    print(f"wrote {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    main()
