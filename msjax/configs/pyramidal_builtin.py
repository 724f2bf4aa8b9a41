"""A small pyramidal DenseNet autoencoder removing heavy noise from the built-in photos, on CPU.

    python train.py --config configs/pyramidal_builtin.py --workdir runs/pyramidal_builtin

pyramidal44 (dense blocks 4 | 4 | 4, one pooling; 8 input features, growth 8) on 32x32 patches
of the scikit-image photographs, damage 'noise' (Gaussian, std 125 on the 0-255 scale) by
default; other damages: --config.task.damage=block (jpeg also needs
--config.mge.operator_per_level=False). Full-multiscale MGE over three grids (8, 16, 32 px),
each damaged on its own grid. Validation: fixed 64x64 crops of two held-out photos. Adam at a
constant rate (1e-3 here, 3e-4 in the reference), as the reference has no schedule; set train.lr
and train.lr_end together. Transitions as in the reference's final model (model_kwargs down, up;
densenet.py lists the others).

Measured with a cosine schedule (add --config.train.lr_end=1e-6), not at the constant rate, on a
shared 2-core CPU (load ~8): 300 steps in 3m50s (183 CPU s), valid PSNR 20.2 dB from a damaged
input of 9.3 dB, at 177 work units; --config.mode=single reached 20.3 dB at 300 work units (4m10s).
"""

from msjax import defaults


def get_config():
    c = defaults.get_config()
    c.task.name = "damage"
    c.task.damage = "noise"
    c.task.model_range = "signed"    # the reference's [-1, 1] data for the tanh head
    c.data.source = "builtin"
    c.data.patch = 32
    c.data.valid_patch = 64
    c.data.valid_images = 8
    c.model = "pyramidal"
    c.model_kwargs = dict(variant="pyramidal44", features=8, growth=8, output="tanh",
                          down="maxpool", up="transposed", up_reduction=2)
    c.mode = "fullmultiscale"
    c.batch_size = 8                 # single batch; FMS stages 32, 16 x 2, 8 x 3 (coarse first)
    c.mge.levels = 2
    c.mge.finest_batch = 4           # multiscale: terms of 4, 8, 16
    c.mge.batch_growth = 2
    c.mge.operator_per_level = True  # the same noise strength on every grid, not restricted noise
    c.fms.stage_weights = (4, 2, 1)
    c.train.steps = 300
    c.train.lr = 1e-3
    c.train.lr_end = c.train.lr        # a cosine from lr to lr: constant, like the reference
    c.log.eval_every = 100
    c.log.every = 20
    c.log.checkpoint_every = 100
    c.runtime.fast_compile = True      # on CPU, compiling dominates a run this short
    return c
