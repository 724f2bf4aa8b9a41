"""MSRN x2 (8 MSRB x 64, hierarchical fusion, 5.93M parameters) on DIV2K from TFDS, MGE.

    python train.py --config configs/msrn_div2k_x2.py --workdir runs/msrn_div2k_x2
    python eval.py --workdir runs/msrn_div2k_x2 --benchmark_root /data/benchmark

Needs div2k/bicubic_x2 prepared as ArrayRecord. Same recipe as edsr_div2k_x2 (HR 96, L1, Adam 1e-4
cosine, MGE 4/16/64). Reference: the RGB MSRN x2 reports 38.07 dB (Y) on Set5 after 1M steps.
Runtime and result of this config: not measured yet.
"""

from msjax.configs._sr_div2k import div2k_x2


def get_config():
    return div2k_x2("msrn")
