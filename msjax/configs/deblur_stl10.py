"""Deblurring on STL-10 (train+unlabeled, 105k images at 96x96), the paper's main deblur setup.

    python train.py --config configs/deblur_stl10.py --workdir runs/deblur_stl10
    python train.py --config configs/deblur_stl10.py --workdir runs/deblur_stl10_fms \
        --config.mode=fullmultiscale

Needs STL-10 prepared once as ArrayRecord (see README, "Datasets"). Official schedule: Adam 5e-4
cosine to 1e-6, 8000 steps (single / multiscale) or 3750 (full-multiscale, stages 2000/1000/500/250).
Expected: a few hours on one GPU for 8000 steps of the ResNet; FMS about 5.5x fewer work units.
"""

from msjax import defaults


def get_config():
    c = defaults.get_config()
    c.task.name = "deblur"               # y = (1-t) A x + t z, Gaussian PSF sigma 3, t ~ 0.1 U(0,1)
    c.data.source = "tfds"
    c.data.name = "stl10"
    c.data.train_split = "train+unlabelled"
    c.data.valid_split = "test"
    c.data.patch = 96                     # native size; 96 / 2^3 = 12 at the coarsest level
    c.data.valid_images = 512             # the official code validates on 512 test images
    c.model = "resnet"
    c.mode = "multiscale"
    c.batch_size = 16
    c.train.steps = 8000
    c.log.eval_every = 250
    return c
