"""MSRN x2 (8 MSRB x 64, hierarchical fusion, 5.93M parameters) on DIV2K from TFDS, MGE.

    python train.py --config configs/msrn_div2k_x2.py --workdir runs/msrn_div2k_x2
    python eval.py --workdir runs/msrn_div2k_x2 --benchmark_root /data/benchmark
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine
    # x3 / x4: --config.task.scale=3 --config.model_kwargs.scale=3 --config.data.patch=144
    #   --config.data.name=div2k/bicubic_x3 --config.eval.crop_border=3 (MSRN trains them from
    #   scratch; a warm start from this run: --config.train.init_from=runs/msrn_div2k_x2)

Needs div2k/bicubic_x2 prepared as ArrayRecord. The RGB retrain's optimisation: HR 96, L1, Adam
1e-4 halved every 200k steps, 1M steps; MGE terms of 4/16/64 instead of one batch of 16.
Reference: the RGB MSRN x2 reports 38.07 dB (Y) on Set5 after 1M steps. Runtime and result of
this config: not measured yet.
"""

from msjax.configs._sr_div2k import div2k_x2


def get_config():
    c = div2k_x2("msrn")
    c.train.steps = 1_000_000          # 1000 epochs x 1000 iterations
    return c
