"""The training loop: ``train_and_evaluate(config, workdir)``.

config -> Experiment (build.py) -> data, model, state -> one compiled MGE step per stage -> hooks
(logs, validation, checkpoints, ...: hooks.py). Running it again in the same workdir resumes from
the newest readable checkpoint: step, stage, optimizer, cost ledger and every hook's state;
batches and noise are functions of (seed, step), so resume is exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import jax
from clu import parameter_overview

from msjax import (build, checkpoints, data, hooks as loop_hooks, logs, parallel, rundir,
                   storage, wandb_writer, warmstart)
from msjax.backend.compile_cache import CACHE
from msjax.loop import (Batches, FallBack, Ledger, Loop, Panels, Preempted, Signals, StepPrograms,
                        call_length, progress_plan)
from msjax.registry import METHODS

__all__ = ["Preempted", "run", "train_and_evaluate"]


def run(config, workdir, *, extend: bool = False) -> dict:
    """``train.py``'s work: the plain loop (``method=''``), or the method's own run, which
    comes back to ``train_and_evaluate`` with its hooks, transform and source. ``extend``: a
    larger step budget than the run's in ``workdir`` extends it (else it is refused)."""
    exp = build.experiment(config)
    wandb_writer.check_installed(exp.log)      # a method may work for a while before training
    if not exp.method:
        return train_and_evaluate(exp, workdir, extend=extend)
    return METHODS.get(exp.method)(exp, workdir)


def train_and_evaluate(config, workdir, *, hooks=(), transform=None, train_source=None,
                       extend: bool = False) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the final validation metrics.

    ``config`` is a config or an already built ``build.Experiment``. Training methods
    (msjax/methods) plug in here: ``hooks`` join the loop's own (``hooks.Hook``: a method's
    start, its periodic work), ``transform(step, batches) -> batches`` rewrites each step's
    device batches before the MGE step (ECO's teacher pairs), and ``train_source`` replaces the
    training images (a source whose items carry more than the images, e.g. cached teacher
    outputs). All must be deterministic in (step, batches), so resume stays exact.

    A larger step budget than the run's in ``workdir`` extends it only with ``extend=True``;
    a full-multiscale run's new steps go to its finest stage, at the rate its schedule ended
    with (``build.resumed``), and config.json records the new stage steps.
    """
    logs.quiet_library_logs()
    started, compiles_before = time.perf_counter(), CACHE.snapshot()
    exp = build.experiment(config)
    wandb_writer.check_installed(exp.log)
    workdir = rundir.open_for(workdir)
    resume = build.resume(workdir, exp, extend=extend)
    exp = build.resumed(exp, workdir, resume)
    finished = finished_result(workdir, exp) if resume.kind == "same" else None
    if finished is not None:
        return finished
    if exp.warm_start and not rundir.checkpoint_steps(workdir):  # before the workdir is made
        warmstart.check_source(exp.warm_start)
    # The data first: a dataset that is missing or cannot be prepared stops the run before the
    # workdir is made.
    train_source = train_source or data.open_source(exp.input, "train", scale=exp.task.scale)
    valid = build.make_validation(exp, source=data.open_source(exp.input, "valid",
                                                               scale=exp.task.scale))
    with storage.for_run(workdir / "checkpoints"), rundir.Claim(workdir), \
            storage.LibraryNoise(workdir / "train.log", jax.process_index() == 0), \
            Signals() as signals, \
            contextlib.ExitStack() as cleanup:
        start = restore_or_start(exp, workdir, resume, valid.batch["input"].shape)
        cleanup.callback(start.progress.close)
        cleanup.callback(start.ckpt.close)
        step = int(parallel.fetch(start.state.step))
        start.progress.start = step
        inp = data.TrainingInput(exp.input, train_source, exp.mesh, seed=exp.seed,
                                 task=exp.task, stages=exp.stages, start=step,
                                 stop=exp.total_steps, path=start.meta.get("input", ""))
        cleanup.callback(inp.close)
        start.progress.write(inp.line)
        start.progress.write(valid.line)
        runlog = logs.RunLog(workdir, resume_step=step if start.restored else None,
                             image_count=exp.log.image_count, image_size=exp.log.image_size,
                             wandb=dict(record=exp.record, project=exp.log.wandb_project,
                                        mode=exp.log.wandb_mode) if exp.log.wandb else None,
                             **exp.eval.metric_kw)
        runlog.write_config(exp.record, step)
        seed_key = parallel.put_replicated(jax.random.PRNGKey(exp.seed), exp.mesh)
        batches_at = Batches(exp, inp, seed_key, transform)
        evaluate = build.eval_step(exp)
        validation = loop_hooks.Validation(exp.log.eval_every, valid, evaluate,
                                           Panels(exp, seed_key), batches_at)
        probe = loop_hooks.Probe(valid, evaluate)
        run_hooks = [loop_hooks.NonFinite(exp.runtime.nonfinite, exp.runtime.max_skipped, probe),
                     probe, loop_hooks.TrainLog(exp.log.every, validation)]
        run_hooks += [loop_hooks.AdaptiveMoveOn(exp)] if exp.adaptive is not None else []
        divergence = loop_hooks.Divergence(probe)
        run_hooks += [validation, divergence, loop_hooks.TargetStop(exp.target_psnr),
                      loop_hooks.Checkpointing(exp.log.checkpoint_every),
                      loop_hooks.Preemption(signals, exp.log.every)]
        run_hooks += [loop_hooks.WarmStart(exp.warm_start)] if exp.warm_start else []
        run_hooks += list(hooks)
        loop = Loop(exp, workdir, start.state, step, start.ckpt, start.progress, runlog,
                    Ledger.from_meta(start.meta), inp, run_hooks, start.meta,
                    restored_at=step if start.restored else None, previous=step)
        loop.programs = StepPrograms(exp, seed_key, lambda: loop.ledger, start.progress,
                                     start.meta, dataset=inp.dataset if batches_at.fused else None)
        start.progress.write(loop.programs.describe())
        loop.programs.start_first(exp.stage_at(step), loop.state)
        cleanup.callback(lambda: loop.runlog.close())  # a fall back reopens the logs
        cleanup.callback(loop.programs.close)
        for hook in run_hooks:  # a resumed run's hooks take their saved state
            hook.load(start.meta) if start.restored else hook.initialize(loop)
        for hook in run_hooks:
            hook.start(loop)
        while loop.step < loop.exp.total_steps and not loop.stop:
            exp, stage = loop.exp, loop.exp.stage_at(loop.step)
            t0, compiling = time.perf_counter(), loop.ledger.compile_seconds
            # The steady state moves nothing from host to device but the host path's batch
            # (an explicit transfer); the device path moves nothing at all.
            with jax.transfer_guard(exp.runtime.transfer_guard):
                batches = batches_at(loop.step, stage, loop.state)
                steps = call_length(exp, loop.step,
                                    loop.programs.steps_per_call(stage, loop.state, batches))
                program = loop.programs(stage, steps, loop.state, batches)
                loop.state, metrics = program(loop.state, batches, seed_key)
            loop.pending.append((loop.step, steps, metrics))
            loop.previous, loop.step = loop.step, loop.step + steps
            loop.stage, loop.batches, loop.validated = stage, batches, None
            loop.boundary = loop.step in (exp.stages[stage].end_step, exp.total_steps)
            if exp.backend.sync_each_step or loop.crossed(exp.log.every) or loop.boundary:
                jax.block_until_ready(loop.state.step)
            loop.ledger.add(exp.stages[stage].plan, exp.batch_size, loop.programs.flops[stage],
                            time.perf_counter() - t0 - (loop.ledger.compile_seconds - compiling),
                            steps)
            try:
                for hook in run_hooks:
                    hook.after_steps(loop)
            except FallBack:  # a hook moved the loop back to an older checkpoint
                continue
        loop.ckpt.wait()
        loop.progress.write(CACHE.summary(compiles_before, time.perf_counter() - started))
        if loop.ledger.skipped:
            loop.progress.write(f"warning: {loop.ledger.skipped} of {loop.exp.total_steps} "
                                "steps were non-finite and skipped")
    result = loop.result or {"step": loop.step, "psnr": validation.best}
    return result | {"best_psnr": validation.best, "best_step": loop.ckpt.best_step(),
                     "workdir": str(workdir), "skipped": loop.ledger.skipped,
                     "warnings": list(divergence.warnings)}


@dataclasses.dataclass
class Start:
    """Where a run starts: a restored checkpoint (``restored``, its ``meta``) or a fresh state;
    the open checkpoints and the progress log."""

    state: object
    meta: dict
    restored: bool
    ckpt: checkpoints.Checkpoints
    progress: logs.Progress


def restore_or_start(exp, workdir: Path, resume, sample_shape) -> Start:
    """The newest readable checkpoint, read before any log is written, or a fresh state; writes
    config.json, the start banner and parameters.txt."""
    primary = jax.process_index() == 0
    state = build.initial_state(exp, sample_shape)
    notes = []  # what opening the checkpoints says, shown once the progress log exists
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep_best=exp.log.keep_best,
                                   on_message=notes.append)
    try:
        restored = ckpt.restore_latest(state, on_fallback=notes.append)
    except BaseException:
        ckpt.close()
        raise
    step = int(restored.meta["step"]) if restored is not None else 0
    history = rundir.read_history(workdir) + [
        {"step": step, "field": k, "from": old, "to": new} for k, old, new in resume.after_stop]
    if primary:
        rundir.write_config(workdir, exp.record, history)
    progress = logs.Progress(exp.total_steps, 0, workdir, enabled=primary,
                             stages=len(exp.stages), plan=progress_plan(exp.stages,
                                                                        exp.batch_size))
    ckpt.on_message = progress.write
    params = parameter_overview.count_parameters(state.params)
    for line in exp.describe() + [f"model: {exp.model_name}, {params:,} parameters"] + notes:
        progress.write(line)
    if primary:
        storage.write_file(workdir / "parameters.txt",
                           parameter_overview.get_parameter_overview(state.params) + "\n")
    if "batch_stats" in state.model_state and len(
            {n for s in exp.stages for n in s.plan.batch_sizes}) > 1:
        progress.write("note: BatchNorm in training mode normalises each MGE evaluation by its own "
                       "term's batch; with unequal term batches the terms' statistics differ and "
                       "the estimator is biased; equal mge.batch_sizes avoid it")
    if restored is None:
        return Start(state, {}, False, ckpt, progress)
    if "imported_from" in restored.meta and int(restored.meta["step"]) == 0:
        progress.write(f"fine-tuning the weights imported from {restored.meta['imported_from']} "
                       f"({restored.meta.get('imported_scheme', '')} scheme) with a fresh "
                       "optimizer")
        return Start(restored.state, dict(restored.meta), True, ckpt, progress)
    progress.write(f"resumed from step {restored.meta['step']} "
                   f"(stage {int(restored.meta['stage']) + 1}/{len(exp.stages)}) "
                   f"in {workdir}")
    for k, old, new in resume.after_stop:
        progress.write(f"after the non-finite stop, {k} changes from {old!r} to {new!r} at step "
                       f"{step} (recorded in {rundir.CONFIG_FILE})")
    if resume.kind == "extended" and exp.record.get("fms.extended_from"):
        start = int(exp.record["fms.extended_from"])
        progress.write(f"extending the run from {resume.previous_steps} to {exp.total_steps} "
                       f"steps: the finest stage trains {exp.total_steps - resume.previous_steps}"
                       f" more at the learning rate the schedule reached at step {start}, "
                       f"{float(exp.learning_rate(start)):.3g}, held constant; fms.stage_steps="
                       f"{tuple(s.steps for s in exp.stages)} in {rundir.CONFIG_FILE}")
    elif resume.kind == "extended":
        progress.write(f"extending the run from {resume.previous_steps} to {exp.total_steps} "
                       "steps: the learning-rate schedule is recomputed for the new budget")
    return Start(restored.state, dict(restored.meta), True, ckpt, progress)


def finished_result(workdir: Path, exp) -> dict | None:
    """The results of a run that already ran its steps (or reached its target PSNR), read from
    its logs (no model is built), or None."""
    steps_done = rundir.checkpoint_steps(workdir)
    if not steps_done or not (workdir / "valid.csv").exists():
        return None
    meta = rundir.checkpoint_meta(workdir, max(steps_done))
    # An adaptive schedule's end is where its decisions put it, recorded with the checkpoint.
    total_steps = meta.get("total_steps", exp.total_steps) if exp.adaptive else exp.total_steps
    if not meta.get("target_reached") and max(steps_done) < total_steps:
        return None
    rows = logs.read_csv(workdir / "valid.csv")
    if not rows:
        return None
    best = max(rows, key=lambda r: r["psnr"] if math.isfinite(r["psnr"]) else -math.inf)
    result = dict(rows[-1])
    result.update(step=int(result["step"]), best_psnr=best["psnr"], best_step=int(best["step"]),
                  workdir=str(workdir), finished=True)
    if jax.process_index() == 0:
        why = "reached its target PSNR" if meta.get("target_reached") else \
            f"ran its {total_steps} steps"
        line = (f"the run in {workdir} is finished ({why}); a larger --config.train.steps "
                "extends it")
        print(line, flush=True)
        logs.append_to_log(workdir, line)  # train.log holds what the terminal showed
    return result
