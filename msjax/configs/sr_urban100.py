"""Super-resolution x2 on an Urban100-style image folder with the official SRNet (or ResNet-9).

    python train.py --config configs/sr_urban100.py --workdir runs/sr_urban100 \
        --config.data.train_dir=/data/Urban100/train --config.data.valid_dir=/data/Urban100/test
    # the official code's data directory as it is (DATA/Urban100/{low,high}_res_{train,test}.pt):
    python train.py --config configs/sr_urban100.py \
        --config.data.source=official --config.data.data_dir=/path/to/DATA
    # the SR ResNet option (hidden 100, 9 blocks, no time, 1,622,503 parameters): the config
    # argument picks it, --config configs/sr_urban100.py:resnet
    # every MGE mode: --config.mode=single|multiscale|fullmultiscale
    # MSE instead of the official loss: --config.task.loss=mse
    python eval.py --workdir runs/sr_urban100 --benchmark_root /data/benchmark

The official recipe: 128x128 HR patches (64x64 LR), the network sees the bilinear x2 upsampled LR
and adds it back, loss -SSIM (11x11 Gaussian window, sigma 1.5, zero padding 5, so the coarse
levels' small patches have one too; telescoped like any loss, so the logged losses are
differences of -SSIM values), Adam 1e-3, base batch 8. LR made by MATLAB-exact bicubic. Y-channel
PSNR/SSIM (valid-region SSIM, no padding) with the border crop equal to the scale, as in the SR
literature.
"""

from msjax import defaults


def get_config(model="srnet"):
    c = defaults.get_config()
    c.task.name = "sr"
    c.task.scale = 2
    c.task.kernel = "bicubic"
    c.task.upsample_input = True
    c.task.residual = True
    c.task.loss = "neg_ssim"           # the official SR loss (msjax.metrics.ssim_zero_padded_batch)
    c.data.source = "folder"
    c.data.name = "urban100"             # what data.source=official reads
    c.data.patch = 128
    c.data.valid_images = 200
    c.model = model
    if model == "resnet":  # the official SR option of the plain residual network
        c.model_kwargs = dict(hidden=100, nlayers=9, time_embed=False)
    c.mode = "multiscale"
    c.batch_size = 8
    c.mge.finest_batch = 2
    c.mge.levels = 3
    c.train.lr = 1e-3
    c.train.steps = 8000                 # single / multiscale: the official 4 x 2000
    c.fms.stage_steps = (2000, 1000, 500, 250)
    c.log.eval_every = 250
    c.eval.crop_border = 2
    c.eval.y_channel = True
    return c
