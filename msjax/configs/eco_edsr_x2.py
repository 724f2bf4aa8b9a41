"""ECO x2 with EDSR-baseline: noise-free early steps from a frozen teacher, official recipe.

    # 1. the teacher: a vanilla run of the same model (any msjax SR run directory works)
    python train.py --config configs/edsr_div2k_x2.py --workdir runs/edsr_div2k_x2
    # 2. ECO, starting on (LR_pre, SR_pre) and moving to (LR, HR) by the clipped sigmoid
    python train.py --config configs/eco_edsr_x2.py --workdir runs/eco_edsr_x2 \
        --config.eco.teacher_workdir=runs/edsr_div2k_x2
    # --config.eco.schedule=linear | --config.eco.mix=sample | --config.eco.precompute=True
    # full EDSR as in the paper: --config.model_kwargs.n_resblocks=32 ... (and its teacher)
    # x3 / x4 start from this run: configs/eco_edsr_x3.py, configs/eco_edsr_x4.py

The official training (reference/seed_methods.md a.4): L1 on the 0-255 scale, LAMB with betas
(0.9, 0.99), eps 1e-6, no bias correction, trust ratio min(|w|, 10) / |r|, peak 3.2e-3 (ECO's
"lrx2") cosine to 0, gradient values clipped to 0.1, a step whose loss exceeds 5x the last accepted
one skipped, batch 128 single-scale over 125k steps, HR patch 96. MGE instead:
--config.mode=multiscale (the mixed pairs are restricted level by level like any LR/HR pair).
Reference: ECO EDSR x2 reports +0.1 dB Set5 / +0.24 dB Urban100 over its vanilla twin.
Runtime and result of this config: not measured yet.
"""

from msjax.configs._sr_div2k import div2k_x2, eco


def get_config():
    return eco(div2k_x2("edsr"))
