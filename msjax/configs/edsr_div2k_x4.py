"""EDSR-baseline x4 on DIV2K from TFDS, started from the x2 run's weights (the EDSR paper's x3/x4).

    python train.py --config configs/edsr_div2k_x2.py --workdir runs/edsr_div2k_x2  # first
    python train.py --config configs/edsr_div2k_x4.py --workdir runs/edsr_div2k_x4 \
        --config.train.init_from=runs/edsr_div2k_x2
    python eval.py --workdir runs/edsr_div2k_x4 --benchmark_root /data/benchmark --self_ensemble
    # from scratch: --config.train.init_from=
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine

Every tensor of the x2 run's best checkpoint whose name and shape match is copied; the run prints
what it skipped (upsampler tensors of another shape or missing at x2), the optimizer starts fresh.
Needs div2k/bicubic_x4 prepared as ArrayRecord. HR patches 192 (LR 48), L1, Adam 1e-4 halved
every 200k steps, MGE terms of 4/16/64 patches; Y-channel PSNR/SSIM with crop 4. Reference:
EDSR-baseline x4 reaches 28.95 dB (RGB) on DIV2K validation. Runtime and result of this config: not
measured yet.
"""

from msjax.configs._sr_div2k import div2k


def get_config():
    c = div2k("edsr", 4)
    c.train.init_from = "runs/edsr_div2k_x2"  # the x2 run above; '' trains from scratch
    return c
