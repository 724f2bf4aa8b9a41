"""Quickstart: deblurring on the built-in photos, a few minutes on a 2-core CPU, offline.

    python train.py --config configs/quickstart.py           # workdir: runs/quickstart
    python train.py --config configs/quickstart.py:official  # the paper's three grids

A small residual CNN (output = input + f(input)) trained coarse to fine on 64x64 patches of the
scikit-image photographs; validation on fixed crops of two held-out photos. The blur is the
official one (Gaussian PSF sigma 3, t ~ 0.1 U(0,1) noise), applied on each grid with the same
sigma in pixels, so the coarse stage poses the fine problem again at a coarser sampling.

Two grids, 32 then 64 px, four fifths of the steps on the coarse one, each stage a plain
single-scale step on its grid: the measured choice for deblurring (docs/cost_to_quality.md).
A coarse grid must hold the PSF's support (about 19 px for sigma 3): the 16 px grid of the
paper's three stages is smaller, and what the network learns there does not transfer. The
``official`` variant keeps the paper's full multiscale (16, 32 and 64 px, 4:2:1, every MGE term,
one cosine, the corruption restricted from the fine grid).
"""

from msjax import defaults
from msjax.configs._official import deblur_two_grids


def get_config(variant=""):
    c = defaults.get_config()
    c.task.name = "deblur"
    c.task.blur_sigma = (3.0, 3.0)
    c.task.residual = True
    c.data.source = "builtin"
    c.data.patch = 64
    c.data.valid_images = 8
    c.model = "residual_cnn"
    c.model_kwargs = dict(features=48, depth=5)
    c.mode = "fullmultiscale"
    c.batch_size = 8
    c.train.steps = 600
    c.train.lr = 2e-3
    c.log.eval_every = 100
    c.log.every = 20
    c.log.checkpoint_every = 100
    if variant == "official":
        c.mge.levels = 2
        c.fms.stage_weights = (4, 2, 1)
        return c
    if variant:
        raise ValueError(f"unknown config variant {variant!r}; use ':official' or none")
    deblur_two_grids(c)  # the paper deblur configs' :two_grids schedule, on 32 then 64 px
    return c
