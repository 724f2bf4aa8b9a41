"""Quickstart: deblurring on the built-in photos, a few minutes on a 2-core CPU, offline.

    python train.py --config configs/quickstart.py --workdir runs/quickstart

A small residual CNN (output = input + f(input)) trained with full-multiscale MGE on 64x64 patches
of the scikit-image photographs; validation on fixed crops of two held-out photos.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.task.name = "deblur"
    c.task.blur_sigma = (1.5, 1.5)
    c.task.residual = True
    c.data.source = "builtin"
    c.data.patch = 64
    c.data.valid_images = 8
    c.model = "residual_cnn"
    c.model_kwargs = dict(features=48, depth=5)
    c.mode = "fullmultiscale"
    c.batch_size = 8
    c.mge.levels = 2
    c.fms.stage_weights = (4, 2, 1)
    c.train.steps = 600
    c.train.lr = 2e-3
    c.train.eval_every = 100
    c.train.log_every = 20
    c.train.checkpoint_every = 100
    return c
