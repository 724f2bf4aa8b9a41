"""Denoising CIFAR-10 (32x32) with the official t-interpolation y = t x + (1-t) z.

    python train.py --config configs/denoise_cifar10.py                   # runs/denoise_cifar10
    python train.py --config configs/denoise_cifar10.py --config.mode=fullmultiscale
    python train.py --config configs/denoise_cifar10.py:official   # the official code's choices
    # the official code's data directory as it is (DATA/cifar-10-batches-py/):
    python train.py --config configs/denoise_cifar10.py \
        --config.data.source=official --config.data.data_dir=/path/to/DATA

CIFAR-10 is prepared on the first run (README, "Datasets"). Models: --config.model=unet|resnet.
Official schedule: Adam 5e-4 cosine to 1e-6 over 8000 steps; full multiscale 2000/1000/500/250.
"""

from msjax.configs._official import official


def get_config(variant=""):
    return official("denoise", "cifar10", patch=32, model="unet", variant=variant)
