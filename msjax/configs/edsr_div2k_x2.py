"""EDSR-baseline x2 (16 blocks x 64, 1.37M parameters) on DIV2K from TFDS, multiscale MGE.

    python train.py --config configs/edsr_div2k_x2.py --workdir runs/edsr_div2k_x2
    python eval.py --workdir runs/edsr_div2k_x2 --benchmark_root /data/benchmark --self_ensemble
    # full EDSR (32 x 256, res_scale 0.1, 40.7M): --config.model_kwargs.n_resblocks=32
    #   --config.model_kwargs.n_feats=256 --config.model_kwargs.res_scale=0.1
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine
    # x3 / x4 start from this run: configs/edsr_div2k_x3.py, configs/edsr_div2k_x4.py

Needs div2k/bicubic_x2 prepared as ArrayRecord (the error message says how). HR patches 96 (LR
48), L1, Adam 1e-4 halved every 200k steps (the paper), MGE terms of 4/16/64 patches over 3
levels; validation on 20 crops of DIV2K validation, Y-channel PSNR/SSIM with crop 2. Reference:
EDSR-baseline x2 reaches about 34.6 dB (RGB) on DIV2K validation and 37.99 dB (Y) on Set5 after
~300k steps at batch 16. Runtime and result of this config: not measured yet.
"""

from msjax.configs._sr_div2k import div2k_x2


def get_config():
    return div2k_x2("edsr")
