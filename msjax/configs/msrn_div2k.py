"""MSRN x2 / x3 / x4 (8 MSRB x 64, hierarchical fusion, 5.93M parameters at x2) on DIV2K from
TFDS, MGE.

    python train.py --config configs/msrn_div2k.py        # x2, runs/msrn_div2k_x2
    python train.py --config configs/msrn_div2k.py:x3     # runs/msrn_div2k_x3
    python train.py --config configs/msrn_div2k.py:x4     # runs/msrn_div2k_x4
    python eval.py --workdir runs/msrn_div2k_x2 --benchmark_root /data/benchmark
    # x3 / x4 warm-started from the x2 run: --config.train.init_from=runs/msrn_div2k_x2
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine

Needs div2k/bicubic_x<scale> prepared as ArrayRecord. The RGB retrain's optimisation: LR patches
48 (HR 48 x scale), L1, Adam 1e-4 halved every 200k steps, 1M steps, each scale from scratch (as
MSRN trains them); MGE terms of 4/16/64 instead of one batch of 16; Y-channel PSNR/SSIM with
crop = scale. Reference: the RGB MSRN x2 reports 38.07 dB (Y) on Set5 after 1M steps. Runtime
and result of this config: not measured yet.
"""

from msjax.configs import variants
from msjax.configs._sr_div2k import SCALES, div2k


@variants(*SCALES)
def get_config(scale):
    c = div2k("msrn", SCALES[scale])
    c.train.steps = 1_000_000          # 1000 epochs x 1000 iterations
    return c
