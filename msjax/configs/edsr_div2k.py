"""EDSR-baseline x2 / x3 / x4 (16 blocks x 64, 1.37M parameters at x2), or full EDSR (32 x 256,
res_scale 0.1, 40.7M), on DIV2K from TFDS, MGE.

    python train.py --config configs/edsr_div2k.py        # x2, runs/edsr_div2k_x2
    python train.py --config configs/edsr_div2k.py:x3     # from the x2 run, runs/edsr_div2k_x3
    python train.py --config configs/edsr_div2k.py:x4     # from the x2 run, runs/edsr_div2k_x4
    python train.py --config configs/edsr_div2k.py:full_x2   # full EDSR, runs/edsr_div2k_full_x2
    python train.py --config configs/edsr_div2k.py:full_x3   # from full_x2's run
    python train.py --config configs/edsr_div2k.py:full_x4   # from full_x2's run
    python eval.py --workdir runs/edsr_div2k_x2 --benchmark_root /data/benchmark --self_ensemble
    # x3 / x4 from scratch: --config.train.init_from=
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine

Needs div2k/bicubic_x<scale> prepared as ArrayRecord (the error message says how). LR patches 48
(HR 48 x scale), L1, Adam 1e-4 halved every 200k steps (the paper), MGE terms of 4/16/64 patches
over 3 levels; validation on 20 crops of DIV2K validation, Y-channel PSNR/SSIM with crop = scale.
x3 and x4 start from the x2 run of the same network's best checkpoint, as in the EDSR paper:
every tensor whose name and shape match is copied, the run prints what it skipped (upsampler
tensors of another shape or missing at x2), the optimizer starts fresh. The full variants are
also ECO's EDSR teachers (configs/eco_edsr.py:full_x3 learns from runs/edsr_div2k_full_x3).
Reference: EDSR-baseline reaches about 34.6 / 30.92 / 28.95 dB (RGB) on DIV2K validation at
x2 / x3 / x4, and 37.99 dB (Y) on Set5 at x2, after ~300k steps at batch 16; full EDSR 35.03 /
31.26 / 29.25 dB. Runtime and result of this config: not measured yet.
"""

from msjax.configs import variants
from msjax.configs._sr_div2k import FULL_SCALES, SCALES, div2k, edsr_variant


@variants(*SCALES, *FULL_SCALES)
def get_config(variant):
    scale, model_kwargs, x2 = edsr_variant(variant)
    c = div2k("edsr", scale, **model_kwargs)
    if variant != x2:
        c.train.init_from = f"runs/edsr_div2k_{x2}"  # the x2 variant's run; '' from scratch
    return c
