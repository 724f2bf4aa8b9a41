"""ECO x2 / x3 / x4 with EDSR-baseline, or with full EDSR (ECO's own EDSR): noise-free early
steps from a frozen teacher, official recipe.

    # 1. the teacher: a vanilla run of the same model and scale (any msjax SR run works)
    python train.py --config configs/edsr_div2k.py                  # runs/edsr_div2k_x2
    # 2. ECO, starting on (LR_pre, SR_pre) and moving to (LR, HR) by the clipped sigmoid
    python train.py --config configs/eco_edsr.py --config.eco.teacher_workdir=runs/edsr_div2k_x2
    # 3. x3 and x4: the vanilla teacher of the scale, then ECO from ECO x2's weights
    python train.py --config configs/edsr_div2k.py:x3               # runs/edsr_div2k_x3
    python train.py --config configs/eco_edsr.py:x3                 # runs/eco_edsr_x3
    python train.py --config configs/edsr_div2k.py:x4               # runs/edsr_div2k_x4
    python train.py --config configs/eco_edsr.py:x4                 # runs/eco_edsr_x4
    python eval.py --workdir runs/eco_edsr_x3 --benchmark_root /data/benchmark
    # full EDSR (32 x 256, res_scale 0.1), as in the ECO paper, with full-EDSR teachers:
    python train.py --config configs/edsr_div2k.py:full_x2          # runs/edsr_div2k_full_x2
    python train.py --config configs/eco_edsr.py:full_x2 \
        --config.eco.teacher_workdir=runs/edsr_div2k_full_x2        # runs/eco_edsr_full_x2
    python train.py --config configs/eco_edsr.py:full_x3   # teacher runs/edsr_div2k_full_x3
    python train.py --config configs/eco_edsr.py:full_x4   # teacher runs/edsr_div2k_full_x4
    # --config.eco.schedule=linear | --config.eco.mix=sample | --config.eco.precompute=True
    # validate on Set5 as ECO does: --config.data.valid_dir=/data/benchmark/Set5/HR
    # x3 / x4 from scratch: --config.train.init_from=
    # RCAN students and teachers: configs/eco_rcan.py

The official training: L1 on the 0-255 scale, LAMB with betas (0.9, 0.99), eps 1e-6, no bias
correction, trust ratio min(|w|, 10) / |r|, peak 3.2e-3 (ECO's "lrx2") cosine to 0, gradient
values clipped to 0.1, a step whose loss exceeds 5x the last accepted one skipped, batch 128
single-scale over 125k steps, LR patch 48 (HR 48 x scale), Y-channel crop = scale. ECO initialises
x3 and x4 from the x2 checkpoint of the same method (ECO from ECO, vanilla from vanilla): every
tensor whose name and shape match is copied, upsampler tensors of another shape or missing at x2
are skipped (the run prints the list), the optimizer starts fresh; x2 names no teacher (step 2
gives it). MGE instead: --config.mode=multiscale (the mixed pairs are restricted level by level
like any LR/HR pair). Reference (full EDSR): ECO EDSR x2 reports +0.1 dB Set5 / +0.24 dB
Urban100 over its vanilla twin; x3 34.80 dB and x4 32.59 dB (Y) on Set5 against 34.70 and
32.50 dB. Runtime and result of this config: not measured yet.
"""

from msjax.configs import variants
from msjax.configs._sr_div2k import FULL_SCALES, SCALES, div2k, eco, edsr_variant


@variants(*SCALES, *FULL_SCALES)
def get_config(variant):
    scale, model_kwargs, x2 = edsr_variant(variant)
    c = eco(div2k("edsr", scale, **model_kwargs))
    if variant != x2:
        c.train.init_from = f"runs/eco_edsr_{x2}"              # ECO x2's run; '' from scratch
        c.eco.teacher_workdir = f"runs/edsr_div2k_{variant}"   # the vanilla run of this scale
        c.log.eval_every = 250             # ECO validates x3 / x4 every 2000 // 8 steps
    return c
