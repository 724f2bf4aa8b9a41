"""EDSR-baseline x2 / x3 / x4 (16 blocks x 64, 1.37M parameters at x2) on DIV2K from TFDS, MGE.

    python train.py --config configs/edsr_div2k.py        # x2, runs/edsr_div2k_x2
    python train.py --config configs/edsr_div2k.py:x3     # from the x2 run, runs/edsr_div2k_x3
    python train.py --config configs/edsr_div2k.py:x4     # from the x2 run, runs/edsr_div2k_x4
    python eval.py --workdir runs/edsr_div2k_x2 --benchmark_root /data/benchmark --self_ensemble
    # full EDSR (32 x 256, res_scale 0.1, 40.7M): --config.model_kwargs.n_resblocks=32
    #   --config.model_kwargs.n_feats=256 --config.model_kwargs.res_scale=0.1
    # x3 / x4 from scratch: --config.train.init_from=
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine

Needs div2k/bicubic_x<scale> prepared as ArrayRecord (the error message says how). LR patches 48
(HR 48 x scale), L1, Adam 1e-4 halved every 200k steps (the paper), MGE terms of 4/16/64 patches
over 3 levels; validation on 20 crops of DIV2K validation, Y-channel PSNR/SSIM with crop = scale.
x3 and x4 start from the x2 run's best checkpoint, as in the EDSR paper: every tensor whose name
and shape match is copied, the run prints what it skipped (upsampler tensors of another shape or
missing at x2), the optimizer starts fresh. Reference: EDSR-baseline reaches about 34.6 / 30.92 /
28.95 dB (RGB) on DIV2K validation at x2 / x3 / x4, and 37.99 dB (Y) on Set5 at x2, after ~300k
steps at batch 16. Runtime and result of this config: not measured yet.
"""

from msjax.configs import variants
from msjax.configs._sr_div2k import SCALES, div2k


@variants(*SCALES)
def get_config(scale):
    c = div2k("edsr", SCALES[scale])
    if scale != "x2":
        c.train.init_from = "runs/edsr_div2k_x2"  # the x2 variant's run; '' trains from scratch
    return c
