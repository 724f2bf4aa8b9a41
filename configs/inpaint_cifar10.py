"""Inpainting CIFAR-10 (32x32): random boxes filled with noise.

    python train.py --config configs/inpaint_cifar10.py --workdir runs/inpaint_cifar10
    python train.py --config configs/inpaint_cifar10.py --workdir runs/inpaint_cifar10_fms --config.mode=fullmultiscale

Needs cifar10 prepared once as ArrayRecord (README, "Datasets"). Models: --config.model=unet|resnet.
Official optimisation: Adam 0.0005 cosine to 1e-6 over 8000 steps (FMS: 3750 in stages 8:4:2:1).
"""

from configs import base


def get_config():
    c = base.get_config()
    c.task.name = "inpaint"
    c.data.source = "tfds"
    c.data.name = "cifar10"
    c.data.train_split = "train"
    c.data.valid_split = "test"
    c.data.patch = 32
    c.data.valid_images = 512
    c.model = "unet"
    c.mode = "multiscale"
    c.mge.levels = 3                      # coarsest level 4x4
    c.batch_size = 16
    c.train.lr = 0.0005
    c.train.steps = 8000
    c.train.eval_every = 250
    return c
