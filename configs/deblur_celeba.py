"""Deblurring CelebA at 64x64: Gaussian PSF sigma 3 by FFT, t ~ 0.1 U(0,1) noise mix.

    python train.py --config configs/deblur_celeba.py --workdir runs/deblur_celeba
    python train.py --config configs/deblur_celeba.py --workdir runs/deblur_celeba_fms --config.mode=fullmultiscale

Needs celeb_a prepared once as ArrayRecord (README, "Datasets"). Models: --config.model=unet|resnet.
Official optimisation: Adam 0.0005 cosine to 1e-6 over 8000 steps (FMS: 3750 in stages 8:4:2:1).
"""

from configs import base


def get_config():
    c = base.get_config()
    c.task.name = "deblur"
    c.data.source = "tfds"
    c.data.name = "celeb_a"
    c.data.train_split = "train"
    c.data.valid_split = "test"
    c.data.patch = 64
    c.data.resize_to = 64
    c.data.valid_images = 512
    c.model = "resnet"
    c.mode = "multiscale"
    c.mge.levels = 3                      # coarsest level 8x8
    c.batch_size = 16
    c.train.lr = 0.0005
    c.train.steps = 8000
    c.train.eval_every = 250
    return c
