"""The training loop: ``train_and_evaluate(config, workdir)``.

config -> data + model + stages -> compiled MGE step per stage -> state -> logs / checkpoints.
Running it again in the same workdir resumes from the newest readable checkpoint: step, stage,
optimizer, cost ledger; batches and noise are functions of (seed, step), so resume is exact.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from msjax import (checkpoints, config_check, data, kernels, logs, models, multiscale, optim, parallel,
                   resize, steps, tasks, xla_options)

log = logging.getLogger(__name__)

# Fields that may change between a run and its resumption (they do not change the result).
def _resumable(key: str) -> bool:
    from msjax import defaults
    return (key.split(".")[0] in defaults.RESUMABLE_SECTIONS
            or key.endswith(defaults.RESUMABLE_SUFFIXES))


from msjax.errors import NonFiniteError  # noqa: E402


class Preempted(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was saved. ``signum`` is the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def _flat(config) -> dict:
    def walk(d, prefix=""):
        for k, v in d.items():
            if hasattr(v, "items"):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", list(v) if isinstance(v, tuple) else v
    return dict(walk(config.to_dict()))


def check_workdir(workdir: Path, config) -> None:
    """Refuses a workdir written by a different config (it would silently mix two runs)."""
    path = workdir / "config.json"
    current = _flat(config)
    if path.exists():
        saved = json.loads(path.read_text())
        diffs = [k for k in sorted(set(saved) | set(current))
                 if not _resumable(k) and saved.get(k) != current.get(k)]
        if diffs:
            shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diffs[:5])
            raise config_check.ConfigError(
                f"workdir {workdir} holds a run with another config ({shown}"
                f"{'; ...' if len(diffs) > 5 else ''}); use a new --workdir or the same config")
    elif jax.process_index() == 0:  # atomic: other processes may be reading it already
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1, sort_keys=True))
        tmp.replace(path)


def create_state(model, config, sample_input, total_steps: int, mesh) -> steps.TrainState:
    rng = jax.random.PRNGKey(config.seed)
    t = jnp.zeros((sample_input.shape[0],), jnp.float32)
    # Every program that runs the model (step, evaluation, panels) traces this apply_fn.
    apply_fn = kernels.apply_with(model.apply, config.runtime.cpu_convolutions,
                                  devices=mesh.size)

    def init():
        variables = model.init({"params": rng, "dropout": rng}, sample_input, t, train=False)
        params = variables.pop("params")
        return steps.TrainState.create(apply_fn=apply_fn, params=params,
                                       tx=optim.make_optimizer(config.train, total_steps,
                                                               _stage_ends(config)),
                                       model_state=dict(variables))

    # init runs once, so its speed is irrelevant, but XLA's default optimisation of every
    # parameter's unrolled random initializer takes seconds to minutes to compile on CPU
    # (pyramidal44: 19 s -> 2 s of CPU time). Values may differ from an optimised build by an ulp.
    init_fn = jax.jit(init, out_shardings=parallel.replicated(mesh))
    return init_fn.lower().compile(xla_options.cpu_options(fast_compile=True))()


class _Signals:
    """Turns SIGTERM / SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_validation(config, task, source, mesh):
    """The fixed validation set: crops, their corruption (fixed key) and the input's own scores."""
    scale = task.scale
    crops = data.validation_crops(source, config.data.valid_images,
                                  config.data.valid_patch or config.data.patch, scale=scale,
                                  resize=data.pipeline.whole_image_resize(config.data))
    target = jnp.asarray(crops["target"])
    if "input" in crops:
        y, t = jnp.asarray(crops["input"]), None
    elif task.validation_corrupt is not None:  # the task's own fixed form (damage suite)
        y, t = task.validation_corrupt(target)
    else:
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2**31 - 1)
        y, t = task.corrupt(target, key, 0)
    # The input's own quality, shown beside the model's: the corrupted image, or for SR the
    # bicubic-upsampled LR.
    baseline = jnp.clip(y if scale == 1 else resize.imresize(y, float(scale)), 0.0, 1.0)
    from msjax import metrics

    kw = dict(crop_border=config.eval.crop_border, y_channel=config.eval.y_channel)
    scores = {"input_psnr": float(jnp.mean(metrics.psnr_batch(baseline, target, **kw))),
              "input_ssim": float(jnp.mean(metrics.ssim_batch(baseline, target, **kw)))}
    n = target.shape[0]
    pad = (-n) % mesh.size  # shard the validation batch; pad with repeats, drop them after
    batch = {"input": y, "target": target}
    if t is not None:
        batch["t"] = t
    batch = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]), batch)
    return parallel.put_global_batch(jax.tree.map(np.asarray, batch), mesh), n, scores


def _validation_panels(state, batch, *, task, count=4):
    head = jax.tree.map(lambda a: a[:count], batch)
    return {"input": head["input"], "target": head["target"],
            "output": steps.predict(state, head["input"], head.get("t"), task=task)}




def train_and_evaluate(config, workdir, *, init_fn=None, batch_transform=None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the final validation metrics.

    Training methods (msjax/methods) plug in here: ``init_fn(state) -> state`` replaces the
    initial state of a fresh run (e.g. weights inherited from an earlier phase), and
    ``batch_transform(step, batches) -> batches`` rewrites each step's device batches before the
    MGE step (e.g. ECO's teacher pairs). Both must be deterministic in (step, batches).
    """
    workdir = Path(workdir).expanduser()
    parallel.initialize_distributed(config.runtime)
    if jax.process_count() > 1 and config.runtime.num_devices not in (0, jax.device_count()):
        raise config_check.ConfigError(
            f"num_devices={config.runtime.num_devices} with {jax.process_count()} processes: a multi-host "
            f"run uses every device ({jax.device_count()}); set num_devices=0")
    try:
        term_batches = {n for s in config_check.schedule(config) for n in s.plan.batch_sizes}
    except ValueError:
        term_batches = set()  # validate() names the problem
    n_devices = parallel.device_count_for(term_batches, config.runtime.num_devices)
    config_check.validate(config, workdir=str(workdir), num_devices=n_devices)
    workdir.mkdir(exist_ok=True)
    check_workdir(workdir, config)

    mesh = parallel.make_mesh(n_devices)
    task = tasks.make_task(config.task, operator_per_level=config.mge.operator_per_level)
    stages = config_check.schedule(config)
    total_steps = stages[-1].end_step
    train_source = data.open_source(config.data, "train", scale=task.scale)
    valid_batch, n_valid, input_scores = make_validation(
        config, task, data.open_source(config.data, "valid", scale=task.scale), mesh)

    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    model = models.create_model(config.model, dtype=dtype, **config.model_kwargs)
    sample = jnp.zeros((1,) + tuple(valid_batch["input"].shape[1:]), jnp.float32)
    state = create_state(model, config, task.model_input(sample), total_steps, mesh)

    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep_best=config.log.keep_best)
    progress = logs.Progress(total_steps, 0, enabled=jax.process_index() == 0)
    if jax.default_backend() == "cpu":
        progress.write(f"CPU convolutions: "
                       f"{kernels.choose(config.runtime.cpu_convolutions, mesh.size)}")
    restored = ckpt.restore_latest(state, on_fallback=progress.write)
    # Costs so far: `seconds` is training wall time without compiling (which a longer run
    # amortises), `compile_seconds` the stages' compile time, kept apart.
    ledger = {"work_units": 0.0, "flops": 0.0, "seconds": 0.0, "compile_seconds": 0.0,
              "skipped": 0}
    best_psnr = -math.inf
    if restored is None and init_fn is not None:
        state = init_fn(state)
    if restored is not None:
        state, meta, start = restored
        ledger.update({k: meta[k] for k in ledger if k in meta})  # older runs: no compile_seconds
        best_psnr = meta.get("best_psnr", best_psnr)
        progress.write(f"resumed from step {start} (stage {meta['stage']}) in {workdir}")
    start = int(parallel.fetch(state.step))
    progress.start = start
    runlog = logs.RunLog(workdir, resume_step=start if restored is not None else None)

    seed_key = parallel.put_replicated(jax.random.PRNGKey(config.seed), mesh)
    compile_options = xla_options.for_config(config)
    lr_schedule = optim.learning_rate(config.train, total_steps, _stage_ends(config))  # for logs
    eval_fn = jax.jit(functools.partial(steps.eval_step, task=task,
                                        crop_border=config.eval.crop_border,
                                        y_channel=config.eval.y_channel),
                      out_shardings=parallel.replicated(mesh),  # readable on every process
                      compiler_options=compile_options)
    valid_panels_fn = jax.jit(functools.partial(_validation_panels, task=task),
                              out_shardings=parallel.replicated(mesh),
                              compiler_options=compile_options)
    train_panels_fn = jax.jit(functools.partial(steps.training_panels, task=task),
                              out_shardings=parallel.replicated(mesh),
                              compiler_options=compile_options)
    # XLA:CPU with several simulated devices can stall in collectives unless each step is waited
    # for; on accelerators steps stay asynchronous.
    sync_each_step = jax.devices()[0].platform == "cpu" and mesh.size > 1

    resize_whole = data.pipeline.whole_image_resize(config.data)

    def make_host_batches(step):
        plan = stages[multiscale.stage_at(stages, step)].plan
        terms = 1 if plan.shared_batch else plan.num_terms
        batches = tuple(data.term_batch(
            train_source, seed=config.seed, step=step, term=k, batch=plan.batch_sizes[k],
            patch=config.data.patch, scale=task.scale, augment=config.data.augment,
            rows=parallel.process_rows(plan.batch_sizes[k], mesh), resize=resize_whole)
            for k in range(terms))
        if task.host_corrupt is not None:  # e.g. JPEG: the step restricts it like paired data
            batches = tuple({**b, "input": task.host_corrupt(b["target"])} for b in batches)
        return batches

    compiled = {}

    def step_fn(stage_index, state, batches):
        """The stage's compiled step (compiled once, ahead of time, which also gives its FLOPs)."""
        if stage_index not in compiled:
            fn = jax.jit(functools.partial(
                steps.train_step, plan=stages[stage_index].plan, task=task,
                skip_nonfinite=config.runtime.nonfinite == "skip"), donate_argnums=(0,),
                out_shardings=parallel.replicated(mesh))
            t0 = time.perf_counter()
            exe = fn.lower(state, batches, seed_key).compile(compile_options)
            compiled[stage_index] = (exe, multiscale.compiled_flops(exe) * mesh.size)
            ledger["compile_seconds"] += time.perf_counter() - t0
        return compiled[stage_index]

    def evaluate(step, stage_index, train_batch):
        out = parallel.fetch(eval_fn(state, valid_batch))
        row = {"step": step, "stage": stage_index, **input_scores,
               **{k: float(np.mean(v[:n_valid])) for k, v in out.items()}, **ledger}
        runlog.scalars("valid", row)
        if step % (config.log.eval_every * 4) == 0 or step == total_steps:
            runlog.images(step, parallel.fetch(valid_panels_fn(state, valid_batch)))
            # What the model makes of data it is fitted to (evaluation mode), beside validation.
            train_head = jax.tree.map(lambda a: a[:4], train_batch)
            runlog.images(step, parallel.fetch(train_panels_fn(state, train_head, seed_key)),
                          stream="train")
        return row

    pending = []  # per-step metrics on device since the last flush

    def flush(stage_index):
        """Fetches pending metrics, logs them, and stops on a non-finite step (the NaN check
        runs on metrics fetched for logging anyway)."""
        if not pending:
            return
        fetched = parallel.fetch(pending)
        pending.clear()
        bad = [(s, m) for s, m in fetched if not bool(m["finite"])]
        if bad and config.runtime.nonfinite == "stop":
            first = bad[0][0]
            raise NonFiniteError(
                f"non-finite loss or gradient at step {first} (loss {float(bad[0][1]['loss'])}, "
                f"grad norm {float(bad[0][1]['grad_norm'])}); the last good checkpoint "
                f"(step {max(ckpt.steps(), default=0)}) is kept in {workdir}. Lower train.lr, "
                "or set --config.runtime.nonfinite=skip to skip such steps")
        ledger["skipped"] += len(bad)
        s, m = fetched[-1]
        row = {"step": s + 1, "stage": stage_index, "loss": float(m["loss"]),
               "finest_loss": float(m["finest_loss"]), "grad_norm": float(m["grad_norm"]),
               "lr": float(lr_schedule(s)), **ledger}
        runlog.scalars("train", row)
        progress.update(s + 1, stage=stage_index, loss=row["loss"], psnr=best_psnr)

    def save(step, stage_index, metrics=None):
        meta = {"step": step, "stage": stage_index, "best_psnr": best_psnr, **ledger}
        ckpt.save(step, state, meta, metrics)

    result = {}
    prefetch = data.Prefetcher(make_host_batches, start, total_steps) if start < total_steps else None
    try:
        with _Signals() as signals:
            for step in range(start, total_steps):
                stage_index = multiscale.stage_at(stages, step)
                _, host_batches = prefetch.get()
                t0, compiling = time.perf_counter(), ledger["compile_seconds"]
                # The steady state moves nothing between host and device but the explicit batch
                # transfer (and the metrics fetched for logging, outside this block).
                with jax.transfer_guard(config.runtime.transfer_guard):
                    batches = parallel.put_batch(host_batches, mesh)
                    if batch_transform is not None:
                        batches = batch_transform(step, batches)
                    exe, flops = step_fn(stage_index, state, batches)
                    state, metrics = exe(state, batches, seed_key)
                    if sync_each_step:
                        jax.block_until_ready(state.step)
                pending.append((step, metrics))
                ledger["work_units"] += multiscale.work_units(stages[stage_index].plan,
                                                              config.batch_size)
                ledger["flops"] += flops
                done = step + 1
                boundary = done == stages[stage_index].end_step
                flushing = done % config.log.every == 0 or boundary or done == total_steps
                if flushing:
                    jax.block_until_ready(state.step)
                compile_s = ledger["compile_seconds"] - compiling  # this step's stage compile
                ledger["seconds"] += time.perf_counter() - t0 - compile_s
                if flushing:
                    flush(stage_index)
                evaluated = done % config.log.eval_every == 0 or done == total_steps
                if evaluated:
                    flush(stage_index)
                    row = evaluate(done, stage_index, batches[0])
                    result = row
                    improved = row["psnr"] > best_psnr
                    best_psnr = max(best_psnr, row["psnr"])
                    progress.write(f"step {done} stage {stage_index}: valid PSNR "
                                   f"{row['psnr']:.2f} dB (input {row['input_psnr']:.2f}), "
                                   f"SSIM {row['ssim']:.4f}{' *best' if improved else ''}")
                    save(done, stage_index, {"psnr": row["psnr"]})
                elif done % config.log.checkpoint_every == 0 or boundary:
                    flush(stage_index)
                    save(done, stage_index)
                stop = signals.received
                if jax.process_count() > 1:
                    # Checkpoints are written by all processes together, so all must stop at the
                    # same step, whichever got the signal: they agree at every flush step (the
                    # same steps everywhere, and already a sync point).
                    stop = parallel.agreed_signal(stop) if flushing else None
                if stop is not None:
                    flush(stage_index)
                    if not evaluated:
                        save(done, stage_index)
                    ckpt.wait()
                    by = "" if signals.received else " (received by another process)"
                    raise Preempted(stop, (
                        f"stopped by signal {stop}{by} at step {done}; checkpoint saved in "
                        f"{workdir}. Run the same command again to resume."))
    finally:
        ckpt.close()
        runlog.close()
        progress.close()
    if not result and start >= total_steps:
        result = {"step": start, "psnr": best_psnr}
    result["best_psnr"] = best_psnr
    result["best_step"] = ckpt.best_step()
    return result


def _stage_ends(config) -> tuple[int, ...]:
    """Each stage's end step, for a schedule that restarts per stage (else empty)."""
    if config.train.get("lr_schedule", "cosine") != "cosine_per_stage":
        return ()
    return tuple(s.end_step for s in config_check.schedule(config))
