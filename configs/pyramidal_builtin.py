"""A small pyramidal DenseNet autoencoder removing heavy noise from the built-in photos, on CPU.

    python train.py --config configs/pyramidal_builtin.py --workdir runs/pyramidal_builtin

pyramidal44 (dense blocks 4 | 4 | 4, one pooling; 8 input features, growth 8) on 32x32 patches
of the scikit-image photographs, damage 'noise' (Gaussian, std 125 on the 0-255 scale) by
default; any damage works (--config.task.damage=block). Multiscale MGE with two coarse levels
(terms of 4, 8, 16 patches at 32, 16, 8 pixels). Validation: fixed 64x64 crops of two held-out
photos.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.task.name = "damage"
    c.task.damage = "noise"
    c.task.model_range = "signed"    # the reference's [-1, 1] data for the tanh head
    c.data.source = "builtin"
    c.data.patch = 32
    c.data.valid_patch = 64
    c.data.valid_images = 8
    c.model = "pyramidal"
    c.model_kwargs = dict(variant="pyramidal44", features=8, growth=8, output="tanh")
    c.mode = "multiscale"
    c.batch_size = 8
    c.mge.levels = 2
    c.mge.finest_batch = 4
    c.mge.batch_growth = 2
    c.fms.stage_weights = (4, 2, 1)
    c.train.steps = 300
    c.train.lr = 1e-3
    c.train.eval_every = 100
    c.train.log_every = 20
    c.train.checkpoint_every = 100
    c.train.fast_compile = True      # on CPU, compiling dominates a run this short
    return c
