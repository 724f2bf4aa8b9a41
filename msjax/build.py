"""Config -> the run's built pieces, once: the task, the stages, the device mesh and its backend,
the model, the train state, the validation set and each stage's compiled step.

The training loop, evaluation, the training methods and the benchmarks all build through here,
so they run the same programs. As in flax's examples every input of ``create_train_state`` is
explicit; ``experiment(config)`` bundles what does not change during a run.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msjax import (backend as backends, config_check, data, metrics, models, multiscale, optim,
                   parallel, resize, steps, tasks)
from msjax.models import layers
from msjax.errors import ConfigError


@dataclasses.dataclass
class Experiment:
    """What a config builds before any data is read: fixed for the whole run."""

    config: Any
    task: tasks.Task
    stages: list                   # adaptive schedules replace them in place as they decide
    mesh: jax.sharding.Mesh
    backend: backends.Backend
    model: Any
    adaptive: multiscale.AdaptiveSchedule | None = None

    @property
    def total_steps(self) -> int:
        return self.stages[-1].end_step

    def stage_at(self, step: int) -> int:
        return multiscale.stage_at(self.stages, step)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Each stage's end step, for a learning-rate schedule that restarts per stage."""
        return tuple(s.end_step for s in self.stages)

    def describe(self) -> list[str]:
        """The start banner: devices and kernels, then the schedule as a small table."""
        return self.backend.describe() + schedule_table(self)


@functools.cache
def _conv_module(convolution):
    """One module per convolution function, so models built twice compare equal (a model's
    apply is part of what jit caches on)."""
    return functools.partial(layers.Conv, convolution=convolution)


def make_model(config, backend: backends.Backend):
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    kwargs = dict(config.model_kwargs)
    if backend.convolution is not None:
        kwargs["conv"] = _conv_module(backend.convolution)
    return models.create_model(config.model, dtype=dtype, **kwargs)


def experiment(config, *, num_devices: int | None = None) -> Experiment:
    """Validates ``config`` and builds its task, stages, mesh, backend and model. Raises
    ``errors.ConfigError`` (one line with the fix) before any data is read or anything
    compiles."""
    parallel.initialize_distributed(config.runtime)
    requested = config.runtime.num_devices if num_devices is None else num_devices
    if jax.process_count() > 1 and requested not in (0, jax.device_count()):
        raise ConfigError(
            f"runtime.num_devices={requested} with {jax.process_count()} processes: a "
            f"multi-host run uses every device ({jax.device_count()}); set runtime.num_devices=0")
    if requested > jax.device_count():
        raise ConfigError(f"runtime.num_devices={requested} but only {jax.device_count()} "
                          f"{jax.default_backend()} devices exist; set runtime.num_devices=0 "
                          "(every device) or fewer")
    config_check.validate(config)
    mesh = parallel.make_mesh(requested)
    backend = backends.make_backend(config.runtime, mesh)
    task = tasks.make_task(config.task, operator_per_level=config.mge.operator_per_level,
                           normalize=((config.data.mean, config.data.std)
                                      if config.data.normalize else None))
    stages, adaptive = config_check.schedule(config), None
    if config.mode == "fullmultiscale" and config.fms.schedule == "adaptive":
        f = config.fms
        adaptive = multiscale.AdaptiveSchedule(
            stages, config.batch_size, window=f.window, min_improvement=f.min_improvement,
            min_share=f.min_share, budget_units=f.budget_units)
        stages = adaptive.stages()
    return Experiment(config, task, stages, mesh, backend, make_model(config, backend), adaptive)


def schedule_table(exp: Experiment) -> list[str]:
    """stage | grid | terms | batch per term | steps | work units, one line each."""
    c = exp.config
    side = c.data.patch // exp.task.scale
    rows = [f"{'stage':>5}  {'grid':>9}  {'terms':>5}  {'batch per term':<18} {'steps':>7}  "
            f"{'work units':>10}"]
    for i, s in enumerate(exp.stages):
        grid = side // 2 ** s.plan.finest_level
        batches = ", ".join(
            f"{n}" + (f"/{parallel.devices_per_batch(exp.mesh, n)}dev"
                      if parallel.devices_per_batch(exp.mesh, n) < exp.mesh.size else "")
            for n in s.plan.batch_sizes)
        units = s.steps * multiscale.work_units(s.plan, c.batch_size)
        rows.append(f"{i:>5}  {f'{grid}x{grid}':>9}  {s.plan.num_terms:>5}  {batches:<18} "
                    f"{s.steps:>7}  {units:>10.0f}")
    total = multiscale.schedule_work_units(exp.stages, c.batch_size)
    rows.append(f"{'total':>5}  {'':>9}  {'':>5}  {'':<18} {exp.total_steps:>7}  {total:>10.0f}"
                f"  (1 unit = one single-scale step of {c.batch_size} on the {side}x{side} grid)")
    if any(parallel.devices_per_batch(exp.mesh, n) < exp.mesh.size
           for s in exp.stages for n in s.plan.batch_sizes):
        rows.append(f"n/Kdev: a term batch of n split over K of the {exp.mesh.size} devices, "
                    "copies on the rest")
    return ["schedule (mode " + c.mode + "):"] + ["  " + r for r in rows]


def create_train_state(rng, config, model, sample_input, *, mesh, backend: backends.Backend,
                       total_steps: int, stage_ends=()) -> steps.TrainState:
    """Fresh parameters and optimizer state, replicated over ``mesh``."""
    t = jnp.zeros((sample_input.shape[0],), jnp.float32)

    def init():
        variables = model.init({"params": rng, "dropout": rng}, sample_input, t, train=False)
        params = variables.pop("params")
        return steps.TrainState.create(
            apply_fn=model.apply, params=params,
            tx=optim.make_optimizer(optim.run_train_section(config), total_steps,
                                      stage_ends),
            model_state=dict(variables),
            ema_params=jax.tree.map(jnp.copy, params) if config.train.ema_decay else None)

    init_fn = jax.jit(init, out_shardings=parallel.replicated(mesh))
    return init_fn.lower().compile(backend.init_options())()


def initial_state(exp: Experiment, sample_shape) -> steps.TrainState:
    """``create_train_state`` for the experiment, from the seed."""
    sample = exp.task.model_input(jnp.zeros((1,) + tuple(sample_shape[1:]), jnp.float32))
    return create_train_state(jax.random.PRNGKey(exp.config.seed), exp.config, exp.model,
                              sample, mesh=exp.mesh, backend=exp.backend,
                              total_steps=exp.total_steps, stage_ends=exp.stage_ends)


@dataclasses.dataclass
class Validation:
    """The fixed validation set on the mesh (padded to the device count), how many of its rows
    are real, and the input's own scores (the corrupted image, or bicubic for SR)."""

    batch: dict
    count: int
    input_scores: dict


def make_validation(config, task, mesh, *, source=None) -> Validation:
    source = source or data.open_source(config.data, "valid", scale=task.scale)
    crops = data.validation_crops(source, config.data.valid_images,
                                  config.data.valid_patch or config.data.patch, scale=task.scale,
                                  resize=data.pipeline.whole_image_resize(config.data))
    target = jnp.asarray(crops["target"])
    if "input" in crops:
        y, t = jnp.asarray(crops["input"]), None
    elif task.validation_corrupt is not None:  # the task's own fixed form (damage suite)
        y, t = task.validation_corrupt(target)
    else:
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2**31 - 1)
        y, t = task.corrupt(target, key, 0)
    baseline = jnp.clip(y if task.scale == 1 else resize.imresize(y, float(task.scale)), 0, 1)
    kw = dict(crop_border=config.eval.crop_border, y_channel=config.eval.y_channel)
    scores = {"input_psnr": float(jnp.mean(metrics.psnr_batch(baseline, target, **kw))),
              "input_ssim": float(jnp.mean(metrics.ssim_batch(baseline, target, **kw)))}
    n = target.shape[0]
    pad = (-n) % mesh.size  # pad with repeats to a multiple of the devices; dropped after
    batch = {"input": y, "target": target} | ({"t": t} if t is not None else {})
    batch = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]), batch)
    return Validation(parallel.put_global_batch(jax.tree.map(np.asarray, batch), mesh), n, scores)


def device_batches(exp: Experiment, stage: int, dataset, seed_key, step) -> tuple:
    """Every term's batch of ``step`` (a stage ``stage`` step; jit-able, the step counter may be
    traced) cut from the device-resident ``dataset``."""
    c = exp.config
    return data.inputs.device_batches(dataset, seed_key, step, exp.stages[stage].plan,
                                      patch=c.data.patch, augment=c.data.augment,
                                      scale=exp.task.scale, mesh=exp.mesh)


def _sampling_step(state, dataset, seed_key, *, train, plan, patch, augment, scale, mesh):
    """The train step cutting its own batches from the device-resident dataset, with the step
    counter it already holds: nothing crosses from the host."""
    batches = data.inputs.device_batches(dataset, seed_key, state.step, plan, patch=patch,
                                         augment=augment, scale=scale, mesh=mesh)
    return train(state, batches, seed_key)


def compile_train_step(exp: Experiment, stage_index: int, state, batches, seed_key, *,
                       recorded: str = "", dataset=None) -> backends.Compiled:
    """Stage ``stage_index``'s MGE step, compiled once ahead of time (which also counts its
    FLOPs); ``recorded``: the CPU kernels a checkpoint says this stage ran on. With a
    device-resident ``dataset`` the step cuts its own batches and takes the dataset in their
    place (``batches`` is then the dataset too)."""
    plan = exp.stages[stage_index].plan
    fn = functools.partial(steps.train_step, plan=plan, task=exp.task,
                           skip_nonfinite=exp.config.runtime.nonfinite == "skip",
                           ema_decay=exp.config.train.ema_decay)
    if dataset is not None:
        c = exp.config
        fn = functools.partial(_sampling_step, train=fn, plan=plan, patch=c.data.patch,
                               augment=c.data.augment, scale=exp.task.scale, mesh=exp.mesh)
        batches = dataset
    return exp.backend.compile(fn, (state, batches, seed_key), donate_argnums=(0,),
                               out_shardings=parallel.replicated(exp.mesh),
                               name=f"stage {stage_index}", recorded=recorded)


def eval_step(exp: Experiment):
    """The validation step (per-image loss, PSNR, SSIM), replicated so every process reads it."""
    return exp.backend.jit(functools.partial(
        steps.eval_step, task=exp.task, crop_border=exp.config.eval.crop_border,
        y_channel=exp.config.eval.y_channel), out_shardings=parallel.replicated(exp.mesh))
