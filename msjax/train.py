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
from clu import parameter_overview

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

    def agreed(self, done: int, every: int):
        """The signal to stop on after step ``done``, or None. Checkpoints are written by all
        processes together, so on several hosts all stop at the same step, whichever got the
        signal: they agree at every log step (``every``)."""
        if jax.process_count() == 1:
            return self.received
        return parallel.agreed_signal(self.received) if done % every == 0 else None

    def preempted(self, signum: int, done: int, workdir) -> Preempted:
        by = "" if self.received else " (received by another process)"
        return Preempted(signum, f"stopped by signal {signum}{by} at step {done}; checkpoint "
                                 f"saved in {workdir}. Run the same command again to resume.")


@dataclasses.dataclass
class Ledger:
    """Costs so far: ``seconds`` is training wall time without compiling (which a longer run
    amortises), ``compile_seconds`` the stages' compile (and kernel measurement) time."""

    work_units: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    skipped: int = 0

    def add(self, plan, reference_batch: int, flops: float, seconds: float):
        self.work_units += multiscale.work_units(plan, reference_batch)
        self.flops += flops
        self.seconds += seconds

    def row(self) -> dict:
        return dataclasses.asdict(self)


class MetricsBuffer:
    """Per-step metrics stay on the device until a log step; the NaN check then costs nothing,
    because it runs on what is fetched for logging anyway.

    Non-finite steps (``runtime.nonfinite``): ``stop`` raises NonFiniteError naming the step and
    a checkpoint that exists; if they come right after a restore, that checkpoint is set aside
    and the run falls back to the one before it, once (``_FallBack``). ``skip`` counts them,
    warns at each log step and stops when more than ``runtime.max_skipped`` of the last
    ``window`` steps were skipped."""

    def __init__(self, runtime, ckpt, workdir, progress, *, restored_at=None, window: int = 50):
        self.runtime, self.ckpt, self.workdir, self.progress = runtime, ckpt, workdir, progress
        self.restored_at, self.window = restored_at, window
        self.pending, self.recent = [], []

    def add(self, step: int, metrics):
        self.pending.append((step, metrics))

    def fetch(self, state, ledger, first_interval: int) -> tuple[int, dict] | None:
        """(last step, its metrics as floats) after the non-finite policy, None if empty."""
        if not self.pending:
            return None
        self.ckpt.raise_if_save_failed()
        fetched, self.pending = parallel.fetch(self.pending), []
        bad = [(s, m) for s, m in fetched if not bool(m["finite"])]
        finite = [float(m["finest_loss"]) for _, m in fetched if bool(m["finite"])]
        self.interval = (sum(finite), len(finite))  # for an adaptive schedule
        self.recent = (self.recent + [not bool(m["finite"]) for _, m in fetched])[-self.window:]
        if bad:
            self._non_finite(bad, state, ledger, first_interval, fetched[-1][0])
        step, m = fetched[-1]
        return step, {k: float(v) for k, v in m.items()}

    def _non_finite(self, bad, state, ledger, first_interval, last):
        first, m = bad[0]
        if self.restored_at is not None and first < self.restored_at + first_interval:
            older = self.ckpt.restore_before(self.restored_at, state,
                                             on_fallback=self.progress.write)
            if older is not None:
                self.progress.write(f"step {first} right after restoring checkpoint "
                                    f"{self.restored_at} is not finite: that checkpoint is set "
                                    f"aside; resuming from checkpoint {older.step}")
                raise _FallBack()
        good = [s for s in self.ckpt.steps() if s <= first]
        kept = (f"the last good checkpoint (step {max(good)}) is kept in {self.workdir}. "
                if good else "no checkpoint before it was saved. ")
        if self.runtime.nonfinite == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradient at step {first} (loss {float(m['loss'])}, grad "
                f"norm {float(m['grad_norm'])}); {kept}Lower train.lr, or set "
                "--config.runtime.nonfinite=skip to skip such steps")
        ledger.skipped += len(bad)
        self.progress.write(f"warning: {len(bad)} non-finite step(s) skipped up to step "
                            f"{last + 1} ({ledger.skipped} in all)")
        if len(self.recent) >= self.window and sum(self.recent) / self.window > \
                self.runtime.max_skipped:
            raise NonFiniteError(
                f"{sum(self.recent)} of the last {self.window} steps were non-finite and "
                f"skipped (runtime.max_skipped={self.runtime.max_skipped}); {kept}Lower train.lr")


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


def train_and_evaluate(config, workdir, *, init_fn=None, batch_transform=None,
                       train_source=None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the final validation metrics.

    ``config`` is a config or an already built ``build.Experiment``. Training methods
    (msjax/methods) plug in here: ``init_fn(state) -> state`` replaces the initial state of a
    fresh run (e.g. weights inherited from an earlier phase), and ``batch_transform(step,
    batches) -> batches`` rewrites each step's device batches before the MGE step (e.g. ECO's
    teacher pairs). Both must be deterministic in (step, batches). ``train_source`` replaces
    the training source the config names (e.g. one whose items carry a teacher's images).
    """
    logs.quiet_library_logs()
    exp = config if isinstance(config, build.Experiment) else build.experiment(config)
    workdir = Path(workdir).expanduser()
    resume = open_workdir(workdir, exp)
    finished = _finished(workdir, exp) if resume.kind == "same" else None
    if finished is not None:
        return finished
    # The data first: a dataset that is missing or cannot be prepared stops the run before the
    # workdir is made.
    sources = (train_source if train_source is not None else
               data.open_source(exp.config.data, "train", scale=exp.task.scale),
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


def _finished(workdir: Path, exp) -> dict | None:
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
    result = {k: v for k, v in rows[-1].items()}
    result.update(step=int(result["step"]), best_psnr=best["psnr"], best_step=int(best["step"]),
                  workdir=str(workdir), finished=True)
    if jax.process_index() == 0:
        why = "reached its target PSNR" if meta.get("target_reached") else \
            f"ran its {total_steps} steps"
        print(f"the run in {workdir} is finished ({why}); a larger --config.train.steps "
              "extends it", flush=True)
    return result


def _restore_or_start(exp, workdir: Path, resume, valid, init_fn):
    """(state, meta, restored?, checkpoints, progress): the newest readable checkpoint, read
    before any log is written, or a fresh state (warm-started, then the method's own start)."""
    c, primary = exp.config, jax.process_index() == 0
    state = build.initial_state(exp, valid.batch["input"].shape)
    notes = []  # what opening the checkpoints says, shown once the progress log exists
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep_best=c.log.keep_best,
                                   on_message=notes.append)
    try:
        restored = ckpt.restore_latest(state, on_fallback=notes.append)
    except BaseException:
        ckpt.close()
        raise
    if primary:
        rundir.write_config(workdir, c)
    progress = logs.Progress(exp.total_steps, 0, workdir, enabled=primary,
                             stages=len(exp.stages))
    ckpt.on_message = progress.write
    params = parameter_overview.count_parameters(state.params)
    for line in exp.describe() + [f"model: {c.model}, {params:,} parameters"] + notes:
        progress.write(line)
    if primary:
        (workdir / "parameters.txt").write_text(
            parameter_overview.get_parameter_overview(state.params) + "\n")
    if "batch_stats" in state.model_state and len(
            {n for s in exp.stages for n in s.plan.batch_sizes}) > 1:
        progress.write("note: BatchNorm in training mode normalises each MGE evaluation by its own "
                       "term's batch; with unequal term batches the terms' statistics differ and "
                       "the estimator is biased (README, Configs); equal mge.batch_sizes avoid it")
    if restored is None:
        state = warmstart.warm_start(state, c.train, write=progress.write)
        return (init_fn(state) if init_fn is not None else state), {}, False, ckpt, progress
    state, meta, _ = restored
    if exp.adaptive is not None and "adaptive" in meta:  # the decisions the run made so far
        exp.adaptive.load(meta["adaptive"])
        state = replan(exp, state)
    progress.write(f"resumed from step {meta['step']} (stage {meta['stage']}) in {workdir}")
    if resume.kind == "extended":
        progress.write(f"extending the run from {resume.previous_steps} to {exp.total_steps} "
                       "steps: stages and the learning-rate schedule are recomputed for the new "
                       "budget")
    return state, meta, True, ckpt, progress


def _run(exp, workdir: Path, resume, sources, init_fn, batch_transform, *,
         may_fall_back: bool) -> dict:
    c = exp.config
    valid = build.make_validation(c, exp.task, exp.mesh, source=sources[1])
    state, meta, restored, ckpt, progress = _restore_or_start(exp, workdir, resume, valid,
                                                              init_fn)
    ledger = Ledger(**{k: meta.get(k, 0) for k in Ledger.__dataclass_fields__})
    best_psnr, start = meta.get("best_psnr", -math.inf), int(parallel.fetch(state.step))
    progress.start, progress.total = start, exp.total_steps
    recent_psnr = list(meta.get("recent_psnr", []))
    inp = data.TrainingInput(c, sources[0], exp.mesh, task=exp.task, stages=exp.stages,
                             start=start, stop=exp.total_steps, path=meta.get("input", ""))
    progress.write(inp.line)
    runlog = logs.RunLog(workdir, resume_step=start if restored else None,
                         image_count=c.log.image_count, image_size=c.log.image_size,
                         crop_border=c.eval.crop_border, y_channel=c.eval.y_channel)
    runlog.config(c, start)
    seed_key = parallel.put_replicated(jax.random.PRNGKey(c.seed), exp.mesh)
    lr, evaluate, draw = optim_schedule(exp), build.eval_step(exp), Panels(exp, seed_key)
    batches_at = Batches(exp, inp, seed_key, batch_transform)
    programs = StepPrograms(exp, seed_key, ledger, progress, meta.get("kernels", {}),
                            dataset=inp.dataset if batches_at.fused else None)
    buffer = MetricsBuffer(c.runtime, ckpt, workdir, progress,
                           restored_at=start if restored and may_fall_back else None)
    result = {}

    def flush(stage):
        fetched = buffer.fetch(state, ledger, first_interval=c.log.every)
        if fetched is not None:
            last, m = fetched
            runlog.scalars("train", {"step": last + 1, "stage": stage, "lr": float(lr(last)),
                                     **{k: m[k] for k in ("loss", "finest_loss", "grad_norm")},
                                     **ledger.row()})
            progress.update(last + 1, stage=stage, terms=exp.stages[stage].plan.num_terms,
                            loss=m["loss"], best_psnr=best_psnr)

    def save(step, stage, metrics=None, **extra):
        adaptive = {"adaptive": exp.adaptive.state()} if exp.adaptive is not None else {}
        ckpt.save(step, state, {"step": step, "stage": stage, "best_psnr": best_psnr,
                                "kernels": programs.recorded, "input": inp.path,
                                "total_steps": exp.total_steps, "recent_psnr": recent_psnr,
                                **adaptive, **extra, **ledger.row()}, metrics)

    try:
        with Signals() as signals:
            step = start - 1
            while (step := step + 1) < exp.total_steps:  # an adaptive schedule moves the end
                stage, t0 = exp.stage_at(step), time.perf_counter()
                compiling = ledger.compile_seconds
                # The steady state moves nothing from host to device but the host path's batch
                # (an explicit transfer); the device path moves nothing at all.
                with jax.transfer_guard(c.runtime.transfer_guard):
                    batches = batches_at(step, state)
                    program = programs(stage, state, batches)
                    state, metrics = program(state, batches, seed_key)
                buffer.add(step, metrics)
                done, plan = step + 1, exp.stages[stage].plan
                boundary = done in (exp.stages[stage].end_step, exp.total_steps)
                if exp.backend.sync_each_step or done % c.log.every == 0 or boundary:
                    jax.block_until_ready(state.step)
                ledger.add(plan, c.batch_size, program.flops,
                           time.perf_counter() - t0 - (ledger.compile_seconds - compiling))
                if done % c.log.every == 0 or boundary:
                    flush(stage)
                    if exp.adaptive is not None and exp.adaptive.observe(stage, step,
                                                                         *buffer.interval):
                        state, boundary = move_on(exp, state, stage, done, progress), True
                        lr = optim_schedule(exp)
                reached = False
                if done % c.log.eval_every == 0 or done == exp.total_steps:
                    flush(stage)
                    result = validate(exp, state, valid, evaluate, done, stage, ledger, runlog)
                    improved, best_psnr = result["psnr"] > best_psnr, max(best_psnr,
                                                                          result["psnr"])
                    progress.write(f"step {done} {progress.stage_label(stage)}: valid PSNR "
                                   f"{result['psnr']:.2f} dB (input {result['input_psnr']:.2f}), "
                                   f"SSIM {result['ssim']:.4f}{' *best' if improved else ''}")
                    draw(state, valid, batches_at.training_batch(batches, stage, state), runlog,
                         done)
                    recent_psnr = (recent_psnr + [result["psnr"]])[-3:]
                    reached = c.train.target_psnr > 0 and len(recent_psnr) == 3 and \
                        float(np.mean(recent_psnr)) >= c.train.target_psnr
                    save(done, stage, {"psnr": result["psnr"]},
                         **({"target_reached": True} if reached else {}))
                    if reached:
                        progress.write(target_line(c.train.target_psnr, done, ledger))
                        result["target_reached"] = True
                        break
                elif done % c.log.checkpoint_every == 0 or boundary:
                    flush(stage)
                    save(done, stage)
                stop = signals.agreed(done, c.log.every)
                if stop is not None:
                    flush(stage)
                    if max(ckpt.steps(), default=None) != done:
                        save(done, stage)
                    ckpt.wait()
                    raise signals.preempted(stop, done, workdir)
        ckpt.wait()
        if ledger.skipped:
            progress.write(f"warning: {ledger.skipped} of {exp.total_steps} steps were non-finite "
                           "and skipped")
    finally:
        inp.close()
        ckpt.close()
        runlog.close()
        progress.close()
    result = result or {"step": start, "psnr": best_psnr}
    return result | {"best_psnr": best_psnr, "best_step": ckpt.best_step(),
                     "workdir": str(workdir), "skipped": ledger.skipped}


class Batches:
    """What the compiled step takes as its batches at each step. On the device path the step
    cuts its own (``fused``: it takes the dataset) unless a method rewrites them in between;
    then, and for the image logs, a separate program cuts them, still on the device."""

    def __init__(self, exp, inp, seed_key, transform=None):
        self.exp, self.inp, self.seed_key, self.transform = exp, inp, seed_key, transform
        self.fused = inp.on_device and transform is None
        self._samplers = {}

    def sample(self, stage: int, state) -> tuple:
        if stage not in self._samplers:
            self._samplers[stage] = self.exp.backend.jit(
                functools.partial(build.device_batches, self.exp, stage))
        return self._samplers[stage](self.inp.dataset, self.seed_key, state.step)

    def __call__(self, step: int, state):
        if self.fused:
            return self.inp.dataset
        if self.inp.on_device:
            batches = self.sample(self.exp.stage_at(step), state)
        else:
            plan = self.exp.stages[self.exp.stage_at(step)].plan
            batches = tuple(parallel.put_batch(b, self.exp.mesh, n)
                            for b, n in zip(self.inp.host_batches(step), plan.batch_sizes))
        return self.transform(step, batches) if self.transform is not None else batches

    def training_batch(self, batches, stage: int, state) -> dict:
        """The first term's batch of the step just run, for the image logs."""
        return self.sample(stage, state)[0] if self.fused else batches[0]


def validate(exp, state, valid, evaluate, step: int, stage: int, ledger, runlog) -> dict:
    """Scores the fixed validation set and logs the row (valid.csv, TensorBoard)."""
    out = parallel.fetch(evaluate(state, valid.batch))
    row = {"step": step, "stage": stage, **valid.input_scores,
           **{k: float(np.mean(v[:valid.count])) for k, v in out.items()}, **ledger.row()}
    runlog.scalars("valid", row)
    return row


class Panels:
    """Image grids of the validation set and of a training batch (what the model makes of data
    it is fitted to, beside validation), one compiled program for both."""

    def __init__(self, exp, seed_key):
        self.seed_key = seed_key
        self.draw = exp.backend.jit(
            functools.partial(panels, task=exp.task, count=exp.config.log.image_count),
            out_shardings=parallel.replicated(exp.mesh))

    def __call__(self, state, valid, train_batch, runlog, step: int):
        runlog.images(step, parallel.fetch(self.draw(state, valid.batch, self.seed_key)))
        runlog.images(step, parallel.fetch(self.draw(state, train_batch, self.seed_key)),
                      stream="train")


def replan(exp, state):
    """The stages an adaptive schedule has decided so far, and the optimizer's schedule over the
    run's new length (its state carries over unchanged)."""
    exp.stages[:] = exp.adaptive.stages()
    return state.replace(tx=optim.make_optimizer(optim.run_train_section(exp.config),
                                                 exp.total_steps, exp.stage_ends))


def move_on(exp, state, stage: int, done: int, progress):
    """``replan`` after the adaptive schedule decided that ``stage`` ends at ``done``, said."""
    state = replan(exp, state)
    progress.total = exp.total_steps
    c = exp.config.fms
    progress.write(f"{progress.stage_label(stage)} moves on at step {done}: its training loss "
                   f"improved by less than {c.min_improvement:.1%} over {c.window} steps; the run "
                   f"now ends at step {exp.total_steps}")
    return state


def target_line(target: float, step: int, ledger) -> str:
    return (f"reached the target {target:.2f} dB (mean of the last 3 validations) at step "
            f"{step}: {ledger.work_units:.0f} work units, {ledger.seconds:.1f} s of training, "
            f"{ledger.flops / 1e9:.1f} GFLOP; stopping")


def optim_schedule(exp):
    """The learning rate at each step, for the logs (the optimizer holds its own copy)."""
    return optim.learning_rate(optim.run_train_section(exp.config), exp.total_steps,
                              exp.stage_ends)
