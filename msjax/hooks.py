"""What the loop does periodically or on a condition, one hook each.

A hook acts on the ``loop.Loop`` after every compiled call (``after_steps``; ``loop.step`` is the
step reached, and ``loop.crossed(every)`` says whether the call reached a multiple of ``every``,
so a call may run several steps). Hooks run in the order the loop was given them; per-step
metrics reach every hook's ``on_metrics`` whenever one fetches them (``loop.flush()``), so the
non-finite check is free: it runs on what the train log fetches anyway. A hook that keeps state
across steps returns it from ``state()``: it is saved with every checkpoint and given back to
``load(meta)`` on resume. ``initialize(loop)`` shapes a fresh run's state (a warm start, a
method's start), ``start(loop)`` runs once before the first step.

Training methods (``msjax/methods``) add their own hooks to the same list.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from msjax import checkpoints, multiscale, parallel, rundir, warmstart
from msjax.errors import NonFiniteError
from msjax.loop import Preempted


class Hook:
    """The interface; every method is optional."""

    def initialize(self, loop) -> None:
        """A fresh run (not a resumed one): may replace ``loop.state``."""

    def load(self, meta: dict) -> None:
        """The checkpoint's meta, as ``state()`` saved it (older checkpoints may lack keys)."""

    def start(self, loop) -> None:
        """Once, after ``initialize`` or ``load``, before the first step."""

    def on_metrics(self, loop, rows: list) -> None:
        """Per-step metrics ``[(step, {name: float})]`` just fetched from the device."""

    def after_steps(self, loop) -> None:
        """After each compiled call; ``loop.step`` steps are done."""

    def before_save(self, loop) -> None:
        """Right before a checkpoint of ``loop.state`` is saved (its ``state()`` goes with it)."""

    def state(self) -> dict:
        return {}


class WarmStart(Hook):
    """``train.init_from``: a fresh run starts from another run's matching weights."""

    def __init__(self, spec):
        self.spec = spec

    def initialize(self, loop) -> None:
        loop.state = warmstart.warm_start(loop.state, self.spec, write=loop.progress.write)


class NonFinite(Hook):
    """``runtime.nonfinite``: ``stop`` raises NonFiniteError naming the step and the last good
    checkpoint (``Probe``); ``skip`` counts them (the step left the state as it was), warns,
    and stops when more than ``max_skipped`` of the last ``window`` steps were skipped. A stop
    marks no checkpoint: it is recorded in the run directory (``rundir.record_stop``), after
    which the run resumes with the fields ``rundir.AFTER_STOP_FIELDS`` changed."""

    def __init__(self, policy: str, max_skipped: float, probe: "Probe", window: int = 50):
        self.policy, self.max_skipped, self.window = policy, max_skipped, window
        self.probe = probe
        self.recent: list[bool] = []

    def load(self, meta: dict) -> None:
        self.recent = [bool(x) for x in meta.get("recent_nonfinite", [])]

    def state(self) -> dict:
        return {"recent_nonfinite": list(self.recent)}

    def on_metrics(self, loop, rows) -> None:
        self.recent = (self.recent + [not m["finite"] for _, m in rows])[-self.window:]
        bad = [(s, m) for s, m in rows if not m["finite"]]
        if not bad:
            return
        first, m = bad[0]
        if self.policy == "stop":
            self._stop(loop, first, f"non-finite loss or gradient at step {first} (loss "
                       f"{m['loss']}, grad norm {m['grad_norm']})",
                       "set --config.runtime.nonfinite=skip to skip such steps")
        loop.ledger.skipped += len(bad)
        loop.progress.write(f"warning: {len(bad)} non-finite step(s) skipped up to step "
                            f"{rows[-1][0] + 1} ({loop.ledger.skipped} in all)")
        if len(self.recent) >= self.window and sum(self.recent) / self.window > self.max_skipped:
            self._stop(loop, first, f"{sum(self.recent)} of the last {self.window} steps were "
                       f"non-finite and skipped (runtime.max_skipped={self.max_skipped})",
                       "set train.grad_clip_norm")

    def _stop(self, loop, step: int, what: str, other: str) -> None:
        good = self.probe.last_good(loop)
        if good is None:
            kept = "no good checkpoint was saved before it, so a rerun starts afresh. "
        else:
            kept = (f"the last good checkpoint (step {good}) is kept in {loop.workdir}, and a "
                    "rerun in it resumes there. ")
        fields = ", ".join(rundir.AFTER_STOP_FIELDS)
        message = (f"{what}; {kept}Lower train.lr, or {other} ({fields} may change when the run "
                   "resumes)")
        if jax.process_index() == 0:
            rundir.record_stop(loop.workdir, step, message)
        raise NonFiniteError(message)


class Probe(Hook):
    """Judges each checkpoint before it is saved: good when its parameters are finite and its
    loss on the fixed validation batch (the probe) is finite and at most ``factor`` times the
    last good checkpoint's (or the fresh run's). The verdict goes into the checkpoint's meta
    and Orbax metrics (``checkpoints.GOOD_KEY``); messages and resume use the last good one."""

    FACTOR = 10.0

    def __init__(self, valid, evaluate, factor: float = FACTOR):
        self.valid, self.evaluate, self.factor = valid, evaluate, factor
        self.reference: float | None = None     # the last good probe loss
        self.good_step: int | None = None       # the last good checkpoint's step
        self.verdict: dict = {}

    def loss(self, loop) -> float:
        out = parallel.fetch(self.evaluate(loop.state, self.valid.batch))
        return float(np.mean(out["loss"][:self.valid.count]))

    def load(self, meta: dict) -> None:
        self.reference = meta.get("probe_reference")
        self.good_step = meta.get("last_good_step")

    def start(self, loop) -> None:
        # After every hook's initialize: a warm start's weights are what the run starts from.
        if self.reference is None:
            self.reference = self.loss(loop)

    def before_save(self, loop) -> None:
        # A validation of this very state has measured the probe already.
        loss = loop.validated["loss"] if loop.validated else self.loss(loop)
        finite = checkpoints.params_finite(loop.state)
        limit = None if self.reference is None else self.factor * self.reference
        good = finite and math.isfinite(loss) and (limit is None or loss <= limit)
        why = (f"probe loss {loss:.4g}" + (f", limit {limit:.4g}" if limit is not None else "")
               + ("" if finite else ", parameters not finite"))
        if good:
            self.reference, self.good_step = loss, loop.step
        else:
            last = ("no checkpoint is good yet" if self.good_step is None else
                    f"the last good one stays step {self.good_step}")
            loop.progress.write(f"warning: checkpoint {loop.step} is not a good state ({why}: "
                                f"more than {self.factor:g}x the last good checkpoint's, or not "
                                f"finite); {last}")
        self.verdict = {checkpoints.GOOD_KEY: good, "probe": why}

    def last_good(self, loop) -> int | None:
        """The newest kept checkpoint that passed the test (the newest saved may be pending)."""
        kept = set(loop.ckpt.steps())
        return self.good_step if self.good_step in kept else None

    def state(self) -> dict:
        return {**self.verdict, "probe_reference": self.reference,
                "last_good_step": self.good_step}


class TrainLog(Hook):
    """Every ``every`` steps and at stage ends: train.csv / TensorBoard rows and the progress
    line, from the last step fetched."""

    def __init__(self, every: int, validation: "Validation"):
        self.every, self.validation = every, validation
        self._schedule = self._lr = None

    def learning_rate(self, schedule, step: int) -> float:
        """``schedule`` at ``step`` as one compiled program (eagerly, each of its ops would be
        a program of its own); an adaptive decision brings a new schedule."""
        if schedule is not self._schedule:
            self._schedule, self._lr = schedule, jax.jit(schedule)
        return float(self._lr(step))

    def after_steps(self, loop) -> None:
        if loop.crossed(self.every) or loop.boundary:
            loop.flush()

    def on_metrics(self, loop, rows) -> None:
        last, m = rows[-1]
        loop.runlog.scalars("train", {
            "step": last + 1, "stage": loop.stage,
            "lr": self.learning_rate(loop.exp.learning_rate, last),
            **{k: m[k] for k in ("loss", "finest_loss", "grad_norm")}, **loop.ledger.row()})
        loop.progress.update(last + 1, stage=loop.stage,
                             terms=loop.exp.stages[loop.stage].plan.num_terms, loss=m["loss"],
                             best_psnr=self.validation.best)


class AdaptiveMoveOn(Hook):
    """``fms.schedule=adaptive``: at each log step the finest-level training losses since the
    last one go to ``multiscale.AdaptiveSchedule``; when it ends a coarse stage the loop replans.
    Its decisions are saved with each checkpoint, and a resumed run replays them."""

    def __init__(self, exp):
        settings = exp.adaptive
        self.every, self.settings = exp.log.every, settings
        self.planner = multiscale.AdaptiveSchedule(
            exp.fixed_stages, exp.batch_size, window=settings.window,
            min_improvement=settings.min_improvement, min_share=settings.min_share,
            budget_units=settings.budget_units)
        self.sum, self.count, self.loaded = 0.0, 0, False

    def load(self, meta: dict) -> None:
        if "adaptive" in meta:
            self.planner.load(meta["adaptive"])
            self.loaded = True

    def start(self, loop) -> None:
        if self.loaded:  # the decisions so far, without their move-on messages
            loop.replan(self.planner.stages())

    def state(self) -> dict:
        return {"adaptive": self.planner.state()}

    def on_metrics(self, loop, rows) -> None:
        finite = [m["finest_loss"] for _, m in rows if m["finite"]]
        self.sum, self.count = self.sum + sum(finite), self.count + len(finite)

    def after_steps(self, loop) -> None:
        if not (loop.crossed(self.every) or loop.boundary):
            return
        loop.flush()
        interval, self.sum, self.count = (self.sum, self.count), 0.0, 0
        if self.planner.observe(loop.stage, loop.step - 1, *interval):
            loop.replan(self.planner.stages())
            loop.progress.write(
                f"{loop.progress.stage_label(loop.stage)} moves on at step {loop.step}: its "
                f"training loss improved by less than {self.settings.min_improvement:.1%} over "
                f"{self.settings.window} steps; the run now ends at step {loop.exp.total_steps}")


class Validation(Hook):
    """Every ``eval_every`` steps and at the end: the fixed validation set scored (valid.csv,
    TensorBoard, the progress line), image grids, and the best PSNR so far (``best``), which
    makes the checkpoint saved after it a best-checkpoint candidate."""

    def __init__(self, every: int, valid, evaluate, draw, batches):
        self.every, self.valid, self.evaluate, self.draw = every, valid, evaluate, draw
        self.batches = batches
        self.best = -math.inf

    def load(self, meta: dict) -> None:
        self.best = meta.get("best_psnr", -math.inf)

    def state(self) -> dict:
        return {"best_psnr": self.best}

    def after_steps(self, loop) -> None:
        if not (loop.crossed(self.every) or loop.step == loop.exp.total_steps):
            return
        loop.flush()
        out = parallel.fetch(self.evaluate(loop.state, self.valid.batch))
        row = {"step": loop.step, "stage": loop.stage, **self.valid.input_scores,
               **{k: float(np.mean(v[:self.valid.count])) for k, v in out.items()},
               **loop.ledger.row()}
        loop.runlog.scalars("valid", row)
        improved, self.best = row["psnr"] > self.best, max(self.best, row["psnr"])
        loop.progress.write(f"step {loop.step} {loop.progress.stage_label(loop.stage)}: valid "
                            f"PSNR {row['psnr']:.2f} dB (input {row['input_psnr']:.2f}), SSIM "
                            f"{row['ssim']:.4f}{' *best' if improved else ''}")
        train_batch = self.batches.training_batch(loop.batches, loop.stage, loop.state)
        self.draw(loop.state, self.valid.batch, train_batch, loop.runlog, loop.step)
        loop.validated = loop.result = row


class Divergence(Hook):
    """Warns that the run diverges: its training loss (the mean of a log interval) grows to
    ``loss_factor`` times its best in the stage (a stage with finer terms starts its own best),
    or its loss on the fixed validation batch to ``loss_factor`` times its best (the untrained
    state's, ``Probe``, included: a rate that blows up in the first interval shows there), or its
    validation PSNR falls below the corrupted input's ``count`` times in a row after it
    once exceeded it (SR and UNet runs start below the input, so nothing counts before), or the
    run ends more than ``end_margin_db`` below the input (a short healthy run may end a little
    below it; one that diverged ends far below). Each warning is given once; ``warnings`` go
    into the run's result and its final summary."""

    def __init__(self, probe: Probe, loss_factor: float = 10.0, count: int = 3,
                 end_margin_db: float = 5.0):
        self.loss_factor, self.count, self.end_margin_db = loss_factor, count, end_margin_db
        self.probe = probe
        self.best_loss: float | None = None
        self.best_valid_loss: float | None = None
        self.stage = 0
        self.exceeded, self.below = False, 0
        self.warnings: list[str] = []

    def load(self, meta: dict) -> None:
        saved = meta.get("divergence", {})
        self.best_loss, self.stage = saved.get("best_loss"), saved.get("stage", 0)
        self.exceeded, self.below = saved.get("exceeded", False), saved.get("below", 0)
        self.best_valid_loss = saved.get("best_valid_loss")
        self.warnings = list(saved.get("warnings", []))

    def start(self, loop) -> None:
        if self.best_valid_loss is None:  # after the probe's start: the untrained state's loss
            self.best_valid_loss = self.probe.reference

    def state(self) -> dict:
        return {"divergence": {"best_loss": self.best_loss, "stage": self.stage,
                               "best_valid_loss": self.best_valid_loss,
                               "exceeded": self.exceeded, "below": self.below,
                               "warnings": list(self.warnings)}}

    def _warn(self, loop, kind: str, message: str) -> None:
        if any(w.startswith(kind) for w in self.warnings):
            return
        self.warnings.append(message)
        loop.progress.write(f"warning: {message}")

    def on_metrics(self, loop, rows) -> None:
        losses = [m["loss"] for _, m in rows if m["finite"] and math.isfinite(m["loss"])]
        if not losses:
            return
        if loop.stage != self.stage:
            self.stage, self.best_loss = loop.stage, None
        loss = float(np.mean(losses))
        if self.best_loss is not None and loss > self.loss_factor * self.best_loss:
            self._warn(loop, "the training loss", (
                f"the training loss grew to {loss:.4g} by step {rows[-1][0] + 1}, more than "
                f"{self.loss_factor:g}x its best {self.best_loss:.4g}: the run diverges; lower "
                "train.lr or set train.grad_clip_norm"))
        self.best_loss = loss if self.best_loss is None else min(self.best_loss, loss)

    def after_steps(self, loop) -> None:
        row = loop.validated
        if row is None:
            return
        best = self.best_valid_loss
        if best is not None and not row["loss"] <= self.loss_factor * best:
            self._warn(loop, "the validation loss", (
                f"the validation loss grew to {row['loss']:.4g} at step {loop.step}, more than "
                f"{self.loss_factor:g}x its best {best:.4g}: the run diverges; lower train.lr or "
                "set train.grad_clip_norm"))
        if math.isfinite(row["loss"]):
            self.best_valid_loss = row["loss"] if best is None else min(best, row["loss"])
        below = not row["psnr"] >= row["input_psnr"]  # nan counts as below
        self.exceeded = self.exceeded or not below
        self.below = self.below + 1 if below and self.exceeded else 0
        margin = self.end_margin_db
        if not row["psnr"] >= row["input_psnr"] - margin and loop.step >= loop.exp.total_steps:
            self._warn(loop, "the run ends", (
                f"the run ends more than {margin:g} dB below the corrupted input: valid PSNR "
                f"{row['psnr']:.2f} dB against the input's {row['input_psnr']:.2f}; lower "
                "train.lr or set train.grad_clip_norm"))
        if self.below >= self.count:
            self._warn(loop, "the validation PSNR", (
                f"the validation PSNR fell below the corrupted input's ({row['input_psnr']:.2f} "
                f"dB) at {self.count} validations in a row, to {row['psnr']:.2f} dB at step "
                f"{loop.step}: the run diverges; lower train.lr or set train.grad_clip_norm"))


class TargetStop(Hook):
    """``train.target_psnr``: stops once the mean of the last ``count`` validations reaches
    the target, and says what reaching it cost."""

    def __init__(self, target: float, count: int = 3):
        self.target, self.count = target, count
        self.recent: list[float] = []
        self.reached = False

    def load(self, meta: dict) -> None:
        self.recent = list(meta.get("recent_psnr", []))

    def state(self) -> dict:
        return {"recent_psnr": list(self.recent)} | (
            {"target_reached": True} if self.reached else {})

    def after_steps(self, loop) -> None:
        if loop.validated is None:
            return
        self.recent = (self.recent + [loop.validated["psnr"]])[-self.count:]
        if self.target > 0 and len(self.recent) == self.count and \
                float(np.mean(self.recent)) >= self.target:
            self.reached, loop.stop = True, "target"
            loop.result["target_reached"] = True
            ledger = loop.ledger
            loop.progress.write(
                f"reached the target {self.target:.2f} dB (mean of the last {self.count} "
                f"validations) at step {loop.step}: {ledger.work_units:.0f} work units, "
                f"{ledger.seconds:.1f} s of training, {ledger.flops / 1e9:.1f} GFLOP; stopping")


class Checkpointing(Hook):
    """A checkpoint after every validation (a best candidate, with its PSNR), every
    ``every`` steps, at stage ends and at the end."""

    def __init__(self, every: int):
        self.every = every

    def after_steps(self, loop) -> None:
        if loop.validated is not None:
            loop.save({"psnr": loop.validated["psnr"]})
        elif loop.crossed(self.every) or loop.boundary:
            loop.flush()
            loop.save()


class Preemption(Hook):
    """SIGTERM / SIGINT: save and stop with ``loop.Preempted``. Checkpoints are written by all
    processes together, so on several hosts all stop at the same step, whichever got the
    signal: they agree at every log step (``every``), so a signal waits up to ``every`` steps
    there."""

    def __init__(self, signals, every: int):
        self.signals, self.every = signals, every

    def agreed(self, loop):
        if jax.process_count() == 1:
            return self.signals.received
        return parallel.agreed_signal(self.signals.received) if loop.crossed(self.every) \
            else None

    def after_steps(self, loop) -> None:
        signum = self.agreed(loop)
        if signum is None:
            return
        loop.flush()
        if loop.saved_at != loop.step:
            loop.save()
        loop.ckpt.wait()
        by = "" if self.signals.received else " (received by another process)"
        raise Preempted(signum, f"stopped by signal {signum}{by} at step {loop.step}; "
                                f"checkpoint saved in {loop.workdir}. Run the same command "
                                "again to resume.")
