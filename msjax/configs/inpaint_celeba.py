"""Inpainting CelebA at 64x64: random boxes filled with noise (the official code had no mask).

    python train.py --config configs/inpaint_celeba.py --workdir runs/inpaint_celeba
    python train.py --config configs/inpaint_celeba.py --workdir runs/inpaint_celeba_fms --config.mode=fullmultiscale

Needs celeb_a prepared once as ArrayRecord (README, "Datasets"). Models: --config.model=unet|resnet.
Official optimisation: Adam 5e-4 cosine to 1e-6 over 8000 steps (FMS: 3750 in stages 8:4:2:1).
"""

from msjax.configs._official import official


def get_config():
    return official("inpaint", "celeb_a", patch=64, model="unet", valid_split="validation", resize_to=64)
