"""The official MGE experiments' shared recipe: TFDS data, Adam 5e-4 cosine to 1e-6, 8000 steps
(single / multiscale) or 2000/1000/500/250 (full multiscale), batch 16, validation on 512 images.

msjax departs from the official code on purpose in a few places (README, "Differences from the
official code"); the ``official`` variant of every paper config (``--config
configs/deblur_stl10.py:official``) restores the official code's choices where they are not
defects: nearest restriction, a constant batch of 16 per term, one shared batch for inpainting,
whole images resized to 128 x 128 and normalised as its loaders do, and no flips or rotations.
"""

from msjax import defaults

# The official loaders' Normalize(mean, std): STL-10's measured statistics, 0.5 elsewhere.
NORMALIZE = {"stl10": ((0.4467, 0.4398, 0.4066), (0.2240, 0.2215, 0.2239))}
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
OFFICIAL_STAGE_STEPS = (2000, 1000, 500, 250)


def official(task: str, dataset: str, patch: int, model: str, *, valid_split: str = "test",
             train_split: str = "train", resize_to: int = 0, variant: str = ""):
    c = defaults.get_config()
    c.task.name = task
    c.data.source = "tfds"
    c.data.name = dataset
    c.data.train_split = train_split
    c.data.valid_split = valid_split
    c.data.patch = patch
    c.data.resize_to = resize_to     # whole images resized to this side before cropping (0: off)
    c.data.valid_images = 512        # the official code validates on 512 images
    c.model = model
    c.mode = "multiscale"
    c.mge.levels = 3                 # coarsest level patch / 8
    c.batch_size = 16
    c.train.lr = 5e-4
    c.train.steps = 8000             # single / multiscale: the official 4 x 2000
    c.fms.stage_steps = OFFICIAL_STAGE_STEPS
    # Full multiscale trains at the full rate through the coarse stages and decays over the last
    # fifth of the run (the finest stage and the end of the one before): with the official
    # single cosine the finest stage runs at the schedule's tail (docs/cost_to_quality.md).
    c.fms.lr_schedule = "constant_decay"
    c.log.eval_every = 250
    if variant == "official":
        official_code(c, dataset)
    elif variant == "two_grids" and task == "deblur":
        deblur_two_grids(c)
    elif variant:
        measured = " or ':two_grids'" if task == "deblur" else ""
        raise ValueError(f"unknown config variant {variant!r}; use ':official'{measured} or none")
    return c


def deblur_two_grids(c):
    """Full multiscale as measured on deblurring (docs/cost_to_quality.md): two grids, half the
    patch then the patch, 4:1 of single's steps, each stage one single-scale term on its grid,
    the blur applied on each grid with the same sigma in pixels. A grid smaller than the PSF's
    support (three grids on 64 px patches: 16 px against 19) trained a stage that did not
    transfer, so a patch whose half is smaller than the support gets no full-multiscale preset."""
    from msjax.operators import psf_support

    support = psf_support(c.task.blur_sigma)
    if c.data.patch // 2 < support:
        raise ValueError(
            f"{c.data.patch} px patches leave a {c.data.patch // 2} px coarse grid, smaller than "
            f"the blur's {support} px support: full multiscale has no grid to save on here "
            "(docs/cost_to_quality.md); train without ':two_grids'")
    c.mode = "fullmultiscale"
    c.mge.levels = 1
    c.fms.stage_steps = ()
    c.fms.stage_weights = (4, 1)     # train.steps (single's 8000) split 6400 / 1600
    c.fms.max_terms = 1
    c.mge.operator_per_level = True
    c.task.level_blur = "fixed"
    c.fms.lr_schedule = "constant_decay"  # full rate, a cosine over the last fifth


def official_code(c, dataset: str):
    """The official code's choices (not its defects) on top of the paper config ``c``."""
    c.mge.restriction = "nearest"            # F.interpolate's default: keep the even pixels
    c.fms.lr_schedule = ""                   # one cosine over all stages, as train.lr_schedule
    c.mge.finest_batch = c.batch_size        # a constant batch per term ...
    c.mge.batch_growth = 1                   # ... (the paper's figure grows it 4x per level)
    c.mge.shared_batch = c.task.name == "inpaint"  # inpainting reuses one batch for every term
    # Loaders: whole images to 128 x 128 (CIFAR-10 denoising by a bilinear Resize, the others by
    # the nearest-neighbour collate), then Normalize(mean, std).
    c.data.resize_to = 128
    c.data.resize_method = "bilinear" if (dataset == "cifar10" and c.task.name == "denoise") \
        else "nearest"
    c.data.patch = 128
    c.data.normalize = True
    c.data.mean, c.data.std = NORMALIZE.get(dataset, HALF)
    c.data.augment = False                   # the official loaders neither flip nor rotate
    return c
