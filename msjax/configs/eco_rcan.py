"""ECO x2 / x3 / x4 with RCAN (10 groups x 20 RCAB x 64, 15.44M parameters at x2): noise-free
early steps from a frozen RCAN teacher, ECO's official recipe.

    # 1. the teachers: vanilla RCAN runs of each scale (x3 / x4 start from the x2 run)
    python train.py --config configs/rcan_div2k.py                  # runs/rcan_div2k_x2
    python train.py --config configs/rcan_div2k.py:x3               # runs/rcan_div2k_x3
    python train.py --config configs/rcan_div2k.py:x4               # runs/rcan_div2k_x4
    # 2. ECO x2 learning from the x2 teacher, then x3 / x4 from ECO x2's weights
    python train.py --config configs/eco_rcan.py --config.eco.teacher_workdir=runs/rcan_div2k_x2
    python train.py --config configs/eco_rcan.py:x3   # teacher runs/rcan_div2k_x3
    python train.py --config configs/eco_rcan.py:x4   # teacher runs/rcan_div2k_x4
    python eval.py --workdir runs/eco_rcan_x4 --benchmark_root /data/benchmark
    # x3 / x4 from scratch: --config.train.init_from=

The same official training as configs/eco_edsr.py (L1 x 255, ECO's LAMB at 3.2e-3 cosine to 0,
clip 0.1, loss-spike skip, batch 128 single-scale over 125k steps, LR patch 48), validating every
250 steps as ECO's RCAN configs do (2000 // 8). x2 names no teacher (step 2 gives it). Reference:
ECO RCAN reports 38.28 / 34.86 / 32.70 dB (Y) on Set5 at x2 / x3 / x4, against 38.26 / 34.80 /
32.71 dB for its vanilla twin. Runtime and result of this config: not measured yet.
"""

from msjax.configs import variants
from msjax.configs._sr_div2k import SCALES, div2k, eco


@variants(*SCALES)
def get_config(variant):
    c = eco(div2k("rcan", SCALES[variant]))
    c.log.eval_every = 250                 # ECO's RCAN configs: every 2000 // 8 steps
    if variant != "x2":
        c.train.init_from = "runs/eco_rcan_x2"                 # ECO x2's run; '' from scratch
        c.eco.teacher_workdir = f"runs/rcan_div2k_{variant}"   # the vanilla run of this scale
    return c
