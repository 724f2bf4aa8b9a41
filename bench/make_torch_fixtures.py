"""Writes the PyTorch files under tests/fixtures/torch/ that tests/test_data_official.py reads
without torch, each with the arrays it must give beside it in a .npz.

Needs torch (not a dependency of msjax: install it for this script alone). Run from the
repository root:

    python bench/make_torch_fixtures.py

- ``tensors.pt``: a nested object with a state dict of every storage type msjax reads (float32,
  float64, float16, bfloat16, uint8, int8, int16, int32, int64, bool), a parameter, tensors that
  are views into one storage (a transpose, a slice with an offset), lists, tuples and numbers;
  ``tensors.npz`` holds each tensor by its path ('state/conv.weight', 'list/0'), bfloat16 as
  float32 (its values are exact there).
- ``legacy.pt``: one tensor (0, 1, 2) in the pre-1.6 format (not a zip).
- ``Urban100/{low,high}_res_{train,test}.pt``: the official code's SR files in miniature, lists
  of CxHxW tensors with HR = 2 x LR (train: float32 in [0, 1], test: uint8), each HR image with a
  red 8x16 bar at its top left (4x8 in the LR image); ``Urban100/expected.npz`` holds item i of
  ``<file>.pt`` as '<file>/<i>' (C, H, W).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch"


def _tensors(rng) -> tuple[object, dict]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict([
        ("conv.weight", torch.tensor(rng.standard_normal((4, 3, 3, 3)), dtype=torch.float32)),
        ("conv.bias", torch.tensor(rng.standard_normal(4), dtype=torch.float32)),
        ("bn.running_mean", torch.tensor(rng.standard_normal(3), dtype=torch.float64)),
        ("half", torch.tensor(rng.standard_normal((2, 3)), dtype=torch.float16)),
        ("bf16", torch.tensor([1.0, -2.5, 0.15625, 3.0e4, -1.0e-3], dtype=torch.bfloat16)),
        ("bytes", torch.tensor([[0, 7], [128, 255]], dtype=torch.uint8)),
        ("int8", torch.tensor([-128, -1, 127], dtype=torch.int8)),
        ("int16", torch.tensor([-300, 300], dtype=torch.int16)),
        ("int32", torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32)),
        ("steps", torch.tensor([0, 2**40, -5], dtype=torch.int64)),
        ("mask", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(2.5)),
        ("empty", torch.zeros((0, 3))),
        ("base", base),
        ("transposed", base.t()),            # a view: strides (1, 6) into base's storage
        ("slice", base[1:, 2::2]),           # a view with an offset into base's storage
    ])
    weight = torch.nn.Parameter(torch.tensor(rng.standard_normal((2, 2)), dtype=torch.float32))
    saved = {"state": state, "param": weight, "list": [torch.ones(2), torch.zeros(1, 2)],
             "tuple": (torch.full((2,), 7, dtype=torch.int64), 5), "epoch": 7, "lr": 1e-3,
             "name": "fixture", "nested": {"a": [{"b": torch.eye(2)}]}}
    expected = {f"state/{k}": v.detach().float().numpy() if v.dtype == torch.bfloat16
                else v.detach().numpy() for k, v in state.items()}
    expected |= {"param": weight.detach().numpy(), "list/0": np.ones(2, np.float32),
                 "list/1": np.zeros((1, 2), np.float32), "tuple/0": np.full(2, 7, np.int64),
                 "nested/a/0/b": np.eye(2, dtype=np.float32)}
    return saved, expected


def _marked(rng, h: int, w: int) -> np.ndarray:
    """An HxWx3 image in [0, 1] (multiples of 1/255) with a red 8x16 bar at its top left."""
    img = rng.integers(40, 200, (h, w, 3)).astype(np.float32) / 255
    img[:8, :16] = (1.0, 0.0, 0.0)
    return img


def _halved(img: np.ndarray) -> np.ndarray:
    """The 2x2 mean: an LR image whose red bar stays red (4x8)."""
    h, w = img.shape[:2]
    return img.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))


def _urban100(rng) -> dict:
    expected = {}
    folder = OUT / "Urban100"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, uint8 in (("train", 2, False), ("test", 2, True)):
        # Training images the size of the tests' patch (the window, and so the bar, stays at
        # the top left); test images of other sizes.
        hr = [_marked(rng, 32, 32 if split == "train" else 40 + 8 * i) for i in range(count)]
        lr = [_halved(img) for img in hr]
        for name, images in (("high_res", hr), ("low_res", lr)):
            chw = [np.ascontiguousarray(img.transpose(2, 0, 1)) for img in images]
            if uint8:
                chw = [np.round(a * 255).astype(np.uint8) for a in chw]
            else:
                chw = [np.round(a * 255).astype(np.float32) / 255 for a in chw]
            torch.save([torch.from_numpy(a) for a in chw], folder / f"{name}_{split}.pt")
            expected |= {f"{name}_{split}/{i}": a for i, a in enumerate(chw)}
    return expected


def main():
    rng = np.random.default_rng(0)
    OUT.mkdir(parents=True, exist_ok=True)
    saved, expected = _tensors(rng)
    torch.save(saved, OUT / "tensors.pt")
    np.savez(OUT / "tensors.npz", **expected)
    torch.save(torch.arange(3, dtype=torch.float32), OUT / "legacy.pt",
               _use_new_zipfile_serialization=False)
    np.savez(OUT / "Urban100" / "expected.npz", **_urban100(rng))
    print(f"wrote {sorted(p.relative_to(OUT).as_posix() for p in OUT.rglob('*') if p.is_file())}")


if __name__ == "__main__":
    main()
