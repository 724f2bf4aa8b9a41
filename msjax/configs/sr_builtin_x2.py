"""SR x2 demo on the built-in photos with a small EDSR: trains on a CPU in a few minutes, offline.

    python train.py --config configs/sr_builtin_x2.py --workdir runs/sr_builtin_x2
    python eval.py --workdir runs/sr_builtin_x2
    # ECO on top of it: --config.method=eco --config.eco.teacher_workdir=runs/sr_builtin_x2

EDSR with 4 residual blocks x 32 channels on HR patches 64 (LR 32) of the scikit-image photos,
MATLAB-bicubic LR, L1, multiscale MGE (terms of 4/16/64 patches), Adam 2e-3; validation on fixed
crops of two held-out photos, Y-channel PSNR with crop 2 beside the bicubic input's. Measured: 3 min
on 2 busy CPU cores (load ~8), valid PSNR 37.09 dB at step 400 against 35.71 dB for bicubic.
"""

from msjax import defaults


def get_config():
    c = defaults.get_config()
    c.task.name = "sr"
    c.task.scale = 2
    c.task.loss = "l1"
    c.data.source = "builtin"
    c.data.patch = 64
    c.data.valid_images = 8
    c.data.valid_patch = 128
    c.model = "edsr"
    c.model_kwargs = dict(scale=2, n_resblocks=4, n_feats=32)
    c.mode = "multiscale"
    c.batch_size = 8
    c.mge.levels = 2
    c.mge.finest_batch = 4
    c.train.steps = 400
    c.train.lr = 2e-3
    c.log.eval_every = 100
    c.log.every = 20
    c.log.checkpoint_every = 100
    c.eval.crop_border = 2
    c.eval.y_channel = True
    return c
