"""Shared settings of the x2 DIV2K configs (edsr / rcan / msrn): not run directly."""

from msjax import defaults


def div2k_x2(model: str, **model_kwargs):
    """x2 bicubic SR on TFDS div2k: HR patches 96 (LR 48), L1, Adam 1e-4 cosine, multiscale MGE,
    validation on DIV2K validation crops with Y-channel PSNR/SSIM and crop = scale."""
    c = defaults.get_config()
    c.task.name = "sr"
    c.task.scale = 2
    c.task.kernel = "bicubic"          # MATLAB-exact, as the DIV2K / benchmark LR images
    c.task.loss = "l1"                 # the references' loss
    c.data.source = "tfds"
    c.data.name = "div2k/bicubic_x2"   # HR read from it; LR remade on each patch by MATLAB bicubic
    c.data.train_split = "train"
    c.data.valid_split = "validation"
    c.data.patch = 96
    c.data.valid_images = 20
    c.data.valid_patch = 192
    c.model = model
    c.model_kwargs = dict(scale=2, **model_kwargs)
    c.mode = "multiscale"              # --config.mode=single for the reference recipe (batch 16)
    c.batch_size = 16
    c.mge.levels = 2                   # LR 48 -> 24 -> 12
    c.mge.finest_batch = 4             # terms of 4, 16, 64 patches
    c.train.lr = 1e-4
    c.train.lr_end = 1e-6
    c.train.steps = 300_000            # EDSR / RCAN / MSRN: ~300k-1M steps at batch 16
    c.log.eval_every = 2000
    c.log.every = 100
    c.log.checkpoint_every = 2000
    c.eval.crop_border = 2
    c.eval.y_channel = True
    return c


def folder_x2(model: str, **model_kwargs):
    """The same on an image folder (e.g. DIV2K_train_HR / DIV2K_valid_HR as PNG)."""
    c = div2k_x2(model, **model_kwargs)
    c.data.source = "folder"
    c.data.name = ""
    c.data.train_dir = ""              # --config.data.train_dir=/data/DIV2K/DIV2K_train_HR
    c.data.valid_dir = ""              # --config.data.valid_dir=/data/DIV2K/DIV2K_valid_HR
    return c
