"""Deblurring CIFAR-10 (32x32): Gaussian PSF sigma 3 by FFT, t ~ 0.1 U(0,1) noise mix.

    python train.py --config configs/deblur_cifar10.py --workdir runs/deblur_cifar10
    python train.py --config configs/deblur_cifar10.py --workdir runs/deblur_cifar10_fms --config.mode=fullmultiscale

Needs cifar10 prepared once as ArrayRecord (README, "Datasets"). Models: --config.model=unet|resnet.
Official optimisation: Adam 5e-4 cosine to 1e-6 over 8000 steps (FMS: 3750 in stages 8:4:2:1).
"""

from msjax.configs._official import official


def get_config():
    return official("deblur", "cifar10", patch=32, model="resnet")
