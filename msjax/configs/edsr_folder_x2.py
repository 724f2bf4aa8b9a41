"""EDSR-baseline x2 on a folder of HR images (LR made by MATLAB bicubic), multiscale MGE.

    python train.py --config configs/edsr_folder_x2.py --workdir runs/edsr_folder_x2 \
        --config.data.train_dir=/data/DIV2K/DIV2K_train_HR \
        --config.data.valid_dir=/data/DIV2K/DIV2K_valid_HR
    python eval.py --workdir runs/edsr_folder_x2 --benchmark_root /data/benchmark
    # rcan / msrn on a folder: --config.model=rcan (or msrn); the model_kwargs defaults are full size
    # a cosine to 1e-6 instead of the paper's step decay: --config.train.lr_schedule=cosine

The recipe of configs/edsr_div2k.py at x2 (HR 96, L1, Adam 1e-4 halved every 200k steps, MGE 4/16/64, Y PSNR
crop 2) reading plain image files; unreadable or too small files are skipped with a warning
(data.bad_images). Runtime and result: not measured yet.
"""

from msjax.configs._sr_div2k import folder_x2


def get_config():
    return folder_x2("edsr")
