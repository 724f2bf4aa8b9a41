"""RCAN x2 / x3 / x4 (10 groups x 20 RCAB x 64, 15.44M parameters at x2) on DIV2K from TFDS, MGE.

    python train.py --config configs/rcan_div2k.py        # x2, runs/rcan_div2k_x2
    python train.py --config configs/rcan_div2k.py:x3     # from the x2 run, runs/rcan_div2k_x3
    python train.py --config configs/rcan_div2k.py:x4     # from the x2 run, runs/rcan_div2k_x4
    python eval.py --workdir runs/rcan_div2k_x2 --benchmark_root /data/benchmark
    # smaller: --config.model_kwargs.n_resgroups=5 --config.model_kwargs.n_resblocks=10
    # x3 / x4 from scratch: --config.train.init_from=
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine

Needs div2k/bicubic_x<scale> prepared as ArrayRecord. The paper's optimisation: LR patches 48
(HR 48 x scale), L1, Adam 1e-4 halved every 200k steps, 1M steps; MGE terms of 4/16/64 instead of
one batch of 16; Y-channel PSNR/SSIM with crop = scale. x3 and x4 start from the x2 run's best
checkpoint (the RCAN paper's x3 / x4): tensors whose name and shape match are copied, the run
prints what it skipped, the optimizer starts fresh. Reference: RCAN reports 38.27 / 34.74 / 32.63
dB (Y) on Set5 at x2 / x3 / x4 after 1M steps at batch 16. Runtime and result of this config: not
measured yet.
"""

from msjax.configs import variants
from msjax.configs._sr_div2k import SCALES, div2k


@variants(*SCALES)
def get_config(scale):
    c = div2k("rcan", SCALES[scale])
    c.train.steps = 1_000_000          # 1000 epochs x 1000 iterations
    if scale != "x2":
        c.train.init_from = "runs/rcan_div2k_x2"  # the x2 variant's run; '' trains from scratch
    return c
