"""Shared settings of the DIV2K SR configs (edsr / rcan / msrn, vanilla and ECO): not run alone."""

from msjax import defaults

# The variants of the DIV2K SR configs (configs/edsr_div2k.py:x3) and their scale factors.
SCALES = {"x2": 2, "x3": 3, "x4": 4}
# Full EDSR (32 blocks x 256, residual scale 0.1; 40.7M parameters at x2) in place of the
# EDSR-baseline defaults: the ``full_`` variants (configs/edsr_div2k.py:full_x2), ECO's EDSR.
FULL_EDSR = dict(n_resblocks=32, n_feats=256, res_scale=0.1)
FULL_SCALES = {f"full_{name}": scale for name, scale in SCALES.items()}


def edsr_variant(variant: str):
    """(scale, model_kwargs, x2 variant of the same network) of an EDSR config's variant:
    ``x3`` (EDSR-baseline) or ``full_x3`` (full EDSR)."""
    if variant in FULL_SCALES:
        return FULL_SCALES[variant], FULL_EDSR, "full_x2"
    return SCALES[variant], {}, "x2"


def div2k(model: str, scale: int = 2, **model_kwargs):
    """x``scale`` bicubic SR on TFDS div2k with the EDSR / RCAN / MSRN papers' optimisation: LR
    patches 48 (HR 48 x scale), L1, Adam 1e-4 halved every 200k steps, batch 16 (here as the
    reference of the multiscale MGE terms); validation on DIV2K validation crops with Y-channel
    PSNR/SSIM and crop = scale. The cosine instead: --config.train.lr_schedule=cosine (to
    train.lr_end)."""
    c = defaults.get_config()
    c.task.name = "sr"
    c.task.scale = scale
    c.task.kernel = "bicubic"          # MATLAB-exact, as the DIV2K / benchmark LR images
    c.task.loss = "l1"                 # the references' loss
    c.data.source = "tfds"
    c.data.name = f"div2k/bicubic_x{scale}"  # HR from it; LR remade per patch (MATLAB bicubic)
    c.data.train_split = "train"
    c.data.valid_split = "validation"
    c.data.patch = 48 * scale
    c.data.valid_images = 20
    c.data.valid_patch = 192           # divides by 2, 3 and 4
    c.model = model
    c.model_kwargs = dict(scale=scale, **model_kwargs)
    c.mode = "multiscale"              # --config.mode=single for the reference recipe (batch 16)
    c.batch_size = 16
    c.mge.levels = 2                   # LR 48 -> 24 -> 12
    c.mge.finest_batch = 4             # terms of 4, 16, 64 patches
    c.train.lr = 1e-4
    c.train.lr_schedule = "step"       # the papers: x0.5 every 200k steps
    c.train.lr_step_period = 200_000
    c.train.lr_step_factor = 0.5
    c.train.lr_end = 1e-6              # only for --config.train.lr_schedule=cosine
    c.train.steps = 300_000
    c.log.eval_every = 2000
    c.log.every = 100
    c.log.checkpoint_every = 2000
    c.eval.crop_border = scale
    c.eval.y_channel = True
    return c


def folder_x2(model: str, **model_kwargs):
    """The same on an image folder (e.g. DIV2K_train_HR / DIV2K_valid_HR as PNG)."""
    c = div2k(model, 2, **model_kwargs)
    c.data.source = "folder"
    c.data.name = ""
    c.data.train_dir = ""              # --config.data.train_dir=/data/DIV2K/DIV2K_train_HR
    c.data.valid_dir = ""              # --config.data.valid_dir=/data/DIV2K/DIV2K_valid_HR
    return c


def eco(c):
    """ECO's official training on top of a div2k config: L1 on the 0-255 scale, LAMB with betas
    (0.9, 0.99), eps 1e-6, no bias correction, trust ratio min(|w|, 10) / |r|, peak 3.2e-3 cosine
    to 0, gradient values clipped to 0.1, loss spikes (> 5x the last accepted loss) skipped,
    batch 128 single-scale over 125k steps."""
    c.method = "eco"
    c.eco.schedule = "sigmoid"
    c.eco.shift = 0.0
    c.eco.mix = "pixel"
    c.task.loss = "l1_255"
    c.mode = "single"
    c.batch_size = 128
    c.train.steps = 125_000
    c.train.optimizer = "lamb"
    c.train.lr = 3.2e-3
    c.train.lr_schedule = "cosine"
    c.train.lr_end = 0.0
    c.train.grad_clip_value = 0.1
    # ECO's official LAMB extras (optim.make_optimizer; off by default).
    c.train.beta2 = 0.99
    c.train.lamb_bias_correction = False
    c.train.lamb_max_weight_norm = 10.0
    c.train.loss_spike_factor = 5.0
    c.log.eval_every = 1000
    c.log.checkpoint_every = 1000
    return c
