"""Denoising CelebA (aligned faces, 64x64 crops) with the official t-interpolation.

    python train.py --config configs/denoise_celeba.py                   # runs/denoise_celeba
    python train.py --config configs/denoise_celeba.py --config.mode=fullmultiscale
    python train.py --config configs/denoise_celeba.py:official   # the official code's choices
    # the official code's data directory as it is (DATA/CelebA/):
    python train.py --config configs/denoise_celeba.py \
        --config.data.source=official --config.data.data_dir=/path/to/DATA

CelebA is prepared on the first run (README, "Datasets"). Models: --config.model=unet|resnet.
Official schedule: Adam 5e-4 cosine to 1e-6 over 8000 steps; full multiscale 2000/1000/500/250.
"""

from msjax.configs._official import official


def get_config(variant=""):
    return official("denoise", "celeb_a", patch=64, model="unet", resize_to=64, variant=variant)
