"""Multiblock phased training (reference/seed_methods.md (c)): a chain N_m o ... o N_1 of
same-resolution restoration blocks, grown one block at a time.

Phase i trains a chain of i blocks whose first i-1 are the trained N_1..N_{i-1}, frozen
(``MultiblockChain.frozen``: their outputs are stop_gradient'ed and their parameters get zero
gradients). N_i's input is therefore regenerated from the trained blocks on the fly, in float and
without the reference's 8-bit files and quadrant seams. Optionally a clamped N_i+ (output clipped
to [0, 1]) is fine-tuned after N_i's warm phase, N_i starts from N_{i-1}'s weights (inheritance),
and the whole chain is fine-tuned jointly at the end.

Every phase is an ordinary run of the loop in ``<workdir>/<phase>``, started from the previous
phase's best checkpoint through ``init_fn``; ``phase.json`` marks it finished. Running the same
command again skips finished phases and resumes an interrupted one from its own checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from msjax import evaluate, optim, train
from msjax.errors import ConfigError

SUMMARY_FIELDS = ("phase", "blocks", "trained", "steps", "lr", "best_psnr", "best_step", "psnr",
                  "ssim", "input_psnr")


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str              # the sub-workdir
    blocks: int            # chain length
    clamp: bool            # clamp of the frozen blocks (N_j+ when clamped variants are trained)
    clamp_last: bool       # clamp of the block being trained
    steps: int
    lr: float
    init_from: str = ""    # the phase whose best weights start this one ('' : fresh)
    inherit: bool = False  # the new block starts as a copy of the previous block
    optimizer: str = ""    # '' : train.optimizer (each phase starts a fresh one)

    @property
    def frozen(self) -> int:
        """Blocks that do not train: all but the last, except in the joint phase."""
        return 0 if self.name.startswith("joint") else self.blocks - 1


def plan_phases(config) -> list[Phase]:
    """The phases in order. Phase i (N_i's warm phase, unclamped) runs ``block_optimizer`` at
    ``block_lr`` (the seed: Adadelta at 1), the later phases train.optimizer at their rates."""
    mb, lr = config.multiblock, config.train.lr
    if mb.block_optimizer not in ("", *optim.OPTIMIZERS):
        raise ConfigError(
            f"multiblock.block_optimizer={mb.block_optimizer!r} is unknown; choose one of "
            f"{', '.join(optim.OPTIMIZERS)} (or '' for train.optimizer)")
    plus = mb.plus_steps > 0
    phases, previous = [], ""
    for i in range(1, mb.blocks + 1):
        phases.append(Phase(f"phase_{i}", i, clamp=plus, clamp_last=False, steps=mb.block_steps,
                            lr=mb.block_lr or lr, init_from=previous,
                            inherit=mb.inherit and i > 1, optimizer=mb.block_optimizer))
        if plus:
            phases.append(Phase(f"phase_{i}_plus", i, clamp=True, clamp_last=True,
                                steps=mb.plus_steps, lr=mb.plus_lr or lr,
                                init_from=phases[-1].name))
            if mb.plus_low_steps > 0:  # the reference's second, 10x lower rate
                phases.append(Phase(f"phase_{i}_plus_low", i, clamp=True, clamp_last=True,
                                    steps=mb.plus_low_steps, lr=mb.plus_low_lr or lr,
                                    init_from=phases[-1].name))
        previous = phases[-1].name
    if mb.joint_steps > 0:
        phases.append(Phase("joint", mb.blocks, clamp=plus, clamp_last=plus, steps=mb.joint_steps,
                            lr=mb.joint_lr or lr, init_from=previous))
        if mb.joint_low_steps > 0:
            phases.append(Phase("joint_low", mb.blocks, clamp=plus, clamp_last=plus,
                                steps=mb.joint_low_steps, lr=mb.joint_low_lr or lr,
                                init_from="joint"))
    return phases


def phase_config(config, phase: Phase) -> ml_collections.ConfigDict:
    """The plain-loop config of one phase: the chain's shape, its steps, optimizer and rate."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.method = ""
    c.model_kwargs.update(dict(n_blocks=phase.blocks, frozen=phase.frozen, clamp=phase.clamp,
                               clamp_last=phase.clamp_last))
    c.train.steps = phase.steps
    c.train.optimizer = phase.optimizer or config.train.optimizer
    if phase.init_from:  # the earlier phase's weights start it (make_init), not train.init_from
        c.train.init_from = ""
    c.train.lr = phase.lr
    # The reference holds each phase's rate constant (a new Adam at each rate change).
    c.train.lr_end = phase.lr if config.multiblock.constant_lr else min(
        c.train.lr_end, phase.lr)
    return c


def make_init(workdir: Path, phase: Phase):
    """init_fn: the blocks trained so far from ``phase.init_from``'s best checkpoint (and, with
    inheritance, the newest of them copied into the new block); the optimizer starts fresh."""
    if not phase.init_from:
        return None

    def init(state):
        source = workdir / phase.init_from
        trained, _, _ = evaluate.load_state(evaluate.load_config(source), source, "best")
        params = dict(state.params)
        params.update(trained.params)
        if phase.inherit:  # a copy: two leaves sharing one buffer cannot both be donated
            params[f"block_{phase.blocks - 1}"] = jax.tree.map(
                jnp.copy, trained.params[f"block_{phase.blocks - 2}"])
        # Onto the new state's devices and layout (the restore used a one-device mesh).
        placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                              params, dict(state.params))
        return state.replace(params=placed)

    return init


def validate(config) -> None:
    mb = config.multiblock
    problems = [
        (config.model == "multiblock", f"method=multiblock trains the multiblock chain; "
         f"model is {config.model!r}"),
        (mb.blocks >= 1, f"multiblock.blocks={mb.blocks} must be >= 1"),
        (mb.block_steps > 0, f"multiblock.block_steps={mb.block_steps} must be positive"),
        (not mb.inherit or mb.blocks > 1, "multiblock.inherit needs at least 2 blocks"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


def _summary_row(phase: Phase, result: dict) -> dict:
    trained = "all" if phase.name.startswith("joint") else f"block_{phase.blocks}" + (
        "+" if phase.clamp_last else "")
    row = {"phase": phase.name, "blocks": phase.blocks, "trained": trained, "steps": phase.steps,
           "lr": phase.lr}
    row.update({k: result.get(k, float("nan")) for k in SUMMARY_FIELDS if k not in row})
    return row


def write_summary(workdir: Path, rows: list[dict]) -> None:
    with open(workdir / "phases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def run(exp, workdir) -> dict:
    """Runs (or resumes) every phase into ``<workdir>/<phase>``; returns the last phase's result
    with ``phases`` (the summary rows, also in ``<workdir>/phases.csv``)."""
    config, workdir = exp.config, Path(workdir).expanduser()
    train.open_workdir(workdir, exp)  # a workdir holds one multiblock run, never two mixed
    rows, result = [], {}
    for phase in plan_phases(config):
        marker = workdir / phase.name / "phase.json"
        if marker.exists():
            result = json.loads(marker.read_text())
        else:
            result = train.train_and_evaluate(phase_config(config, phase), workdir / phase.name,
                                              init_fn=make_init(workdir, phase))
            result = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
            if jax.process_index() == 0:
                marker.write_text(json.dumps(result, indent=1))
        rows.append(_summary_row(phase, result))
        if jax.process_index() == 0:
            write_summary(workdir, rows)
    return {**result, "phases": rows}
