"""Multiblock phased training (the Multiblock report's recipe): a chain N_m o ... o N_1 of
same-resolution restoration blocks, grown one block at a time.

Phase i trains a chain of i blocks whose first i-1 are the trained N_1..N_{i-1}, frozen
(``MultiblockChain.frozen``: their outputs are stop_gradient'ed and their parameters get zero
gradients). N_i's input is therefore regenerated from the trained blocks on the fly, in float and
without the reference's 8-bit files and quadrant seams. Optionally a clamped N_i+ (output clipped
to [0, 1]) is fine-tuned after N_i's warm phase, N_i starts from N_{i-1}'s weights (inheritance),
and the whole chain is fine-tuned jointly at the end.

Every phase is an ordinary run of the loop in ``<workdir>/<phase>``: ``build`` makes one
Experiment per phase from ``Phase.overrides``, and a ``StartFrom`` hook starts it from the previous
phase's best checkpoint; ``phase.json`` marks it finished. Running the same
command again skips finished phases and resumes an interrupted one from its own checkpoint.
Each phase runs its own ``multiblock.*_steps`` (``train.steps`` is not read), or, with
``multiblock.total_steps`` (train.py sets it from an explicit ``--config.train.steps``), those
scaled to that total.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from msjax import build, logs, optim, rundir, runs, storage, train
from msjax.errors import ConfigError
from msjax.hooks import Hook
from msjax.registry import METHODS

SUMMARY_FIELDS = ("phase", "blocks", "trained", "steps", "lr", "best_psnr", "best_step", "psnr",
                  "ssim", "input_psnr")
# With eval.whole_valid: the phase's best checkpoint on the whole validation images.
WHOLE_FIELDS = ("whole_psnr", "whole_ssim", "whole_input_psnr", "whole_images")


@dataclasses.dataclass(frozen=True)
class MultiblockSettings:
    """The ``multiblock`` section (msjax/defaults.py has each field's meaning)."""

    blocks: int
    block_steps: int
    block_optimizer: str
    block_lr: float
    plus_steps: int
    plus_lr: float
    joint_steps: int
    joint_lr: float
    plus_low_steps: int
    plus_low_lr: float
    joint_low_steps: int
    joint_low_lr: float
    constant_lr: bool
    inherit: bool
    total_steps: int


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str              # the sub-workdir
    blocks: int            # chain length
    clamp: bool            # clamp of the frozen blocks (N_j+ when clamped variants are trained)
    clamp_last: bool       # clamp of the block being trained
    steps: int
    lr: float
    lr_end: float
    optimizer: str         # each phase starts a fresh one
    init_from: str = ""    # the phase whose best weights start this one ('' : fresh)
    inherit: bool = False  # the new block starts as a copy of the previous block

    @property
    def frozen(self) -> int:
        """Blocks that do not train: all but the last, except in the joint phase."""
        return 0 if self.name.startswith("joint") else self.blocks - 1

    @property
    def overrides(self) -> dict:
        """The config fields this phase's plain run sets (``build.with_overrides``). An earlier
        phase's weights start it (``StartFrom``), not ``train.init_from``."""
        return {"method": "", "model_kwargs.n_blocks": self.blocks,
                "model_kwargs.frozen": self.frozen, "model_kwargs.clamp": self.clamp,
                "model_kwargs.clamp_last": self.clamp_last, "train.steps": self.steps,
                "train.optimizer": self.optimizer, "train.lr": self.lr,
                "train.lr_end": self.lr_end} | ({"train.init_from": ""} if self.init_from else {})


def plan_phases(mb: MultiblockSettings, opt) -> list[Phase]:
    """The phases in order. Phase i (N_i's warm phase, unclamped) runs ``block_optimizer`` at
    ``block_lr`` (the seed: Adadelta at 1), the later phases ``opt.optimizer`` at their rates.
    The reference holds each phase's rate constant (a new Adam at each rate change):
    ``constant_lr``; otherwise each phase's cosine ends at ``opt.lr_end`` (or its own rate)."""
    lr, optimizer = opt.lr, opt.optimizer

    def phase(name, blocks, *, clamp, clamp_last, steps, rate, **kw):
        end = rate if mb.constant_lr else min(opt.lr_end, rate)
        kw.setdefault("optimizer", optimizer)
        return Phase(name, blocks, clamp=clamp, clamp_last=clamp_last, steps=steps, lr=rate,
                     lr_end=end, **kw)

    plus = mb.plus_steps > 0
    phases, previous = [], ""
    for i in range(1, mb.blocks + 1):
        phases.append(phase(f"phase_{i}", i, clamp=plus, clamp_last=False,
                            steps=mb.block_steps, rate=mb.block_lr or lr, init_from=previous,
                            inherit=mb.inherit and i > 1,
                            optimizer=mb.block_optimizer or optimizer))
        if plus:
            phases.append(phase(f"phase_{i}_plus", i, clamp=True, clamp_last=True,
                                steps=mb.plus_steps, rate=mb.plus_lr or lr,
                                init_from=phases[-1].name))
            if mb.plus_low_steps > 0:  # the reference's second, 10x lower rate
                phases.append(phase(f"phase_{i}_plus_low", i, clamp=True, clamp_last=True,
                                    steps=mb.plus_low_steps, rate=mb.plus_low_lr or lr,
                                    init_from=phases[-1].name))
        previous = phases[-1].name
    if mb.joint_steps > 0:
        phases.append(phase("joint", mb.blocks, clamp=plus, clamp_last=plus,
                            steps=mb.joint_steps, rate=mb.joint_lr or lr, init_from=previous))
        if mb.joint_low_steps > 0:
            phases.append(phase("joint_low", mb.blocks, clamp=plus, clamp_last=plus,
                                steps=mb.joint_low_steps, rate=mb.joint_low_lr or lr,
                                init_from="joint"))
    if mb.total_steps > 0:
        steps = scaled_steps([p.steps for p in phases], mb.total_steps)
        phases = [dataclasses.replace(p, steps=n) for p, n in zip(phases, steps)]
    return phases


def scaled_steps(steps, total: int) -> list[int]:
    """``steps`` scaled to sum to ``total``, each at least 1 (so fewer than one step per phase
    gives one each): the exact shares rounded down, the rest handed out by largest remainder."""
    if total <= len(steps):
        return [1] * len(steps)
    exact = [total * n / sum(steps) for n in steps]
    out = [max(1, int(e)) for e in exact]
    while sum(out) < total:
        i = max(range(len(out)), key=lambda k: exact[k] - out[k])
        out[i] += 1
    while sum(out) > total:  # the minimum of one pushed the sum over: take from the largest
        i = max((k for k in range(len(out)) if out[k] > 1), key=lambda k: out[k] - exact[k])
        out[i] -= 1
    return out


def budget_line(mb: MultiblockSettings, phases) -> str:
    """The start line of a run whose phases were scaled to ``multiblock.total_steps``."""
    total = sum(p.steps for p in phases)
    floor = (f" (one per phase: {mb.total_steps} cannot run every phase)"
             if total > mb.total_steps else "")
    count = f"{len(phases)} phase" + ("s" if len(phases) > 1 else "")
    return (f"multiblock: {total} step{'s' if total > 1 else ''}{floor} over {count} in the "
            "proportions of their multiblock.*_steps: "
            + ", ".join(f"{p.name} {p.steps}" for p in phases))


class StartFrom(Hook):
    """A phase's start: the blocks trained so far from ``phase.init_from``'s best checkpoint
    (and, with inheritance, the newest of them copied into the new block); the optimizer starts
    fresh."""

    def __init__(self, workdir: Path, phase: Phase):
        self.source, self.phase = workdir / phase.init_from, phase

    def initialize(self, loop) -> None:
        trained, _, _ = runs.load_state(self.source, "best")
        params = dict(loop.state.params)
        params.update(trained.params)
        if self.phase.inherit:  # a copy: two leaves sharing one buffer cannot both be donated
            n = self.phase.blocks
            params[f"block_{n - 1}"] = jax.tree.map(jnp.copy, trained.params[f"block_{n - 2}"])
        # Onto the new state's devices and layout (the restore used a one-device mesh).
        placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                              params, dict(loop.state.params))
        loop.state = loop.state.replace(params=placed)


def check(mb: MultiblockSettings, exp) -> None:
    """Refusals before any data is read."""
    problems = [
        (exp.model_name == "multiblock", f"method=multiblock trains the multiblock chain; "
         f"model is {exp.model_name!r}"),
        (mb.blocks >= 1, f"multiblock.blocks={mb.blocks} must be >= 1"),
        (mb.block_steps > 0, f"multiblock.block_steps={mb.block_steps} must be positive"),
        (mb.total_steps >= 0, f"multiblock.total_steps={mb.total_steps} must be >= 0 (0: each "
         "phase its own multiblock.*_steps)"),
        (not exp.eval.whole_valid or (exp.input.source in ("folder", "paired_folders")
                                      and exp.input.valid_dir),
         "eval.whole_valid scores the image folder data.valid_dir (with data.valid_lr_dir for "
         f"pairs); data.source is {exp.input.source!r}: set one or "
         "--config.eval.whole_valid=False"),
        (not mb.inherit or mb.blocks > 1, "multiblock.inherit needs at least 2 blocks"),
        (mb.block_optimizer in ("", *optim.OPTIMIZERS),
         f"multiblock.block_optimizer={mb.block_optimizer!r} is unknown; choose one of "
         f"{', '.join(optim.OPTIMIZERS)} (or '' for train.optimizer)"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


def _summary_row(phase: Phase, result: dict, whole: bool = False) -> dict:
    trained = "all" if phase.name.startswith("joint") else f"block_{phase.blocks}" + (
        "+" if phase.clamp_last else "")
    row = {"phase": phase.name, "blocks": phase.blocks, "trained": trained, "steps": phase.steps,
           "lr": phase.lr}
    fields = SUMMARY_FIELDS + (WHOLE_FIELDS if whole else ())
    row.update({k: result.get(k, float("nan")) for k in fields if k not in row})
    return row


def score_whole_images(phase_workdir: Path, phase_exp) -> dict:
    """The phase's best checkpoint on every whole validation image (``evaluate.run``'s folder
    scoring, outputs in ``<phase>/eval/``): mean PSNR / SSIM of the outputs and of the inputs.
    The images keep their own sizes (``eval.tile`` tiles large ones), where training validates
    on fixed crops of one size."""
    from msjax import evaluate  # the method's other users never load the evaluator

    spec = phase_exp.input
    _, summary, _ = evaluate.run(str(phase_workdir), which="best",
                                 input_dir=spec.valid_lr_dir, target_dir=spec.valid_dir,
                                 overwrite=True)
    nan = float("nan")  # no image scored (every one skipped as unreadable): said, not fatal
    return {"whole_psnr": summary.get("psnr", nan), "whole_ssim": summary.get("ssim", nan),
            "whole_input_psnr": summary.get("input_psnr", nan),
            "whole_images": summary["images"]}


@METHODS.register("multiblock", settings=MultiblockSettings, check=check, phases=plan_phases)
def run(exp, workdir) -> dict:
    """Runs (or resumes) every phase into ``<workdir>/<phase>``; returns the last phase's result
    with ``phases`` (the summary rows, also in ``<workdir>/phases.csv``)."""
    workdir = rundir.open_for(workdir)
    build.resume(workdir, exp)  # a workdir holds one multiblock run, never two mixed
    settings = exp.method_settings
    if settings.total_steps > 0 and jax.process_index() == 0:
        print(budget_line(settings, [phase for phase, _ in exp.phases]), flush=True)
    rows, result = [], {}
    for phase, phase_exp in exp.phases:
        marker = workdir / phase.name / "phase.json"
        finished = marker.exists()
        if finished:
            # A finished phase counts only for the same run: another config (another step
            # budget, say) is refused here rather than built on phases it did not train.
            build.resume(workdir / phase.name, phase_exp)
            result = json.loads(marker.read_text())
        else:
            start = [StartFrom(workdir, phase)] if phase.init_from else []
            result = train.train_and_evaluate(phase_exp, workdir / phase.name, hooks=start)
            result = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
        if jax.process_index() == 0:
            # Before the marker, so an interrupted phase scores again; a phase finished before
            # eval.whole_valid was set is scored when a run resumes with it.
            scored = exp.eval.whole_valid and "whole_psnr" not in result
            if scored:
                result.update(score_whole_images(workdir / phase.name, phase_exp))
                print(f"{phase.name}: whole validation images: PSNR "
                      f"{result['whole_psnr']:.2f} dB, SSIM {result['whole_ssim']:.4f} "
                      f"(input {result['whole_input_psnr']:.2f} dB; "
                      f"{result['whole_images']} images)", flush=True)
            if scored or not finished:
                storage.write_file(marker, json.dumps(result, indent=1))
        rows.append(_summary_row(phase, result, exp.eval.whole_valid))
        if jax.process_index() == 0:
            logs.write_csv(workdir / "phases.csv", rows)
    return {**result, "phases": rows}
