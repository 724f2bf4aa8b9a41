"""The one reader of the config: config -> a frozen, typed ``Experiment``, and the run's built
pieces (model, train state, validation set, compiled steps) from it.

Below this module nothing reads a config: the loop, evaluation, the methods and the benchmarks
take the ``Experiment`` (or the typed settings of ``msjax/settings.py`` it holds). The config is
validated here (``config_check``) before any data is read or anything compiles, its stages and
learning-rate schedule are built once, and a saved run's ``config.json`` comes back through here
too (``msjax.runs``).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from msjax import (backend as backends, config_check, data, defaults, metrics, models,
                   multiscale, optim, parallel, rundir, steps, tasks, wandb_writer)
from msjax.errors import ConfigError, RunDirError
from msjax.models import layers
from msjax.registry import METHODS
from msjax.settings import (AdaptiveSettings, EvalSettings, InputSpec, LogSettings,
                            OptimizerSettings, RuntimeSettings, TaskSettings, WarmStart,
                            from_section)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run is, built from its config before any data is read. Frozen: an adaptive
    schedule's decision makes a new one (``replan``)."""

    seed: int
    mode: str
    task: tasks.Task
    model_name: str
    model: Any                              # the Flax module, on the backend's convolutions
    stages: tuple                           # multiscale.Stage, coarse first
    batch_size: int                         # the work-unit reference (one single-scale step)
    optimizer: OptimizerSettings
    learning_rate: optax.Schedule           # over ``stages``
    input: InputSpec
    log: LogSettings
    eval: EvalSettings
    runtime: RuntimeSettings
    mesh: jax.sharding.Mesh
    backend: backends.Backend
    ema_decay: float = 0.0
    target_psnr: float = 0.0                # > 0: stop once validation reaches it
    warm_start: WarmStart | None = None
    adaptive: AdaptiveSettings | None = None
    fixed_stages: tuple = ()                # what an adaptive schedule starts from
    method: str = ""
    method_settings: Any = None             # the method's own typed settings
    phases: tuple = ()                      # (phase, Experiment) of a method that runs phases
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the flat config

    @property
    def total_steps(self) -> int:
        return self.stages[-1].end_step

    def stage_at(self, step: int) -> int:
        return multiscale.stage_at(self.stages, step)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Each stage's end step, for a learning-rate schedule that restarts per stage."""
        return tuple(s.end_step for s in self.stages)

    def make_optimizer(self) -> optax.GradientTransformation:
        return optim.make_optimizer(self.optimizer, self.learning_rate)

    def replan(self, stages) -> "Experiment":
        """The experiment with new ``stages`` (an adaptive decision) and its learning-rate
        schedule over them."""
        stages = tuple(stages)
        ends = tuple(s.end_step for s in stages)
        return dataclasses.replace(self, stages=stages, learning_rate=optim.learning_rate(
            self.optimizer, stages[-1].end_step, ends))

    def describe(self) -> list[str]:
        """The start banner: devices and kernels, then the schedule as a small table, and a note
        where a deblurring schedule's coarsest grid is below the PSF's support."""
        note = config_check.coarse_grid_note(self.record, self.stages)
        return self.backend.describe() + schedule_table(self) + ([note] if note else [])


# --- config -> typed pieces ---------------------------------------------------------------------

def task_settings(config) -> TaskSettings:
    return from_section(TaskSettings, config.task)


def make_task(config) -> tasks.Task:
    """The config's task (corruption, model input, loss), normalised as ``data.normalize`` asks."""
    d = config.data
    return tasks.make_task(task_settings(config),
                           operator_per_level=config.mge.operator_per_level,
                           normalize=(d.mean, d.std) if d.normalize else None)


def task_for(**fields) -> tasks.Task:
    """A task from ``fields`` of the ``task`` section laid over the defaults (tests, benches)."""
    config = defaults.get_config()
    config.task.update(fields)
    return make_task(config)


def input_spec(config) -> InputSpec:
    d = config.data
    return from_section(InputSpec, {**d, "valid_patch": d.valid_patch or d.patch})


def optimizer_settings(config) -> OptimizerSettings:
    """The ``train`` section's optimizer fields, with ``fms.lr_schedule`` in place of
    ``train.lr_schedule`` in fullmultiscale mode where set (so a config gives full multiscale
    its own schedule while its single and multiscale runs keep theirs)."""
    t = config.train
    names = {f.name for f in dataclasses.fields(OptimizerSettings)}
    values = {k: v for k, v in t.items() if k in names}
    if config.mode == "fullmultiscale" and config.fms.lr_schedule:
        values["lr_schedule"] = config.fms.lr_schedule
    return from_section(OptimizerSettings, values)


def optimizer_for(**fields) -> OptimizerSettings:
    """Optimizer settings from ``fields`` of the ``train`` section laid over the defaults."""
    config = defaults.get_config()
    config.train.update(fields)
    return optimizer_settings(config)


def stages(config) -> tuple:
    """The run's stages (``multiscale.make_schedule``) from the config: the only place that
    reads the ``mge`` and ``fms`` sections' schedule fields."""
    c = config
    try:
        return tuple(multiscale.make_schedule(
            c.mode, steps=c.train.steps, batch_size=c.batch_size, levels=c.mge.levels,
            batch_sizes=tuple(c.mge.batch_sizes), finest_batch=c.mge.finest_batch,
            batch_growth=c.mge.batch_growth, stage_steps=tuple(c.fms.stage_steps),
            stage_weights=tuple(c.fms.stage_weights),
            stage_batch_growth=c.fms.batch_growth, stage_batch_factor=c.fms.stage_batch_factor,
            max_terms=c.fms.max_terms, restriction=c.mge.restriction,
            shared_batch=c.mge.shared_batch, operator_per_level=c.mge.operator_per_level))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _adaptive(config, fixed) -> tuple[AdaptiveSettings | None, tuple]:
    """The adaptive settings and the stages it starts with (its finest stage takes what the
    fixed schedule's budget leaves), or (None, ``fixed``)."""
    f = config.fms
    if config.mode != "fullmultiscale" or f.schedule != "adaptive":
        return None, fixed
    settings = AdaptiveSettings(window=f.window, min_improvement=f.min_improvement,
                                min_share=f.min_share, budget_units=f.budget_units)
    planner = multiscale.AdaptiveSchedule(fixed, config.batch_size,
                                          **dataclasses.asdict(settings))
    return settings, tuple(planner.stages())


def method_settings(config):
    """The method's typed settings from its section (``method`` names it), or None."""
    if not config.method:
        return None
    entry = METHODS.info(config.method)
    return from_section(entry["settings"], config[config.method])


@functools.cache
def _conv_module(convolution):
    """One module per convolution function, so models built twice compare equal (a model's
    apply is part of what jit caches on)."""
    return functools.partial(layers.Conv, convolution=convolution)


def make_model(name: str, model_kwargs: Mapping, dtype: str, backend: backends.Backend):
    kwargs = dict(model_kwargs)
    if backend.convolution is not None:
        kwargs["conv"] = _conv_module(backend.convolution)
    return models.create_model(name, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
                               **kwargs)


def experiment(config, *, num_devices: int | None = None) -> Experiment:
    """Validates ``config`` and builds its Experiment (an Experiment is returned as it is).
    Raises ``errors.ConfigError`` (one line with the fix) before any data is read or anything
    compiles."""
    if isinstance(config, Experiment):
        return config
    runtime = from_section(RuntimeSettings, config.runtime)
    parallel.initialize_distributed(runtime)
    backends.compile_cache.enable(runtime)
    requested = runtime.num_devices if num_devices is None else num_devices
    if jax.process_count() > 1 and requested not in (0, jax.device_count()):
        raise ConfigError(
            f"runtime.num_devices={requested} with {jax.process_count()} processes: a "
            f"multi-host run uses every device ({jax.device_count()}); set runtime.num_devices=0")
    if requested > jax.device_count():
        raise ConfigError(f"runtime.num_devices={requested} but only {jax.device_count()} "
                          f"{jax.default_backend()} devices exist; set runtime.num_devices=0 "
                          "(every device) or fewer")
    config_check.validate(config)
    log = from_section(LogSettings, config.log)
    wandb_writer.check_mode(log)
    task = make_task(config)
    fixed = stages(config)
    config_check.validate_stages(config, fixed, task)
    adaptive, planned = _adaptive(config, fixed)
    opt = optimizer_settings(config)
    lr = optim.learning_rate(opt, planned[-1].end_step, tuple(s.end_step for s in planned))
    if config.fms.extended_from:
        lr = extended_learning_rate(opt, planned, config.fms.extended_from)
    settings = method_settings(config)
    mesh = parallel.make_mesh(requested)
    backend = backends.make_backend(runtime, mesh)
    t = config.train
    exp = Experiment(
        seed=config.seed, mode=config.mode, task=task, model_name=config.model,
        model=make_model(config.model, config.model_kwargs, config.dtype, backend),
        stages=planned, batch_size=config.batch_size, optimizer=opt, learning_rate=lr,
        input=input_spec(config), log=log,
        eval=from_section(EvalSettings, config.eval), runtime=runtime, mesh=mesh,
        backend=backend, ema_decay=t.ema_decay, target_psnr=t.target_psnr,
        warm_start=WarmStart(t.init_from, t.init_checkpoint) if t.init_from else None,
        adaptive=adaptive, fixed_stages=fixed if adaptive else (), method=config.method,
        method_settings=settings, record=types.MappingProxyType(rundir.flat(config)))
    if settings is not None:
        entry = METHODS.info(config.method)
        if "check" in entry:
            entry["check"](settings, exp)
        if "phases" in entry:
            phases = entry["phases"](settings, opt)
            exp = dataclasses.replace(exp, phases=tuple(
                (p, experiment(with_overrides(config, p.overrides), num_devices=num_devices))
                for p in phases))
    return exp


def with_overrides(config, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``{'section.field': value}`` set (a method's phase)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        node, (*parents, leaf) = copy, key.split(".")
        for p in parents:
            node = node[p]
        with node.ignore_type():
            node[leaf] = value
    return copy


# --- a saved run's config ---------------------------------------------------------------------

def saved_config(record: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A saved run's flat config laid over today's defaults: fields msjax gained since keep
    their defaults (which do what the code did before them), renamed fields their new names."""
    config = defaults.get_config()
    for key, value in record.items():
        key = rundir.LEGACY_NAMES.get(key, key)
        node, (*parents, leaf) = config, key.split(".")
        for p in parents:
            if p not in node:
                node[p] = ml_collections.ConfigDict()
            node = node[p]
        with node.ignore_type():
            node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


def load_config(workdir) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir``, laid over today's defaults."""
    saved = rundir.read_saved(workdir)
    if saved is None:
        raise RunDirError(f"{Path(workdir) / rundir.CONFIG_FILE} not found: --workdir must be a "
                          "directory written by train.py")
    return saved_config(saved)


def resume(workdir: Path, exp: Experiment, *, extend: bool = False) -> rundir.Resume:
    """How ``exp`` relates to the run already in ``workdir`` (``rundir.compare``); a saved run's
    step budget is its own config's, and a larger one extends it only with ``extend``."""
    rundir.check_contents(workdir)
    saved = rundir.read_saved(workdir)
    if saved is None:
        return rundir.Resume("new")
    known = rundir.flat(defaults.get_config())
    return rundir.compare(workdir, saved, dict(exp.record), exp.total_steps, known,
                          lambda record: stages(saved_config(record))[-1].end_step,
                          extend=extend, stopped=bool(rundir.read_stops(workdir)))


def keep_own_budget(config, workdir) -> str | None:
    """Sets ``config``'s budget fields to those of the run in ``workdir`` (its config.json),
    so a rerun without the original step override resumes that run instead of asking for the
    config file's budget; the line saying so, or None when nothing changed."""
    saved = rundir.read_saved(workdir) if Path(workdir).is_dir() else None
    if saved is None:
        return None
    current = rundir.flat(config)
    budget = {k: saved[k] for k in rundir.BUDGET_FIELDS
              if k in saved and k in current and saved[k] != current[k]}
    if not budget:
        return None
    for key, value in budget.items():
        section, field = key.split(".")
        config[section][field] = tuple(value) if isinstance(value, list) else value
    return (f"resuming the run in {workdir} with its own step budget ({stages(config)[-1].end_step}"
            " steps, from its config.json); an explicit larger --config.train.steps extends it")


def resumed(exp: Experiment, workdir: Path, resume: rundir.Resume) -> Experiment:
    """``exp`` as the run in ``workdir`` continues it: with the run's own budget fields where
    ``exp`` states the same budget otherwise (stage weights for stage steps), and, extending a
    full-multiscale run, with the new steps added to its finest stage (``fms.extended_from``:
    they train at the rate the schedule ended with). Methods keep their own budgets."""
    if resume.kind == "new" or exp.method or exp.adaptive is not None:
        return exp
    saved = rundir.read_saved(workdir)
    config = saved_config(exp.record)
    if resume.kind == "same":
        budget = {k: saved[k] for k in rundir.BUDGET_FIELDS
                  if k in saved and saved[k] != exp.record.get(k)}
        return experiment(with_overrides(config, budget)) if budget else exp
    if exp.mode != "fullmultiscale":
        return exp  # one schedule over the whole budget, recomputed for the new one
    old = stages(saved_config(saved))
    steps_per_stage = [s.steps for s in old]
    steps_per_stage[-1] += exp.total_steps - old[-1].end_step
    return experiment(with_overrides(config, {
        "fms.stage_steps": tuple(steps_per_stage), "train.steps": exp.total_steps,
        "fms.stage_weights": tuple(saved.get("fms.stage_weights", ())),
        "fms.extended_from": saved.get("fms.extended_from") or old[-1].end_step}))


def extended_learning_rate(opt: OptimizerSettings, planned, start: int) -> optax.Schedule:
    """The schedule of a full-multiscale run extended at step ``start``: the original one (over
    the stages as they ended there) until ``start``, then the rate it reached, held constant,
    so an extension neither raises the rate again nor trains at a stretched schedule's."""
    ends = tuple(s.end_step for s in planned[:-1]) + (start,)
    before = optim.learning_rate(opt, start, ends)
    return optax.join_schedules([before, optax.constant_schedule(float(before(start - 1)))],
                                boundaries=[start])


# --- the run's pieces -------------------------------------------------------------------------

def schedule_table(exp: Experiment) -> list[str]:
    """stage | grid | terms | batch per term | steps | work units, one line each (stages
    numbered from 1, as the progress line says them)."""
    side = exp.input.patch // exp.task.scale
    rows = [f"{'stage':>5}  {'grid':>9}  {'terms':>5}  {'batch per term':<18} {'steps':>7}  "
            f"{'work units':>10}"]
    for i, s in enumerate(exp.stages):
        grid = side // 2 ** s.plan.finest_level
        batches = ", ".join(
            f"{n}" + (f"/{parallel.devices_per_batch(exp.mesh, n)}dev"
                      if parallel.devices_per_batch(exp.mesh, n) < exp.mesh.size else "")
            for n in s.plan.batch_sizes)
        units = s.steps * multiscale.work_units(s.plan, exp.batch_size)
        rows.append(f"{i + 1:>5}  {f'{grid}x{grid}':>9}  {s.plan.num_terms:>5}  {batches:<18} "
                    f"{s.steps:>7}  {units:>10.0f}")
    total = multiscale.schedule_work_units(exp.stages, exp.batch_size)
    rows.append(f"{'total':>5}  {'':>9}  {'':>5}  {'':<18} {exp.total_steps:>7}  {total:>10.0f}"
                f"  (1 unit = one single-scale step of {exp.batch_size} on the {side}x{side} grid)")
    if any(parallel.devices_per_batch(exp.mesh, n) < exp.mesh.size
           for s in exp.stages for n in s.plan.batch_sizes):
        rows.append(f"n/Kdev: a term batch of n split over K of the {exp.mesh.size} devices, "
                    "copies on the rest")
    return ["schedule (mode " + exp.mode + "):"] + ["  " + r for r in rows]


def create_train_state(rng, model, sample_input, *, tx, mesh, backend: backends.Backend,
                       ema: bool = False) -> steps.TrainState:
    """Fresh parameters and optimizer state, replicated over ``mesh``."""
    t = jnp.zeros((sample_input.shape[0],), jnp.float32)

    def init():
        variables = model.init({"params": rng, "dropout": rng}, sample_input, t, train=False)
        params = variables.pop("params")
        return steps.TrainState.create(
            apply_fn=model.apply, params=params, tx=tx, model_state=dict(variables),
            ema_params=jax.tree.map(jnp.copy, params) if ema else None)

    init_fn = jax.jit(init, out_shardings=parallel.replicated(mesh))
    return init_fn.lower().compile(backend.init_options())()


def initial_state(exp: Experiment, sample_shape) -> steps.TrainState:
    """``create_train_state`` for the experiment, from the seed."""
    sample = exp.task.model_input(jnp.zeros((1,) + tuple(sample_shape[1:]), jnp.float32))
    return create_train_state(jax.random.PRNGKey(exp.seed), exp.model, sample,
                              tx=exp.make_optimizer(), mesh=exp.mesh, backend=exp.backend,
                              ema=bool(exp.ema_decay))


@dataclasses.dataclass
class Validation:
    """The fixed validation set on the mesh (padded to the device count), how many of its rows
    are real, and the input's own scores (the corrupted image, or bicubic for SR)."""

    batch: dict
    count: int
    input_scores: dict
    line: str = ""           # what it is, for the start of a run


# fold_in constant of the validation corruption's key (apart from the steps' and the sampler's).
VALIDATION_STREAM = 2**31 - 1


def _corrupt_validation(target, key, *, task):
    return task.corrupt(target, key, 0)


def _input_scores(y, target, *, task, **metric_kw):
    """Mean PSNR and SSIM of what the input itself scores (``Task.baseline``)."""
    baseline = task.baseline(y)
    return (jnp.mean(metrics.psnr_batch(baseline, target, **metric_kw)),
            jnp.mean(metrics.ssim_batch(baseline, target, **metric_kw)))


def make_validation(exp: Experiment, *, source=None) -> Validation:
    task, spec = exp.task, exp.input
    source = source or data.open_source(spec, "valid", scale=task.scale)
    crops = data.validation_crops(source, spec.valid_images, spec.valid_patch, scale=task.scale,
                                  resize=data.pipeline.whole_image_resize(spec))
    target = jnp.asarray(crops["target"])
    if "input" in crops:
        y, t = jnp.asarray(crops["input"]), None
    elif task.validation_corrupt is not None:  # the task's own fixed form (damage suite)
        y, t = task.validation_corrupt(target)
    else:  # one program, where op by op would compile dozens (each a load or a compile)
        y, t = exp.backend.jit(functools.partial(_corrupt_validation, task=task))(
            target, jax.random.fold_in(jax.random.PRNGKey(exp.seed), VALIDATION_STREAM))
    psnr, ssim = exp.backend.jit(functools.partial(_input_scores, task=task,
                                                   **exp.eval.metric_kw))(y, target)
    scores = {"input_psnr": float(psnr), "input_ssim": float(ssim)}
    n = target.shape[0]
    pad = (-n) % exp.mesh.size  # pad with repeats to a multiple of the devices; dropped after
    batch = {"input": y, "target": target} | ({"t": t} if t is not None else {})
    # On the host: op by op on the device, each op would be a program to load or compile.
    batch = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], pad, 0)]),
                         jax.tree.map(np.asarray, batch))
    line = (f"validation: {n} crop{'s' if n != 1 else ''} of {target.shape[1]} px from "
            f"{data.validation_origin(spec)}")
    return Validation(parallel.put_global_batch(batch, exp.mesh), n, scores, line)


def device_batches(exp: Experiment, stage: int, dataset, seed_key, step) -> tuple:
    """Every term's batch of ``step`` (a stage ``stage`` step; jit-able, the step counter may be
    traced) cut from the device-resident ``dataset``."""
    return data.inputs.device_batches(dataset, seed_key, step, exp.stages[stage].plan,
                                      patch=exp.input.patch, augment=exp.input.augment,
                                      scale=exp.task.scale, mesh=exp.mesh)


def _sampling_step(state, dataset, seed_key, *, train: Callable, sample: Callable):
    """The train step cutting its own batches from the device-resident dataset, with the step
    counter it already holds: nothing crosses from the host."""
    return train(state, sample(dataset, seed_key, state.step), seed_key)


def _sampling_steps(state, dataset, seed_key, *, train: Callable, sample: Callable, count: int,
                    unroll):
    """``count`` sampling steps in one call (``lax.scan``): the per-step metrics come back
    stacked, once per call. Each step draws its batches and noise from its own counter, as a
    call of one step would."""
    def one(state, _):
        return _sampling_step(state, dataset, seed_key, train=train, sample=sample)

    return jax.lax.scan(one, state, None, length=count, unroll=unroll)


def compile_train_step(exp: Experiment, stage_index: int, state, batches, seed_key, *,
                       recorded: str = "", dataset=None, steps_per_call: int = 1,
                       measure: bool = True) -> backends.Compiled | None:
    """Stage ``stage_index``'s MGE step, compiled once ahead of time (which also counts its
    FLOPs); ``recorded``: the CPU kernels a checkpoint says this stage ran on. With a
    device-resident ``dataset`` the step cuts its own batches and takes the dataset in their
    place, and may run ``steps_per_call`` steps per call (their metrics stacked).
    ``measure=False``: None where choosing the CPU kernels would need a measurement."""
    fn = functools.partial(steps.train_step, plan=exp.stages[stage_index].plan, task=exp.task,
                           skip_nonfinite=exp.runtime.nonfinite == "skip",
                           ema_decay=exp.ema_decay)
    if dataset is not None:
        sample = functools.partial(device_batches, exp, stage_index)
        fn = (functools.partial(_sampling_step, train=fn, sample=sample) if steps_per_call == 1
              else functools.partial(_sampling_steps, train=fn, sample=sample,
                                     count=steps_per_call, unroll=exp.backend.unroll_steps))
        batches = dataset
    elif steps_per_call != 1:
        raise ValueError("several steps per call need the device-resident input")
    return exp.backend.compile(fn, (state, batches, seed_key), donate_argnums=(0,),
                               out_shardings=parallel.replicated(exp.mesh),
                               name=f"stage {stage_index}"
                               + (f" x{steps_per_call}" if steps_per_call > 1 else ""),
                               recorded=recorded, measure=measure)


def eval_step(exp: Experiment):
    """The validation step (per-image loss, PSNR, SSIM), replicated so every process reads it."""
    return exp.backend.jit(functools.partial(steps.eval_step, task=exp.task,
                                             **exp.eval.metric_kw),
                           out_shardings=parallel.replicated(exp.mesh))
