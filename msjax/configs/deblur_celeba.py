"""Deblurring CelebA at 64x64: Gaussian PSF sigma 3 by FFT, t ~ 0.1 U(0,1) noise mix.

    python train.py --config configs/deblur_celeba.py                   # runs/deblur_celeba
    python train.py --config configs/deblur_celeba.py:two_grids  # full multiscale, as measured
    python train.py --config configs/deblur_celeba.py --config.mode=fullmultiscale  # the paper's
    python train.py --config configs/deblur_celeba.py:official   # the official code's choices
    # the official code's data directory as it is (DATA/CelebA/):
    python train.py --config configs/deblur_celeba.py \
        --config.data.source=official --config.data.data_dir=/path/to/DATA

CelebA is prepared on the first run (README, "Datasets"). Models: --config.model=unet|resnet.
Official schedule: Adam 5e-4 cosine to 1e-6 over 8000 steps; full multiscale 2000/1000/500/250.
"""

from msjax.configs._official import official


def get_config(variant=""):
    return official("deblur", "celeb_a", patch=64, model="resnet", resize_to=64, variant=variant)
