"""Config validation before any data is read or anything compiles: one clear line per problem.

``build.experiment`` calls ``validate(config)`` on the fields, then ``validate_stages`` on the
stages and task it built from them (each built once)."""

from __future__ import annotations

from msjax import damage, multiscale, operators, optim, tasks
from msjax.data import SOURCES
from msjax.data.pipeline import RESIZE_METHODS, RESIZE_MODES
from msjax.data.sampler import orientations
from msjax.errors import ConfigError
from msjax.models import MODELS, check_options, size_multiple
from msjax.resize import RESTRICTIONS


# jax.transfer_guard's levels.
TRANSFER_GUARDS = ("allow", "log", "disallow", "log_explicit", "disallow_explicit")


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def _one_of(value, choices, field):
    _check(value in choices, f"{field}={value!r} is unknown; choose one of {', '.join(choices)}")


def validate(config) -> None:
    """Raises ConfigError on the first impossible setting (the runtime section's kernels are
    checked by the backend that runs them, ``backend.make_backend``). Reads no data and starts
    no jax backend, so the command line calls it before anything else."""
    c = config
    _one_of(c.mode, multiscale.MODES, "mode")
    _one_of(c.model, MODELS.names(), "model")
    check_options(c.model, c.model_kwargs)
    _one_of(c.task.name, tasks.TASKS.names(), "task.name")
    _one_of(c.task.loss, tasks.LOSSES, "task.loss")
    _one_of(c.task.model_range, tasks.MODEL_RANGES, "task.model_range")
    _one_of(c.data.source, SOURCES.names(), "data.source")
    _one_of(c.mge.restriction, RESTRICTIONS, "mge.restriction")
    _one_of(c.dtype, ("float32", "bfloat16"), "dtype")
    _one_of(c.train.optimizer, optim.OPTIMIZERS, "train.optimizer")
    _one_of(c.data.bad_images, ("skip", "error"), "data.bad_images")
    _one_of(c.data.resize_mode, RESIZE_MODES, "data.resize_mode")
    _one_of(c.data.resize_method, RESIZE_METHODS, "data.resize_method")
    _one_of(str(c.data.on_device).lower(), ("auto", "true", "false"), "data.on_device")
    try:
        orientations(c.data.augment)
    except ValueError as e:
        raise ConfigError(f"{e} (True: flips and 90-degree rotations, hflip: left-right "
                          "flips only, False: none)") from None
    _check(0 < c.data.device_fraction <= 1,
           f"data.device_fraction={c.data.device_fraction} must lie in (0, 1]")
    _check(c.data.host_prefetch >= 1, f"data.host_prefetch={c.data.host_prefetch} must be >= 1")
    _check(c.data.host_workers >= 0 and c.data.host_cache_gib >= 0,
           "data.host_workers and data.host_cache_gib must be >= 0 (0 workers: one per core)")
    if c.data.normalize:
        _check(len(c.data.mean) == 3 and len(c.data.std) == 3 and min(c.data.std) > 0,
               f"data.normalize needs three channel means and three positive stds, not "
               f"mean={tuple(c.data.mean)} std={tuple(c.data.std)}")
    _one_of(c.runtime.nonfinite, ("stop", "skip"), "runtime.nonfinite")
    _check(0 <= c.runtime.max_skipped <= 1, f"runtime.max_skipped={c.runtime.max_skipped} "
           "must lie in [0, 1] (the share of the last 50 steps that may be skipped)")
    _one_of(c.runtime.transfer_guard, TRANSFER_GUARDS, "runtime.transfer_guard")
    _check(c.runtime.num_devices >= 0, f"runtime.num_devices={c.runtime.num_devices} must be "
           ">= 0; set 0 (every device) or a number of devices")
    _one_of(str(c.runtime.compile_ahead).strip().lower(), ("auto", "true", "false"),
            "runtime.compile_ahead")
    per_call = str(c.runtime.steps_per_call).strip().lower()
    _check(per_call == "auto" or (per_call.isdigit() and int(per_call) >= 1),
           f"runtime.steps_per_call={c.runtime.steps_per_call!r} must be auto or a whole number "
           ">= 1")
    _one_of(c.train.lr_schedule, optim.LR_SCHEDULES, "train.lr_schedule")
    if c.fms.lr_schedule:
        _one_of(c.fms.lr_schedule, optim.LR_SCHEDULES, "fms.lr_schedule")
    _one_of(c.train.init_checkpoint, ("best", "latest"), "train.init_checkpoint")
    _one_of(c.fms.schedule, ("fixed", "adaptive"), "fms.schedule")
    if c.fms.schedule == "adaptive":
        _check(c.mode == "fullmultiscale", "fms.schedule=adaptive schedules full-multiscale "
               "stages; set --config.mode=fullmultiscale or fms.schedule=fixed")
        _check(c.fms.window > 0 and c.fms.window % c.log.every == 0,
               f"fms.window={c.fms.window} must be a positive multiple of log.every="
               f"{c.log.every} (the loss is read at log steps)")
        _check(0 < c.fms.min_share <= 1 and c.fms.min_improvement >= 0,
               "fms.min_share must lie in (0, 1] and fms.min_improvement be >= 0")
    _check(0 <= c.train.ema_decay < 1, f"train.ema_decay={c.train.ema_decay} must lie in [0, 1)")
    _check(c.train.steps > 0, f"train.steps={c.train.steps} must be positive")
    _check(c.train.lr > 0, f"train.lr={c.train.lr} must be positive")
    for field in ("grad_clip_norm", "grad_clip_value", "weight_decay"):
        _check(c.train[field] >= 0, f"train.{field}={c.train[field]} must be >= 0 (0: off)")
    _check(0 <= c.train.beta2 < 1, f"train.beta2={c.train.beta2} must lie in [0, 1) (Adam's "
           "0.999, ECO's 0.99)")
    _check(c.train.loss_spike_factor >= 0,
           f"train.loss_spike_factor={c.train.loss_spike_factor} must be >= 0 (0: off)")
    _check(c.fms.extended_from == 0 or (c.mode == "fullmultiscale" and tuple(c.fms.stage_steps)
                                          and 0 < c.fms.extended_from < sum(c.fms.stage_steps)),
           f"fms.extended_from={c.fms.extended_from} is set by train.py when it extends a "
           "full-multiscale run (with its fms.stage_steps); set it to 0")
    for field in ("stage_steps", "stage_weights"):
        values = tuple(c.fms[field])
        zero = next((i for i, v in enumerate(values) if v <= 0), None)
        if zero is not None:
            raise ConfigError(f"fms.{field}={values} has {values[zero]} at stage {zero + 1}; "
                              "every stage needs a positive share (drop a stage with fewer "
                              "mge.levels)")
    _check(0 <= c.train.lr_end <= c.train.lr,
           f"train.lr_end={c.train.lr_end} must lie in [0, train.lr={c.train.lr}]")
    for field in ("every", "eval_every", "checkpoint_every"):
        _check(c.log[field] > 0, f"log.{field}={c.log[field]} must be positive")
    _check(c.batch_size > 0, f"batch_size={c.batch_size} must be positive")
    _check(c.fms.stage_batch_factor >= 1,
           f"fms.stage_batch_factor={c.fms.stage_batch_factor} must be >= 1 (2: the official "
           "doubling per coarser stage, 1: the same batch on every grid)")
    _check(c.mge.levels >= 0, f"mge.levels={c.mge.levels} must be >= 0")
    _check(c.data.patch > 0, f"data.patch={c.data.patch} must be positive")
    _check(c.data.valid_images > 0, f"data.valid_images={c.data.valid_images} must be positive")
    _check(not (c.data.resize_to and c.data.source == "paired_folders"),
           "data.resize_to would break LR/HR alignment of paired_folders; set it to 0")
    _check(not (c.data.resize_to and c.data.source == "official" and c.data.name == "urban100"),
           "data.resize_to would break LR/HR alignment of the official Urban100 pairs; set it "
           "to 0")
    if c.data.source == "tfds":
        _check(bool(c.data.name), "data.source=tfds needs data.name, e.g. --config.data.name=stl10")

    if c.task.name == "deblur":
        _check(min(c.task.blur_sigma) > 0, f"task.blur_sigma={c.task.blur_sigma} must be > 0")
    if c.task.name == "damage":
        _one_of(c.task.damage, damage.DAMAGES, "task.damage")
        sides = (c.data.patch, c.data.valid_patch or c.data.patch)
        _check(c.task.damage != "pixelate" or all(side % 8 == 0 for side in sides),
               f"task.damage=pixelate averages 8x8 blocks; data.patch={c.data.patch} and "
               f"data.valid_patch={c.data.valid_patch} must divide by 8")
        _check(c.task.damage != "jpeg" or not c.mge.operator_per_level,
               "task.damage=jpeg runs on the host at the finest grid only; set "
               "--config.mge.operator_per_level=False")
    if c.task.name == "inpaint":
        lo, hi = c.task.box_count
        _check(1 <= lo <= hi, f"task.box_count={tuple(c.task.box_count)} must be (min, max) "
               "with 1 <= min <= max")
        _check(0 < c.task.box_size[0] <= c.task.box_size[1] < 1,
               f"task.box_size={tuple(c.task.box_size)} must be fractions 0 < min <= max < 1")


def validate_stages(config, stages, task) -> None:
    """Raises ConfigError where the ``stages`` and ``task`` built from ``config`` cannot run:
    patch sizes against the levels, the SR scale and the model."""
    c, scale = config, task.scale
    if c.task.name == "sr":
        # Scale 1: real LR/HR pairs at the same size (RealSR "LR2", the Multiblock setting).
        _check(scale in (2, 3, 4) or (scale == 1 and c.data.source == "paired_folders"),
               f"task.scale={scale} must be 2, 3 or 4 (or 1 with same-size paired_folders)")
        # A model that upsamples inside outputs task.scale times its input.
        upsamples = MODELS.info(c.model)["upsamples"]
        upsampling = ", ".join(n for n in MODELS.names() if MODELS.info(n)["upsamples"])
        _check(upsamples or c.task.upsample_input or scale == 1,
               f"model={c.model} keeps image sizes; for SR set --config.task.upsample_input=True "
               f"or use an upsampling model ({upsampling})")
        if upsamples:
            _check(not c.task.residual, f"task.residual adds the input to the output, but "
                   f"{c.model} outputs {scale}x its input; set --config.task.residual=False")
            model_scale = c.model_kwargs.get("scale", 2)
            _check(model_scale == scale, f"model_kwargs.scale={model_scale} differs from "
                   f"task.scale={scale}; set both to the same factor")
    _check(all(s.steps > 0 for s in stages), f"train.steps={c.train.steps} is too few for "
           f"{len(stages)} full-multiscale stages; every stage needs at least one step")
    coarsest = max(s.plan.coarsest_level for s in stages)
    f = 2**coarsest
    # The grid the network sees at the data level: the LR side for upsampling models.
    side = c.data.patch // scale
    _check(c.data.patch % scale == 0,
           f"data.patch={c.data.patch} must divide by task.scale={scale}")
    _check(side % f == 0, f"data.patch={c.data.patch} does not divide by 2^{coarsest}={f * scale} "
           f"(levels x scale); pick a patch that is a multiple of {f * scale} or fewer levels")
    try:
        multiple = size_multiple(c.model, **c.model_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model_kwargs={dict(c.model_kwargs)} do not fit model={c.model}: "
                          f"{e}") from None
    _check((side // f) % multiple == 0,
           f"model={c.model} needs image sides divisible by {multiple}, but the coarsest level "
           f"is {side // f} pixels; use a larger data.patch or fewer mge.levels")
    for s in stages:
        if s.plan.shared_batch:
            _check(len(set(s.plan.batch_sizes)) == 1,
                   f"mge.shared_batch reuses one batch for every term, but batch_sizes="
                   f"{s.plan.batch_sizes} differ; give every term the same size")


def coarse_grid_note(record, stages) -> str:
    """For a full-multiscale deblurring run (``record``: the flat config) whose coarsest grid is
    smaller than the PSF's support on the data grid, one line saying so and how to keep the
    coarse grid large enough; '' otherwise. Such stages learnt little that transferred to the fine
    grid in the measured runs, with the blur fixed in pixels, scaled or restricted
    (docs/cost_to_quality.md); it is advice, not an error, as the paper's schedule is one."""
    if record.get("task.name") != "deblur" or record.get("mode") != "fullmultiscale":
        return ""
    patch, support = record["data.patch"], operators.psf_support(record["task.blur_sigma"])
    side = patch // 2 ** max(s.plan.coarsest_level for s in stages)
    if side >= support:
        return ""
    levels = max((j for j in range(8) if patch // 2**j >= support), default=0)
    steps = f" with {levels + 1} fms.stage_steps" if record["fms.stage_steps"] else ""
    fix = (f"--config.mge.levels={levels}{steps} keeps it at {patch // 2**levels} px" if levels else
           f"data.patch={patch} leaves no coarser grid that holds it: train mode=single")
    return (f"note: the coarsest stage trains on {side} px, smaller than the PSF's {support} px "
            f"support; stages on such grids learnt little that transferred to the fine grid in "
            f"the measured runs (docs/cost_to_quality.md): {fix}")
