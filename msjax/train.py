"""The training loop: ``train_and_evaluate(config, workdir)``.

config -> experiment (build.py) -> compiled MGE step per stage -> state -> logs / checkpoints.
Running it again in the same workdir resumes from the newest readable checkpoint: step, stage,
optimizer, cost ledger; batches and noise are functions of (seed, step), so resume is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import time
from pathlib import Path

import jax
import numpy as np

from msjax import (build, checkpoints, config_check, data, logs, multiscale, optim, parallel,
                   rundir, steps, warmstart)
from msjax.errors import NonFiniteError, RunDirError
from msjax.lock import WorkdirLock

class Preempted(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was saved. ``signum`` is the signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Signals:
    """Turns SIGTERM / SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.received, self._previous = None, {}

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


@dataclasses.dataclass
class Ledger:
    """Costs so far: ``seconds`` is training wall time without compiling (which a longer run
    amortises), ``compile_seconds`` the stages' compile (and kernel measurement) time."""

    work_units: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    skipped: int = 0

    def row(self) -> dict:
        return dataclasses.asdict(self)


class MetricsBuffer:
    """Per-step metrics stay on the device until a log step; the NaN check then costs nothing,
    because it runs on what is fetched for logging anyway. With ``runtime.nonfinite=skip`` it
    also counts the skipped steps among the last ``window``."""

    def __init__(self, window: int = 50):
        self.pending, self.recent, self.window = [], [], window

    def add(self, step: int, metrics):
        self.pending.append((step, metrics))

    def fetch(self) -> tuple[int, dict, list]:
        """(last step, its metrics as floats, [(step, metrics) of non-finite steps])."""
        fetched = parallel.fetch(self.pending)
        self.pending = []
        bad = [(s, m) for s, m in fetched if not bool(m["finite"])]
        self.recent = (self.recent + [not bool(m["finite"]) for _, m in fetched])[-self.window:]
        step, m = fetched[-1]
        return step, {k: float(v) for k, v in m.items()}, bad

    def skipped_share(self) -> float:
        return sum(self.recent) / len(self.recent) if len(self.recent) >= self.window else 0.0


class StepPrograms:
    """Each stage's compiled step, compiled on first use with the kernels a checkpoint
    recorded; on the device input path the step cuts its own batches from ``dataset``."""

    def __init__(self, exp, seed_key, ledger, progress, recorded: dict, dataset=None):
        self.exp, self.seed_key, self.ledger, self.progress = exp, seed_key, ledger, progress
        self.recorded, self.programs, self.dataset = dict(recorded), {}, dataset

    def __call__(self, stage: int, state, batches):
        if stage not in self.programs:
            self.progress.compiling(stage, terms=self.exp.stages[stage].plan.num_terms)
            program = build.compile_train_step(self.exp, stage, state, batches, self.seed_key,
                                               recorded=self.recorded.get(str(stage), ""),
                                               dataset=self.dataset)
            self.ledger.compile_seconds += program.seconds
            if program.kernels:
                self.recorded[str(stage)] = program.kernels
            measured = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in program.timings.items())
            self.progress.compiled(
                stage, program.seconds,
                detail=(f"convolutions {program.kernels}" if program.kernels else "")
                + (f" (measured per step: {measured})" if measured else ""))
            self.programs[stage] = program
        return self.programs[stage]


def host_batches(exp, source, step: int) -> tuple:
    """This process's rows of every term's batch at ``step`` (a pure function of the step)."""
    c, plan = exp.config, exp.stages[exp.stage_at(step)].plan
    batches = tuple(data.term_batch(
        source, seed=c.seed, step=step, term=k, batch=n, patch=c.data.patch,
        scale=exp.task.scale, augment=c.data.augment, rows=parallel.process_rows(n, exp.mesh),
        resize=data.pipeline.whole_image_resize(c.data))
        for k, n in enumerate(plan.batch_sizes[:1] if plan.shared_batch else plan.batch_sizes))
    if exp.task.host_corrupt is not None:  # e.g. JPEG: the step restricts it like paired data
        batches = tuple({**b, "input": exp.task.host_corrupt(b["target"])} for b in batches)
    return batches


def panels(state, batch, key, *, task, count: int):
    """Validation and training images for the logs: input, output (evaluation mode), target."""
    head = jax.tree.map(lambda a: a[:count], batch)
    if "input" in head:
        y, t = head["input"], head.get("t")
    else:
        y, t = task.corrupt(head["target"], key, 0)
    return {"input": y, "output": steps.predict(state, y, t, task=task), "target": head["target"]}


def open_workdir(workdir: Path, exp) -> rundir.Resume:
    """Checks that the workdir can hold this experiment (it is created once the data is open)."""
    if workdir.exists() and not workdir.is_dir():
        raise RunDirError(f"--workdir {workdir} is a file, not a directory; choose another path")
    return rundir.compare(workdir, exp.config, lambda c: config_check.schedule(c)[-1].end_step)


class _FallBack(Exception):
    """The first steps after a restore were not finite: the restored checkpoint is set aside and
    the run starts again from the one before it."""


def train_and_evaluate(config, workdir, *, init_fn=None, batch_transform=None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the final validation metrics.

    ``config`` is a config or an already built ``build.Experiment``. Training methods
    (msjax/methods) plug in here: ``init_fn(state) -> state`` replaces the initial state of a
    fresh run (e.g. weights inherited from an earlier phase), and ``batch_transform(step,
    batches) -> batches`` rewrites each step's device batches before the MGE step (e.g. ECO's
    teacher pairs). Both must be deterministic in (step, batches).
    """
    logs.quiet_library_logs()
    exp = config if isinstance(config, build.Experiment) else build.experiment(config)
    workdir = Path(workdir).expanduser()
    resume = open_workdir(workdir, exp)
    finished = _finished(workdir, exp.total_steps) if resume.kind == "same" else None
    if finished is not None:
        return finished
    # The data first: a dataset that is missing or cannot be prepared stops the run before the
    # workdir is made.
    sources = (data.open_source(exp.config.data, "train", scale=exp.task.scale),
               data.open_source(exp.config.data, "valid", scale=exp.task.scale))
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        try:
            return _run(exp, workdir, resume, sources, init_fn, batch_transform,
                        may_fall_back=True)
        except _FallBack:
            return _run(exp, workdir, resume, sources, init_fn, batch_transform,
                        may_fall_back=False)
    finally:
        if lock is not None:
            lock.release()


def _finished(workdir: Path, total_steps: int) -> dict | None:
    """The results of a run that already reached ``total_steps``, read from its logs (no model
    is built), or None."""
    steps_done = rundir.checkpoint_steps(workdir)
    if not steps_done or max(steps_done) < total_steps or not (workdir / "valid.csv").exists():
        return None
    rows = logs.read_csv(workdir / "valid.csv")
    if not rows:
        return None
    best = max(rows, key=lambda r: r["psnr"] if math.isfinite(r["psnr"]) else -math.inf)
    result = {k: v for k, v in rows[-1].items()}
    result.update(step=int(result["step"]), best_psnr=best["psnr"], best_step=int(best["step"]),
                  workdir=str(workdir), finished=True)
    if jax.process_index() == 0:
        print(f"the run in {workdir} is finished ({total_steps} steps); a larger "
              "--config.train.steps extends it", flush=True)
    return result


def _run(exp, workdir: Path, resume, sources, init_fn, batch_transform, *,
         may_fall_back: bool) -> dict:
    c, primary = exp.config, jax.process_index() == 0
    source, valid_source = sources
    valid = build.make_validation(c, exp.task, exp.mesh, source=valid_source)
    state = build.initial_state(exp, valid.batch["input"].shape)
    notes = []  # what opening the checkpoints says, shown once the progress log exists
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep_best=c.log.keep_best,
                                   on_message=notes.append)
    try:
        restored = ckpt.restore_latest(state, on_fallback=notes.append)  # before any log write
    except BaseException:
        ckpt.close()
        raise
    if primary:
        rundir.write_config(workdir, c)
    progress = logs.Progress(exp.total_steps, 0, workdir, enabled=primary,
                             stages=len(exp.stages))
    ckpt.on_message = progress.write
    for line in exp.describe() + notes:
        progress.write(line)
    if "batch_stats" in state.model_state and len(
            {n for s in exp.stages for n in s.plan.batch_sizes}) > 1:
        progress.write("note: BatchNorm in training mode normalises each MGE evaluation by its own "
                       "term's batch; with unequal term batches the terms' statistics differ and "
                       "the estimator is biased (README, Configs); equal mge.batch_sizes avoid it")
    ledger, best_psnr, meta = Ledger(), -math.inf, {}
    if restored is None:  # a fresh run: warm-started weights, then a method's own start
        state = warmstart.warm_start(state, c.train, write=progress.write)
        state = init_fn(state) if init_fn is not None else state
    else:
        state, meta, _ = restored
        ledger = Ledger(**{k: meta.get(k, 0) for k in Ledger.__dataclass_fields__})
        best_psnr = meta.get("best_psnr", best_psnr)
        progress.write(f"resumed from step {meta['step']} (stage {meta['stage']}) in {workdir}")
        if resume.kind == "extended":
            progress.write(f"extending the run from {resume.previous_steps} to "
                           f"{exp.total_steps} steps: stages and the learning-rate schedule "
                           "are recomputed for the new budget")
    start = int(parallel.fetch(state.step))
    progress.start = start
    inp = data.TrainingInput(c, source, exp.mesh, task=exp.task, stages=exp.stages, start=start,
                             stop=exp.total_steps, path=meta.get("input", ""))
    progress.write(inp.line)
    runlog = logs.RunLog(workdir, resume_step=start if restored is not None else None,
                         image_count=c.log.image_count, image_size=c.log.image_size,
                         crop_border=c.eval.crop_border, y_channel=c.eval.y_channel)
    runlog.config(c, start)
    seed_key = parallel.put_replicated(jax.random.PRNGKey(c.seed), exp.mesh)
    lr, evaluate = optim_schedule(exp), build.eval_step(exp)
    draw = exp.backend.jit(functools.partial(panels, task=exp.task, count=c.log.image_count),
                           out_shardings=parallel.replicated(exp.mesh))
    # On the device path the step cuts its own batches (``fused``) unless a method rewrites them
    # in between; then, and for the image logs, a separate program cuts them, still on device.
    fused = inp.on_device and batch_transform is None
    samplers = {}

    def sample(stage, *args):
        if stage not in samplers:
            samplers[stage] = exp.backend.jit(functools.partial(build.device_batches, exp, stage))
        return samplers[stage](*args)

    programs = StepPrograms(exp, seed_key, ledger, progress, meta.get("kernels", {}),
                            dataset=inp.dataset if fused else None)
    buffer, result = MetricsBuffer(), {}

    def flush(stage):
        if not buffer.pending:
            return
        ckpt.raise_if_save_failed()
        last, m, bad = buffer.fetch()
        if bad and restored is not None and may_fall_back and bad[0][0] < start + c.log.every:
            older = ckpt.restore_before(start, state, on_fallback=progress.write)
            if older is not None:
                progress.write(f"step {bad[0][0]} right after restoring checkpoint {start} is "
                               "not finite: that checkpoint is set aside; resuming from "
                               f"checkpoint {older.step}")
                raise _FallBack()
        good = [s for s in ckpt.steps() if s <= bad[0][0]] if bad else []
        kept = (f"the last good checkpoint (step {max(good)}) is kept in {workdir}. " if good
                else "no checkpoint before it was saved. ")
        if bad and c.runtime.nonfinite == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradient at step {bad[0][0]} (loss "
                f"{float(bad[0][1]['loss'])}, grad norm {float(bad[0][1]['grad_norm'])}); {kept}"
                "Lower train.lr, or set --config.runtime.nonfinite=skip to skip such steps")
        ledger.skipped += len(bad)
        if bad:
            progress.write(f"warning: {len(bad)} non-finite step(s) skipped up to step "
                           f"{last + 1} ({ledger.skipped} in all)")
        if buffer.skipped_share() > c.runtime.max_skipped:
            raise NonFiniteError(
                f"{sum(buffer.recent)} of the last {buffer.window} steps were non-finite and "
                f"skipped (runtime.max_skipped={c.runtime.max_skipped}); {kept}Lower train.lr")
        runlog.scalars("train", {"step": last + 1, "stage": stage, "loss": m["loss"],
                                 "finest_loss": m["finest_loss"], "grad_norm": m["grad_norm"],
                                 "lr": float(lr(last)), **ledger.row()})
        progress.update(last + 1, stage=stage, terms=exp.stages[stage].plan.num_terms,
                        loss=m["loss"], best_psnr=best_psnr)

    def save(step, stage, metrics=None):
        ckpt.save(step, state, {"step": step, "stage": stage, "best_psnr": best_psnr,
                                "kernels": programs.recorded, "input": inp.path,
                                **ledger.row()}, metrics)

    def batches_at(step):
        if inp.on_device:
            batches = inp.dataset if fused else sample(exp.stage_at(step), inp.dataset,
                                                       seed_key, state.step)
        else:
            plan = exp.stages[exp.stage_at(step)].plan
            batches = tuple(parallel.put_batch(b, exp.mesh, n)
                            for b, n in zip(inp.host_batches(step), plan.batch_sizes))
        return batch_transform(step, batches) if batch_transform is not None else batches

    try:
        with Signals() as signals:
            for step in range(start, exp.total_steps):
                stage = exp.stage_at(step)
                t0, compiling = time.perf_counter(), ledger.compile_seconds
                # The steady state moves nothing from host to device but the host path's batch
                # (an explicit transfer); the device path moves nothing at all.
                with jax.transfer_guard(c.runtime.transfer_guard):
                    batches = batches_at(step)
                    program = programs(stage, state, batches)
                    state, metrics = program(state, batches, seed_key)
                if exp.backend.sync_each_step:
                    jax.block_until_ready(state.step)
                buffer.add(step, metrics)
                done, plan = step + 1, exp.stages[stage].plan
                boundary = done == exp.stages[stage].end_step
                logging_step = done % c.log.every == 0 or boundary or done == exp.total_steps
                if logging_step:
                    jax.block_until_ready(state.step)
                ledger.work_units += multiscale.work_units(plan, c.batch_size)
                ledger.flops += program.flops
                ledger.seconds += time.perf_counter() - t0 - (ledger.compile_seconds - compiling)
                if logging_step:
                    flush(stage)
                if done % c.log.eval_every == 0 or done == exp.total_steps:
                    flush(stage)
                    out = parallel.fetch(evaluate(state, valid.batch))
                    row = {"step": done, "stage": stage, **valid.input_scores,
                           **{k: float(np.mean(v[:valid.count])) for k, v in out.items()},
                           **ledger.row()}
                    runlog.scalars("valid", row)
                    improved, best_psnr = row["psnr"] > best_psnr, max(best_psnr, row["psnr"])
                    progress.write(f"step {done} {progress.stage_label(stage)}: valid PSNR "
                                   f"{row['psnr']:.2f} dB (input {row['input_psnr']:.2f}), SSIM "
                                   f"{row['ssim']:.4f}{' *best' if improved else ''}")
                    train_batch = batches[0] if not fused else sample(
                        stage, inp.dataset, seed_key, state.step)[0]
                    runlog.images(done, parallel.fetch(draw(state, valid.batch, seed_key)))
                    # What the model makes of data it is fitted to, beside validation.
                    runlog.images(done, parallel.fetch(draw(state, train_batch, seed_key)),
                                  stream="train")
                    save(done, stage, {"psnr": row["psnr"]})
                    result = row
                elif done % c.log.checkpoint_every == 0 or boundary:
                    flush(stage)
                    save(done, stage)
                stop = signals.received
                if jax.process_count() > 1:
                    # Checkpoints are written by all processes together, so all stop at the same
                    # step, whichever got the signal: they agree at every log step.
                    stop = parallel.agreed_signal(stop) if done % c.log.every == 0 else None
                if stop is not None:
                    flush(stage)
                    if max(ckpt.steps(), default=None) != done:
                        save(done, stage)
                    ckpt.wait()
                    by = "" if signals.received else " (received by another process)"
                    raise Preempted(stop, f"stopped by signal {stop}{by} at step {done}; "
                                          f"checkpoint saved in {workdir}. Run the same command "
                                          "again to resume.")
        ckpt.wait()
        if ledger.skipped:
            progress.write(f"warning: {ledger.skipped} of {exp.total_steps} steps were non-finite "
                           "and skipped")
    finally:
        inp.close()
        ckpt.close()
        runlog.close()
        progress.close()
    if not result and start >= exp.total_steps:
        result = {"step": start, "psnr": best_psnr}
    return result | {"best_psnr": best_psnr, "best_step": ckpt.best_step(),
                     "workdir": str(workdir), "skipped": ledger.skipped}


def optim_schedule(exp):
    """The learning rate at each step, for the logs (the optimizer holds its own copy)."""
    ends = exp.stage_ends if exp.config.train.lr_schedule == "cosine_per_stage" else ()
    return optim.learning_rate(exp.config.train, exp.total_steps, ends)
