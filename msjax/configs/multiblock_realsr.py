"""Multiblock phased training on RealSR-style paired folders (Canon x2 "LR2": LR at HR size).

    python train.py --config configs/multiblock_realsr.py --workdir runs/multiblock \
        --config.data.train_dir=/data/RealSR/Canon/Train/2_HR \
        --config.data.train_lr_dir=/data/RealSR/Canon/Train/2_LR \
        --config.data.valid_dir=/data/RealSR/Canon/Test/2_HR \
        --config.data.valid_lr_dir=/data/RealSR/Canon/Test/2_LR
    python eval.py --workdir runs/multiblock/joint_low  # the whole chain's best checkpoint
    # the reference scripts' recipe (Adam 1e-4 warm phase, no inheritance):
    #   --config configs/multiblock_realsr.py:adam_only
    # LR at half size instead: --config.task.scale=2 --config.task.upsample_input=True

One command runs every phase into runs/multiblock/<phase> (phase_1, phase_1_plus,
phase_1_plus_low, phase_2, ..., joint, joint_low), keeps each phase's best checkpoint and metrics,
writes runs/multiblock/phases.csv, and resumes where it stopped. Training validates on the
centre 256 x 256 crop of each of the 15 test pairs (the best checkpoint is chosen there); after
each phase its best checkpoint is also scored on the 15 whole test images, as the reference
scores them (eval.whole_valid: whole_psnr / whole_ssim in phases.csv, the restored images
in runs/multiblock/<phase>/eval/; the reference crops images to at most 1500 x 1500 from the top
left, msjax scores them whole). Off: --config.eval.whole_valid=False. A short try:
--config.train.steps=N scales every phase's steps to N in all (at least one each). Each block:
conv, 16 RCAB (64 ch, attention 64->16), convs, input residual, orthogonal init (1.26M
parameters).

The Multiblock report's recipe (default): per
block, N_i unclamped for 2000 steps of Adadelta (lr 1, rho 0.9, eps 1e-6, no weight decay), then
the clamped N_i+ with a fresh Adam, 3000 steps at 1e-4 and 10000 at 1e-5; N_2 and N_3 start as
copies of the trained N_1+ and N_2+ (inheriting initialization); then the chain 5000 at 1e-4 and
5000 at 1e-5. ``adam_only`` is the reference scripts' recipe: the 2000 warm steps with Adam at
1e-4 and every block from a fresh orthogonal init. Both: constant rates with a new optimizer at
each change, L1, HR patch 48, batch 16 (the reference's joint phase used batch 8 of patch 120),
RGB PSNR without border crop. Runtime and result: not measured yet (the seed's author reports
32.22 dB for 3 blocks).
"""

from msjax import defaults

RECIPES = ("seed", "adam_only")


def get_config(recipe="seed"):
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    c = defaults.get_config()
    c.method = "multiblock"
    c.task.name = "sr"
    c.task.scale = 1                   # same-size pairs; the blocks keep the size
    c.task.loss = "l1"
    c.data.source = "paired_folders"
    c.data.patch = 48
    c.data.valid_images = 15
    c.data.valid_patch = 256
    c.model = "multiblock"
    c.model_kwargs = dict(n_feats=64, n_rcab=16, attention_hidden=16)
    c.multiblock.blocks = 3
    c.multiblock.block_steps = 2000
    if recipe == "seed":
        c.multiblock.block_optimizer = "adadelta"  # the warm phase; Adam from N_i+ on
        c.multiblock.block_lr = 1.0
        c.multiblock.inherit = True    # N_i starts from the trained N_{i-1}+
    c.multiblock.plus_steps = 3000
    c.multiblock.plus_lr = 1e-4
    c.multiblock.plus_low_steps = 10000
    c.multiblock.plus_low_lr = 1e-5
    c.multiblock.joint_steps = 5000
    c.multiblock.joint_lr = 1e-4
    c.multiblock.joint_low_steps = 5000
    c.multiblock.joint_low_lr = 1e-5
    c.multiblock.constant_lr = True
    c.mode = "multiscale"              # --config.mode=single for the reference (batch 16)
    c.batch_size = 16
    c.mge.levels = 2                   # 48 -> 24 -> 12
    c.mge.finest_batch = 4
    c.train.optimizer = "adam"
    c.train.lr = 1e-4
    c.train.lr_end = 1e-6
    c.log.eval_every = 500
    c.log.checkpoint_every = 500
    c.eval.crop_border = 0
    c.eval.y_channel = False
    c.eval.whole_valid = True          # the reference's score: whole test images, per phase
    return c
