"""The training loop's parts: what one run holds while it trains (``Loop``), the compiled step
programs, the batches they take, the cost ledger, image panels and the signals that stop it.

``train.train_and_evaluate`` drives these; the hooks (``msjax/hooks.py``) act on a ``Loop``
after each compiled call.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import signal
import time
from pathlib import Path
from typing import Any

import jax

from msjax import build, logs, multiscale, parallel, steps
from msjax.backend import compile_cache, measure


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


def progress_plan(stages, reference_batch: int) -> tuple[list[int], list[float]]:
    """What the progress line's ETA needs: each stage's end step and work units per step."""
    return ([s.end_step for s in stages],
            [multiscale.work_units(s.plan, reference_batch) for s in stages])


@dataclasses.dataclass
class Ledger:
    """Costs so far: ``seconds`` is training wall time without compiling (which a longer run
    amortises), ``compile_seconds`` the stages' compile (and kernel measurement) time the run
    waited for, ``compile_hidden_seconds`` compile time spent ahead of use beside training
    (``runtime.compile_ahead``), which no one waited for and ``seconds`` does not hold."""

    work_units: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    compile_hidden_seconds: float = 0.0
    skipped: int = 0

    @classmethod
    def from_meta(cls, meta: dict) -> "Ledger":
        return cls(**{k: meta.get(k, 0) for k in cls.__dataclass_fields__})

    def add(self, plan, reference_batch: int, flops: float, seconds: float, steps: int = 1):
        """``steps`` steps of ``plan`` that took ``seconds``; ``flops``: one step's."""
        self.work_units += steps * multiscale.work_units(plan, reference_batch)
        self.flops += steps * flops
        self.seconds += seconds

    def row(self) -> dict:
        return dataclasses.asdict(self)


class StepPrograms:
    """Each stage's compiled steps, compiled on first use with the kernels a checkpoint
    recorded: a one-step program and, on the device input path, one that runs the stage's
    steps per call (``runtime.steps_per_call``; ``auto``: enough steps that a call lasts
    ``measure.MIN_CALL_SECONDS``, from the one-step program's measured time). A checkpoint
    records each stage's steps per call, and a resumed run keeps them unless the config names a
    number."""

    def __init__(self, exp, seed_key, ledger_of, progress, meta: dict, dataset=None):
        self.exp, self.seed_key, self.progress = exp, seed_key, progress
        self.ledger_of = ledger_of  # the loop's ledger now (a fallback replaces it)
        self.recorded, self.programs, self.dataset = dict(meta.get("kernels", {})), {}, dataset
        # The next stage's one-step program compiles in the background while this one trains
        # (runtime.compile_ahead), on the device input path, whose step takes the same dataset
        # in every stage; never where its kernels would have to be measured.
        setting = str(exp.runtime.compile_ahead).strip().lower()
        self.ahead_enabled = dataset is not None and (
            setting == "true" or (setting == "auto" and exp.backend.compiles_beside_training))
        self._ahead: dict = {}
        self._pool = None
        self.setting = str(exp.runtime.steps_per_call).strip().lower()
        self.per_call = ({int(s): int(k) for s, k in meta.get("steps_per_call", {}).items()}
                         if self.setting == "auto" else {})
        self.flops: dict[int, float] = {}  # one step's, per stage

    def describe(self) -> str:
        if self.dataset is None:
            return ("steps per call: 1 (the batches come from the host or are rewritten "
                    "between steps)")
        if self.setting != "auto":
            return f"steps per call: {self.setting}"
        return (f"steps per call: auto, each stage's from its step time (a call of at least "
                f"{measure.MIN_CALL_SECONDS * 1e3:.0f} ms, dividing log.every)")

    def steps_per_call(self, stage: int, state, batches) -> int:
        """The stage's steps per call, chosen the first time it is asked for."""
        if stage not in self.per_call:
            if self.dataset is None:
                k = 1
            elif self.setting != "auto":
                k = int(self.setting)
            else:
                one = self(stage, 1, state, batches)
                ledger, started = self.ledger_of(), time.perf_counter()
                compiled_before = ledger.compile_seconds
                k, seconds = self.exp.backend.steps_per_call(
                    one, lambda k: self(stage, k, state, batches),
                    (state, batches, self.seed_key), divides=self.exp.log.every)
                # The timing is set-up, like a compile (which the ledger has counted already),
                # and the progress line's rate leaves it out too.
                timing = (time.perf_counter() - started
                          - (ledger.compile_seconds - compiled_before))
                ledger.compile_seconds += timing
                self.progress.set_up(timing)
                self.progress.write(f"{self.progress.stage_label(stage)}: {k} step"
                                    f"{'s' if k > 1 else ''} per call (a step takes "
                                    f"{seconds * 1e3:.1f} ms)")
            self.per_call[stage] = k
            # Only now: the stage's own timing (above) must not run beside a compile.
            self._start_ahead(stage + 1, state, batches)
        return self.per_call[stage]

    def _compile(self, stage: int, steps: int, state, batches, *, measure: bool = True):
        return build.compile_train_step(self.exp, stage, state, batches, self.seed_key,
                                        recorded=self.recorded.get(str(stage), ""),
                                        dataset=self.dataset, steps_per_call=steps,
                                        measure=measure)

    def start_first(self, stage: int, state) -> None:
        """Starts compiling the stage the loop begins in, so the rest of the set-up (logs,
        hooks, the first images) happens while it compiles."""
        if self.dataset is not None:
            self._start_ahead(stage, state, self.dataset)

    def _start_ahead(self, stage: int, state, batches) -> None:
        if not self.ahead_enabled or stage >= len(self.exp.stages) or \
                (stage, 1) in self.programs or stage in self._ahead:
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=compile_cache.AHEAD_THREAD)
        # Shapes only: the state itself is donated to the steps that run meanwhile.
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                             sharding=a.sharding), state)
        self._ahead[stage] = (self._pool.submit(self._compile, stage, 1, shapes, batches,
                                                measure=False), jax.tree.structure(state))

    def _take_ahead(self, stage: int, state):
        """The stage's program compiled ahead (waiting for it if it is not done), or None; None
        too where the state changed its structure meanwhile (an adaptive decision gives it a
        new optimizer schedule, part of its static structure)."""
        future, structure = self._ahead.pop(stage, (None, None))
        if future is None:
            return None
        if structure != jax.tree.structure(state):
            future.cancel()
            return None
        started = time.perf_counter()
        program = future.result()
        waited = time.perf_counter() - started
        compile_cache.CACHE.add_waited(waited)
        if program is not None:
            self.ledger_of().compile_seconds += waited
            self.ledger_of().compile_hidden_seconds += max(0.0, program.seconds - waited)
            self.progress.compiled(stage, waited, detail=(
                f"compiled ahead in {program.seconds:.1f} s"
                + (f"; convolutions {program.kernels}" if program.kernels else "")))
        return program

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, stage: int, steps: int, state, batches):
        """The program that runs ``steps`` steps of ``stage`` per call (the one-step program
        first, whose FLOPs are the ledger's per step at any steps per call)."""
        if steps > 1 and (stage, 1) not in self.programs:
            self(stage, 1, state, batches)
        if (stage, steps) not in self.programs:
            program = self._take_ahead(stage, state) if steps == 1 else None
            if program is None:
                self.progress.compiling(stage, terms=self.exp.stages[stage].plan.num_terms)
                program = self._compile(stage, steps, state, batches)
                self.ledger_of().compile_seconds += program.seconds
                measured = ", ".join(f"{k} {v * 1e3:.0f} ms"
                                     for k, v in program.timings.items())
                self.progress.compiled(
                    stage, program.seconds,
                    detail=(f"{steps} steps per call; " if steps > 1 else "")
                    + (f"convolutions {program.kernels}" if program.kernels else "")
                    + (f" (measured per step: {measured})" if measured else ""))
            if program.kernels:
                self.recorded[str(stage)] = program.kernels
            if steps == 1:
                self.flops[stage] = program.flops
            self.programs[(stage, steps)] = program
        return self.programs[(stage, steps)]


def call_length(exp, step: int, per_call: int) -> int:
    """How many steps the call from ``step`` runs: ``per_call`` where the call starts on a
    multiple of it and no log, validation or checkpoint step and no stage end falls inside it,
    else 1. So the hooks see the steps they would see one step per call."""
    if per_call == 1 or step % per_call:
        return 1
    log = exp.log
    ends = [exp.stages[exp.stage_at(step)].end_step, exp.total_steps]
    ends += [(step // every + 1) * every
             for every in (log.every, log.eval_every, log.checkpoint_every)]
    return per_call if step + per_call <= min(ends) else 1


class Batches:
    """What the compiled step takes as its batches at each step. On the device path the step
    cuts its own (``fused``: it takes the dataset) unless a method rewrites them in between
    (``transform(step, batches) -> batches``); then, and for the image logs, a separate program
    cuts them, still on the device."""

    def __init__(self, exp, inp, seed_key, transform=None):
        self.exp, self.inp, self.seed_key, self.transform = exp, inp, seed_key, transform
        self.fused = inp.on_device and transform is None
        self._samplers = {}

    def sample(self, stage: int, state) -> tuple:
        if stage not in self._samplers:
            self._samplers[stage] = self.exp.backend.jit(
                functools.partial(build.device_batches, self.exp, stage))
        return self._samplers[stage](self.inp.dataset, self.seed_key, state.step)

    def __call__(self, step: int, stage: int, state):
        if self.fused:
            return self.inp.dataset
        if self.inp.on_device:
            batches = self.sample(stage, state)
        else:
            plan = self.exp.stages[stage].plan
            batches = tuple(parallel.put_batch(b, self.exp.mesh, n)
                            for b, n in zip(self.inp.host_batches(step), plan.batch_sizes))
        return self.transform(step, batches) if self.transform is not None else batches

    def training_batch(self, batches, stage: int, state) -> dict:
        """The first term's batch of the step just run, for the image logs."""
        return self.sample(stage, state)[0] if self.fused else batches[0]


def panels(state, batch, key, *, task, count: int):
    """Validation and training images for the logs: input, output (evaluation mode), target."""
    head = jax.tree.map(lambda a: a[:count], batch)
    if "input" in head:
        y, t = head["input"], head.get("t")
    else:
        y, t = task.corrupt(head["target"], key, 0)
    return {"input": y, "output": steps.predict(state, y, t, task=task), "target": head["target"]}


class Panels:
    """Image grids of the validation set and of a training batch (what the model makes of data
    it is fitted to, beside validation), one compiled program for both."""

    def __init__(self, exp, seed_key):
        self.seed_key = seed_key
        self.draw = exp.backend.jit(
            functools.partial(panels, task=exp.task, count=exp.log.image_count),
            out_shardings=parallel.replicated(exp.mesh))

    def __call__(self, state, valid_batch, train_batch, runlog, step: int):
        runlog.images(step, parallel.fetch(self.draw(state, valid_batch, self.seed_key)))
        runlog.images(step, parallel.fetch(self.draw(state, train_batch, self.seed_key)),
                      stream="train")


class FallBack(Exception):
    """Raised by a hook that moved the loop back to an older checkpoint (``Loop.rewind``)."""


@dataclasses.dataclass
class Loop:
    """What a run holds while it trains; the hooks read and change it.

    ``step`` is the next step to run (``previous`` the step the last call started from, so a
    hook sees the interval ``previous < done <= step`` a call ran); ``exp`` may be replaced by
    an adaptive decision (``replan``); ``stop`` ends the loop after the hooks of this call."""

    exp: build.Experiment
    workdir: Path
    state: Any
    step: int
    ckpt: Any
    progress: logs.Progress
    runlog: logs.RunLog
    ledger: Ledger
    inp: Any
    hooks: list
    meta: dict                                  # what the run was restored with
    restored_at: int | None = None              # the step a checkpoint gave, while it may fall back
    previous: int = 0
    stage: int = 0
    boundary: bool = False                      # the call ended its stage (or the run)
    batches: Any = None                         # the batches the last call ran on
    pending: list = dataclasses.field(default_factory=list)  # (step, steps, metrics), on device
    validated: dict | None = None               # this call's validation row
    saved_at: int | None = None
    result: dict = dataclasses.field(default_factory=dict)
    stop: str = ""
    programs: Any = None

    def crossed(self, every: int) -> bool:
        """Whether the last call reached a multiple of ``every``."""
        return self.step // every > self.previous // every

    def flush(self) -> list:
        """Fetches the pending per-step metrics (the non-finite check and the train log run on
        them, in every hook's ``on_metrics``); the rows fetched, [] when none were pending."""
        self.ckpt.raise_if_save_failed()
        if not self.pending:
            return []
        calls, self.pending = self.pending, []
        fetched = parallel.fetch([metrics for _, _, metrics in calls])
        rows = [(first + i, {k: float(v[i] if n > 1 else v) for k, v in m.items()})
                for (first, n, _), m in zip(calls, fetched) for i in range(n)]
        for hook in self.hooks:
            hook.on_metrics(self, rows)
        return rows

    def save(self, metrics: dict | None = None) -> None:
        """A checkpoint of the state after ``step``, with every hook's state in its meta."""
        for hook in self.hooks:
            hook.before_save(self)
        meta = {"step": self.step, "stage": self.stage,
                "kernels": self.programs.recorded if self.programs else {},
                "steps_per_call": ({str(s): k for s, k in self.programs.per_call.items()}
                                   if self.programs else {}),
                "input": self.inp.path, "total_steps": self.exp.total_steps,
                **self.ledger.row()}
        for hook in self.hooks:
            meta.update(hook.state())
        # Every checkpoint carries its verdict, so Orbax keeps the newest good one.
        metrics = {**(metrics or {}), "good": float(meta.get("good", True))}
        self.ckpt.save(self.step, self.state, meta, metrics)
        self.saved_at = self.step

    def replan(self, stages) -> None:
        """New stages (an adaptive decision): the experiment, the optimizer's schedule (its state
        carries over unchanged), the input and the progress line follow."""
        self.exp = self.exp.replan(stages)
        self.state = self.state.replace(tx=self.exp.make_optimizer())
        self.inp.replan(self.exp.stages)
        self.progress.total = self.exp.total_steps
        self.progress.plan(*progress_plan(self.exp.stages, self.exp.batch_size))
        self.boundary = True

    def rewind(self, restored) -> None:
        """Back to an older checkpoint (``checkpoints.Restored``): state, ledger, hooks' state
        and logs as they were at its step; no second fall back."""
        self.state, self.step = restored.state, int(restored.meta["step"])
        self.previous, self.pending, self.restored_at = self.step, [], None
        self.meta = dict(restored.meta)
        self.ledger = Ledger.from_meta(self.meta)
        for hook in self.hooks:
            hook.load(self.meta)
        self.runlog = self.runlog.reopened(self.step)
        self.progress.start = self.step
