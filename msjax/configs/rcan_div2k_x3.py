"""RCAN x3 on DIV2K from TFDS, started from the x2 run's weights (the RCAN paper's x3/x4).

    python train.py --config configs/rcan_div2k_x2.py --workdir runs/rcan_div2k_x2  # first
    python train.py --config configs/rcan_div2k_x3.py --workdir runs/rcan_div2k_x3 \
        --config.train.init_from=runs/rcan_div2k_x2
    python eval.py --workdir runs/rcan_div2k_x3 --benchmark_root /data/benchmark
    # from scratch: --config.train.init_from=
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine

Every tensor of the x2 run's best checkpoint whose name and shape match is copied; the run prints
what it skipped (upsampler tensors of another shape or missing at x2), the optimizer starts fresh.
Needs div2k/bicubic_x3 prepared as ArrayRecord. HR patches 144 (LR 48), L1, Adam 1e-4 halved
every 200k steps, 1M steps, MGE terms of 4/16/64 patches; Y-channel PSNR/SSIM with crop 3.
Reference: RCAN x3 reports 34.74 dB (Y) on Set5. Runtime and result of this config: not measured
yet.
"""

from msjax.configs._sr_div2k import div2k


def get_config():
    c = div2k("rcan", 3)
    c.train.steps = 1_000_000
    c.train.init_from = "runs/rcan_div2k_x2"  # the x2 run above; '' trains from scratch
    return c
