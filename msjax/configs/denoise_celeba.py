"""Denoising CelebA (aligned faces, 64x64 crops) with the official t-interpolation.

    python train.py --config configs/denoise_celeba.py --workdir runs/denoise_celeba
    python train.py --config configs/denoise_celeba.py --workdir runs/denoise_celeba_fms --config.mode=fullmultiscale

Needs celeb_a prepared once as ArrayRecord (README, "Datasets"). Models: --config.model=unet|resnet.
Official optimisation: Adam 5e-4 cosine to 1e-6 over 8000 steps (FMS: 3750 in stages 8:4:2:1).
"""

from msjax.configs._official import official


def get_config():
    return official("denoise", "celeb_a", patch=64, model="unet", resize_to=64)
