"""Deblurring CIFAR-10 (32x32): Gaussian PSF sigma 3 by FFT, t ~ 0.1 U(0,1) noise mix.

    python train.py --config configs/deblur_cifar10.py                   # runs/deblur_cifar10
    python train.py --config configs/deblur_cifar10.py --config.mode=fullmultiscale
    python train.py --config configs/deblur_cifar10.py:official   # the official code's choices
    # the official code's data directory as it is (DATA/cifar-10-batches-py/):
    python train.py --config configs/deblur_cifar10.py \
        --config.data.source=official --config.data.data_dir=/path/to/DATA

CIFAR-10 is prepared on the first run (README, "Datasets"). Models: --config.model=unet|resnet.
Official schedule: Adam 5e-4 cosine to 1e-6 over 8000 steps; full multiscale 2000/1000/500/250.
Full multiscale has no measured preset here: a 16 px coarse grid is smaller than the PSF's support
(19 px), and such a stage learnt little that transfers (docs/cost_to_quality.md).
"""

from msjax.configs._official import official


def get_config(variant=""):
    return official("deblur", "cifar10", patch=32, model="resnet", variant=variant)
