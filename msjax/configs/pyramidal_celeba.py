"""The pyramidal DenseNet autoencoder (103 layers, 9.36M parameters) undoing a damage on CelebA.

    python train.py --config configs/pyramidal_celeba.py --workdir runs/pyramidal_noise
    python train.py --config configs/pyramidal_celeba.py --workdir runs/pyramidal_block --config.task.damage=block

The reference's four CelebA experiments are --config.task.damage=noise|pixelate|block|squares
(grid, blur and jpeg work too). 64x64 crops of aligned faces: each 218x178 image is resized to
87x71 (bicubic, the shorter side to 71 keeping the aspect, as the reference), cropped at random
and mirrored left-right with probability 1/2 (data.augment=hflip, the reference's
RandomHorizontalFlip; it centre-crops after a small random affine and a colour jitter, which
msjax does not do); validation takes the centre crop of 256 validation faces with the fixed
damage, as the reference.
The model sees [-1, 1] data like the reference (task.model_range=signed) and ends in tanh.
Adam at the reference's constant rate 3e-4 (it has no schedule); to change the rate, set
train.lr and train.lr_end together. The reference's other transitions:
--config.model_kwargs.down=avgpool, --config.model_kwargs.up=transposed_ext (channels
c -> c // up_reduction) or pixel_shuffle.
Needs celeb_a prepared once as ArrayRecord (README, "Datasets"). Not timed here (no GPU or
CelebA on the machine this was written on); expect hours on one GPU for 50k steps.
"""

from msjax import defaults


def get_config():
    c = defaults.get_config()
    c.task.name = "damage"
    c.task.damage = "noise"
    c.task.model_range = "signed"
    c.data.source = "tfds"
    c.data.name = "celeb_a"
    c.data.valid_split = "validation"
    c.data.resize_to = 71
    c.data.resize_mode = "short_side"
    c.data.patch = 64
    c.data.augment = "hflip"         # the reference's RandomHorizontalFlip: faces stay upright
    c.data.valid_images = 256
    c.model = "pyramidal"
    c.model_kwargs = dict(variant="pyramidal103", features=48, growth=16, output="tanh",
                          down="maxpool", up="transposed", up_reduction=2)  # the final model's
    # Five poolings need sides that divide by 32, so on 64x64 crops MGE has one coarse level.
    c.mode = "multiscale"
    c.batch_size = 80                # the reference's batch (single mode, FMS base)
    c.mge.levels = 1
    c.mge.finest_batch = 20
    c.mge.batch_growth = 4           # terms of 20 at 64x64 and 80 at 32x32
    c.fms.stage_weights = (2, 1)
    c.train.steps = 50_000
    c.train.lr = 3e-4                # the reference's Adam rate
    c.train.lr_end = c.train.lr      # a cosine from lr to lr: the reference's constant rate
    c.train.weight_decay = 1e-4      # the reference's coupled L2 (torch Adam weight_decay)
    c.log.eval_every = 1000
    c.log.checkpoint_every = 1000
    c.log.every = 100
    return c
