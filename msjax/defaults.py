"""Every config field msjax reads, with its default: experiments (``configs/``) start from
``get_config()`` here and change what they need; a saved run's config is read back laid over
these defaults (``msjax.build.saved_config``), so no code repeats a default. ``msjax.build`` is
the one reader of a config: it turns the sections into the typed settings of
``msjax/settings.py``.

Override any field on the command line, e.g.
``python train.py --config configs/deblur_stl10.py --config.mode=fullmultiscale``.

Sections, one line each (``train.py --help`` prints them):
"""

import ml_collections

SECTIONS = {
    "task": "the restoration problem: corruption, model input, loss (msjax/tasks.py)",
    "data": "where images come from and how patches are cut (msjax/data)",
    "model": "the network family by name, model_kwargs its options (msjax/models)",
    "mode": "single | multiscale | fullmultiscale, with batch_size, mge and fms (msjax/multiscale.py)",
    "train": "optimizer, learning-rate schedule, step budget (msjax/optim.py)",
    "log": "how often to log, evaluate and checkpoint; image grids (msjax/logs.py)",
    "eval": "metric conventions and tiled inference (msjax/evaluate.py, msjax/metrics.py)",
    "method": "'' | eco | multiblock, with the eco and multiblock sections (msjax/methods)",
    "runtime": "devices, processes, CPU kernels, compile cost, fault policy: may change on resume",
}

# What may change when a run resumes: msjax/rundir.py (RESUMABLE_SECTIONS, RESUMABLE_SUFFIXES).


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 42
    c.dtype = "float32"            # compute dtype: float32 or bfloat16 (params stay float32)

    c.task = ml_collections.ConfigDict(dict(
        name="deblur",             # denoise | deblur | inpaint | sr | damage
        damage="",                 # damage: one of msjax.damage.DAMAGES (pyramidal suite)
        noise="interpolation",     # denoise: official t-interpolation, or "gaussian"
        sigma=25.0,                # denoise gaussian: sigma on the 0-255 scale
        blur_sigma=(3.0, 3.0),     # deblur: PSF sigma along (H, W) in pixels at the data grid
        level_blur="scaled",       # with mge.operator_per_level: "scaled" (sigma 2^-l) | "fixed"
        t_max=0.1,                 # deblur / inpaint: t ~ t_max U(0,1), y = (1-t) A x + t z
        box_count=(1, 4),          # inpaint: boxes per image (inclusive range)
        box_size=(0.1, 0.3),       # inpaint: box side as a fraction of the image side
        scale=2,                   # sr: upscaling factor
        kernel="bicubic",          # sr: LR made by MATLAB bicubic or antialiased bilinear
        upsample_input=False,      # sr with a size-keeping model: feed it bilinear-upsampled LR
        residual=False,            # output = model(input) + input
        model_range="unit",        # model sees [0, 1] (unit) or [-1, 1] (signed: pyramidal tanh)
        loss="mse",                # mse | l1 | l1_255 (ECO's L1 x 255) | neg_ssim (MGE SR, official)
    ))

    c.data = ml_collections.ConfigDict(dict(
        # official: the official MGE code's data directory as it is (msjax/data/official.py)
        source="builtin",          # builtin | tfds | folder | paired_folders | official
        name="",                   # tfds: e.g. stl10; official: cifar10|stl10|celeba|urban100
        # tfds: its data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets); official: the
        # root holding cifar-10-batches-py/, stl10_binary/, CelebA/, Urban100/
        data_dir="",
        download=True,             # tfds: prepare a missing dataset on first use (needs network)
        train_split="train",       # tfds and official: split names joined by '+'
        valid_split="test",
        train_dir="",              # folder / paired_folders: training images (HR for paired)
        # folder / paired_folders: validation images; builtin / tfds / official: a folder to
        # validate on instead of the dataset's split (a benchmark set such as Set5)
        valid_dir="",
        train_lr_dir="",           # paired_folders: LR images named like their HR partners
        valid_lr_dir="",
        patch=64,                  # training patch side on the data grid (HR side for SR)
        resize_to=0,               # >0: resize whole images to this side first (official: 128)
        resize_mode="square",      # square (size x size) | short_side (keep the aspect)
        resize_method="bicubic",   # bicubic | bilinear | nearest (official collate: nearest)
        normalize=False,           # the model sees (x - mean) / std and the loss is taken there,
        mean=(0.5, 0.5, 0.5),      # as the official loaders' Normalize; data and metrics stay
        std=(0.5, 0.5, 0.5),       # in [0, 1]
        # True: random flips and 90-degree rotations (8 orientations) | hflip: random left-right
        # mirror only (upright content: faces) | False: none. Any type, so that the command line
        # takes --config.data.augment=hflip as well as True / False.
        augment=ml_collections.FieldReference(True, field_type=object),
        valid_images=8,            # how many validation images (fixed crops)
        valid_patch=0,             # validation crop side (0: same as patch)
        bad_images="skip",         # folder images that cannot be used: skip (warn, count) | error
        on_device="auto",          # auto | true | false: train images on device, cut in the step
        device_fraction=0.25,      # auto: on device if the decoded images fit in this share
        host_workers=0,            # host path: threads building batches ahead (0: one per CPU core)
        host_prefetch=4,           # host path: steps built ahead of the one being trained
        host_cache_gib=4.0,        # host path: decoded images kept per process (least recent go)
    ))

    c.model = "resnet"
    c.model_kwargs = ml_collections.ConfigDict()

    c.mode = "multiscale"          # single | multiscale | fullmultiscale
    c.batch_size = 16              # single-scale batch, FMS base batch, and the work-unit reference
    c.mge = ml_collections.ConfigDict(dict(
        levels=3,                  # L coarse levels (multiscale) / J stages - 1 (fullmultiscale)
        batch_sizes=(),            # per-term batches, finest first; () = finest_batch * growth^k
        finest_batch=4,            # paper-faithful default: 4, 16, 64, 256
        batch_growth=4,            # the official code's behaviour is 1 (constant 16)
        restriction="area",        # area | nearest (official) | bilinear
        shared_batch=False,        # one batch for every term (official inpainting)
        operator_per_level=False,  # corrupt each level's clean image (blur sigma scaled 2^-l)
    ))
    c.fms = ml_collections.ConfigDict(dict(
        # Steps per stage, coarse first (official: 2000, 1000, 500, 250); they replace
        # train.steps in fullmultiscale mode. train.py: an explicit --config.train.steps splits
        # in their proportions instead.
        stage_steps=(),
        stage_weights=(),          # without stage_steps: train.steps split by these; () = 2^J:..:2:1
        batch_growth=1,            # per-term batch growth inside a stage (official: constant)
        # Stage j's base batch: batch_size * this^(levels - j). The official 2 stays the default:
        # on an accelerator a small coarse batch leaves it idle (1 won on a 2-core CPU).
        stage_batch_factor=2,
        lr_schedule="",            # fullmultiscale only: replaces train.lr_schedule ('': keep it)
        max_terms=0,               # >0: at most this many terms per stage (0: stage j has j + 1)
        schedule="fixed",          # fixed | adaptive: a coarse stage moves on when it stops paying
        window=200,                # adaptive: steps per mean of the finest-level training loss
        min_improvement=0.01,      # adaptive: move on below this relative gain window to window
        min_share=0.2,             # adaptive: a coarse stage runs at least this share of its steps
        budget_units=0.0,          # adaptive: work units of the run (0: the fixed schedule's)
        # >0: the run was extended (train.py) at this step: its finest stage's later steps train
        # at the rate the schedule had there, held constant (set by msjax, not by hand)
        extended_from=0,
    ))

    c.train = ml_collections.ConfigDict(dict(
        steps=8000,                # total optimizer steps (all FMS stages together)
        optimizer="adam",          # adam | lamb | adadelta (Multiblock seed's warm phase, lr 1)
        lr=5e-4,
        lr_end=1e-6,               # cosine to this over the whole run
        # cosine (one over the run: official MGE) | cosine_per_stage | stage_restarts (FMS: a
        # cosine per stage, each peak stage_peak_decay x the last) | constant_decay (lr, then a
        # cosine over the last decay_fraction) | step (lr_step_factor every lr_step_period)
        lr_schedule="cosine",
        stage_peak_decay=0.5,
        decay_fraction=0.2,
        lr_step_period=200_000,    # step: steps between rate changes (the papers: 200k)
        lr_step_factor=0.5,        # step: the rate's factor at each change (the papers: halved)
        weight_decay=0.0,
        grad_clip_value=0.0,
        grad_clip_norm=0.0,
        beta2=0.999,               # Adam / LAMB second-moment decay (ECO: 0.99)
        lamb_bias_correction=True,  # ECO's official LAMB has none
        lamb_max_weight_norm=0.0,  # >0: cap on the LAMB trust ratio's weight norm (ECO: 10)
        loss_spike_factor=0.0,     # >0: skip a step whose loss exceeds this x the last accepted
        ema_decay=0.0,             # >0: validate and keep an exponential average of the weights
        target_psnr=0.0,           # >0: stop once the validation PSNR (mean of the last 3)
                                   # reaches it, and report what it cost
        init_from="",              # a run directory: start a fresh run from its matching weights
        init_checkpoint="best",    # init_from's checkpoint: best | latest
    ))

    c.log = ml_collections.ConfigDict(dict(
        every=50,                  # steps between train.csv rows and progress updates
        eval_every=500,            # steps between validations (and best-checkpoint candidates)
        checkpoint_every=500,      # steps between plain checkpoints (resume points)
        keep_best=1,               # best checkpoints kept beside the latest
        image_count=8,             # crops per image grid (rows), validation and training
        image_size=128,            # side in pixels each crop is shown at in the grids
        # Weights & Biases beside TensorBoard (pip install 'msjax[wandb]'): the same scalars,
        # image grids and config (msjax/wandb_writer.py)
        wandb=False,
        wandb_project="msjax",
        wandb_mode="",             # online | offline | disabled; empty: WANDB_MODE decides
    ))

    c.eval = ml_collections.ConfigDict(dict(
        crop_border=0,             # pixels cut from each edge before PSNR/SSIM (SR: the scale)
        y_channel=False,           # PSNR/SSIM on BT.601 Y (MATLAB convention) instead of RGB
        tile=0,                    # >0: tiled inference with this tile side for large images
        tile_overlap=16,           # tile margin for image-wide models (others: measured)
        self_ensemble=False,       # x8 flips/rotations at evaluation
        # method=multiblock: after each phase, its best checkpoint scored on the whole validation
        # images (data.valid_lr_dir -> data.valid_dir, as eval.py scores folders) beside the
        # training's fixed crops: whole_psnr / whole_ssim in phases.csv
        whole_valid=False,
    ))

    # Training methods that wrap the loop (msjax/methods): "" (plain), "eco", "multiblock".
    c.method = ""
    # ECO noise-free SR training (methods/eco.py). Its official optimizer extras live in c.train
    # where the optimizer reads them: beta2, lamb_bias_correction, lamb_max_weight_norm,
    # loss_spike_factor (see optim.make_optimizer and configs/eco_edsr.py).
    c.eco = ml_collections.ConfigDict(dict(
        teacher_workdir="",        # run directory (train.py) of the frozen pretrained SR network
        teacher_checkpoint="best",  # best | latest
        schedule="sigmoid",        # teacher-pair weight over progress: sigmoid (official) | linear
        shift=0.0,                 # sigmoid centre shift (positive: a longer teacher-only start)
        mix="pixel",               # pixel: interpolate the pairs | sample: whole pairs, prob alpha
        precompute=False,          # run the teacher once on whole training images, cache to disk
        cache_dir="",              # precompute cache ('' : <workdir>/eco_teacher_pairs)
        tile=0,                    # precompute: teacher tile side for large images (0: whole)
    ))
    # Multiblock phased training (methods/multiblock.py), model="multiblock".
    c.multiblock = ml_collections.ConfigDict(dict(
        blocks=3,                  # m: the chain N_m o ... o N_1
        block_steps=2000,          # phase i: N_i on the frozen N_1..N_{i-1} (official 4 x 500)
        block_optimizer="",        # phase i's optimizer ("": train.optimizer; seed: adadelta)
        block_lr=0.0,              # phase i's learning rate (0: train.lr; seed's Adadelta: 1)
        plus_steps=0,              # >0: then the clamped N_i+ this long (official 26 x 500)
        plus_lr=0.0,               # its learning rate (0: train.lr)
        joint_steps=0,             # >0: then the whole chain fine-tuned (official 20 x 500)
        joint_lr=0.0,              # its learning rate (0: train.lr)
        plus_low_steps=0,          # >0: N_i+ again at plus_low_lr, fresh Adam (official 10000)
        plus_low_lr=0.0,
        joint_low_steps=0,         # >0: the chain again at joint_low_lr, fresh Adam (official 5000)
        joint_low_lr=0.0,
        constant_lr=False,         # each phase at a constant rate (official) instead of a cosine
        inherit=False,             # N_i starts from N_{i-1}'s trained weights
        # >0: every phase's steps scaled so that all phases together run this many (each at
        # least one), in the proportions of the *_steps above. train.py sets it from an explicit
        # --config.train.steps, which the phases' own steps would otherwise replace.
        total_steps=0,
    ))

    # How this process runs the job. None of it changes the result of a run whose steps stay
    # finite, so all of it may change when a run resumes.
    c.runtime = ml_collections.ConfigDict(dict(
        num_devices=0,             # 0: every device; >0: the first N
        distributed=False,         # join a multi-process job (jax.distributed.initialize())
        # Multi-process job layout; unset: $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES /
        # $JAX_PROCESS_ID, else the cluster's auto-detection (SLURM, Open MPI, Cloud TPU).
        coordinator_address="",    # host:port of process 0 (setting it implies distributed)
        num_processes=0,
        process_id=-1,
        cpu_convolutions="auto",   # CPU: auto (fastest here, measured) | onednn | eigen | ynnpack
        cpu_reductions="ynnpack",  # CPU: ynnpack | xla, XLA's reduction kernels
        fast_compile=False,        # CPU: cheap XLA settings: faster compiles, slower steps
        # jax's persistent compilation cache (a rerun or resume loads its programs): '' is
        # ~/.cache/msjax/xla, a path another folder, none off; trust the folder like code
        compilation_cache="",
        compilation_cache_gib=2.0,  # its size bound (least recently used entries go)
        transfer_guard="disallow",  # host<->device copies inside the step loop are errors
        # Steps per compiled call on the device input path (lax.scan): auto (a call of at least
        # 50 ms, from the stage's measured step time) | a number; kept on resume unless given
        steps_per_call="auto",
        # The next stage's step compiles in a background thread while this one trains (device
        # input path; never while CPU kernels are measured): auto | true | false; auto: on,
        # except beside simulated CPU devices
        compile_ahead="auto",
        nonfinite="stop",          # stop | skip: what a NaN/inf loss or gradient does
        max_skipped=0.2,           # skip: stop when more than this share of the last 50 steps
                                   # were skipped
    ))
    return c
