"""Deblurring on STL-10 (train+unlabelled, 105k images at 96x96), the paper's main deblur setup.

    python train.py --config configs/deblur_stl10.py                  # runs/deblur_stl10
    python train.py --config configs/deblur_stl10.py:two_grids  # full multiscale, as measured
    python train.py --config configs/deblur_stl10.py --config.mode=fullmultiscale  # the paper's
    python train.py --config configs/deblur_stl10.py:official         # the official code's choices
    # the official code's data directory as it is (DATA/stl10_binary/):
    python train.py --config configs/deblur_stl10.py \
        --config.data.source=official --config.data.data_dir=/path/to/DATA
    python eval.py --workdir runs/deblur_stl10

STL-10 is downloaded and prepared on the first run (README, "Datasets"). Official schedule: Adam
5e-4 cosine to 1e-6, 8000 steps (single / multiscale) or 2000/1000/500/250 (full multiscale).
Not run here (no GPU, no network): expect hours on one GPU for 8000 ResNet steps; full
multiscale costs about 5.5x fewer work units, ``:two_grids`` 2.5x (the start banner prints the
schedule's units).
"""

from msjax.configs._official import official


def get_config(variant=""):
    c = official("deblur", "stl10", patch=96, model="resnet", train_split="train+unlabelled",
                 variant=variant)
    # y = (1-t) A x + t z: Gaussian PSF sigma 3 (FFT, circular), t ~ 0.1 U(0,1). Native 96 px:
    # 96 / 2^3 = 12 at the coarsest level.
    return c
