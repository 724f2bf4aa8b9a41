"""RCAN x2 (10 groups x 20 RCAB x 64, 15.44M parameters) on DIV2K from TFDS, multiscale MGE.

    python train.py --config configs/rcan_div2k_x2.py --workdir runs/rcan_div2k_x2
    python eval.py --workdir runs/rcan_div2k_x2 --benchmark_root /data/benchmark
    # smaller: --config.model_kwargs.n_resgroups=5 --config.model_kwargs.n_resblocks=10
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine
    # x3 / x4 start from this run: configs/rcan_div2k_x3.py, configs/rcan_div2k_x4.py

Needs div2k/bicubic_x2 prepared as ArrayRecord. The paper's optimisation: HR 96, L1, Adam 1e-4
halved every 200k steps, 1M steps; MGE terms of 4/16/64 instead of one batch of 16. Reference:
RCAN x2 reports 38.27 dB (Y) on Set5 after 1M steps at batch 16. Runtime and result of this
config: not measured yet.
"""

from msjax.configs._sr_div2k import div2k_x2


def get_config():
    c = div2k_x2("rcan")
    c.train.steps = 1_000_000          # 1000 epochs x 1000 iterations
    return c
