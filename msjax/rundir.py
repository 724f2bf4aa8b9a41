"""The run directory: where a run lives when none is named, its config.json, the rules for
resuming in it, and loading a run back (``load_run``).

A workdir holds one experiment. Running again in it resumes; the config may differ only where
``defaults.RESUMABLE_SECTIONS`` / ``RESUMABLE_SUFFIXES`` say (how the run executes, not what it
computes), or by a larger step budget, which extends the run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import ml_collections

from msjax import defaults
from msjax.errors import RunDirError

CONFIG_FILE = "config.json"
RUNS = Path("runs")
# Fields that set the step budget: a larger total extends a run instead of making another one.
BUDGET_FIELDS = ("train.steps", "fms.stage_steps", "fms.stage_weights")
# Names of fields in run directories written before the runtime / log sections existed.
LEGACY_NAMES = {
    "train.eval_every": "log.eval_every", "train.log_every": "log.every",
    "train.checkpoint_every": "log.checkpoint_every", "train.max_to_keep_best": "log.keep_best",
    "train.nonfinite": "runtime.nonfinite", "train.fast_compile": "runtime.fast_compile",
    "train.cpu_convolutions": "runtime.cpu_convolutions",
    "train.cpu_reductions": "runtime.cpu_reductions",
    "train.transfer_guard": "runtime.transfer_guard", "num_devices": "runtime.num_devices",
    "distributed": "runtime.distributed", "coordinator_address": "runtime.coordinator_address",
    "num_processes": "runtime.num_processes", "process_id": "runtime.process_id",
}


def default_workdir(config_file: str, config, overridden: dict | None = None) -> Path:
    """``runs/<config name>``, plus ``_<mode>`` when the mode was overridden on the command line
    (so the README's ``--config.mode=fullmultiscale`` variant gets its own directory), plus
    ``_<argument>`` for a config argument (``configs/sr_urban100.py:resnet``)."""
    path, _, argument = str(config_file).partition(":")
    name = Path(path).stem + (f"_{argument}" if argument else "")
    if overridden and "mode" in overridden:
        name += f"_{config.mode}"
    return RUNS / name


def flat(config) -> dict:
    """The config as {'section.field': value}, tuples as lists (JSON's view)."""
    def walk(d, prefix=""):
        for k, v in d.items():
            if hasattr(v, "items"):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", list(v) if isinstance(v, tuple) else v
    return dict(walk(config.to_dict() if hasattr(config, "to_dict") else config))


def resumable(key: str) -> bool:
    return (key.split(".")[0] in defaults.RESUMABLE_SECTIONS
            or key.endswith(defaults.RESUMABLE_SUFFIXES))


def _nest(flat_values: dict) -> ml_collections.ConfigDict:
    """Saved values laid over the package defaults (fields a newer msjax added keep their
    defaults; renamed fields take their new names)."""
    config = defaults.get_config()
    for key, value in flat_values.items():
        key = LEGACY_NAMES.get(key, key)
        node, (*parents, leaf) = config, key.split(".")
        for p in parents:
            if p not in node:
                node[p] = ml_collections.ConfigDict()
            node = node[p]
        value = tuple(value) if isinstance(value, list) else value
        with node.ignore_type():
            node[leaf] = value
    return config


def read_saved(workdir) -> dict | None:
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return {LEGACY_NAMES.get(k, k): v for k, v in json.loads(path.read_text()).items()}
    except ValueError as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); it was not written by a finished "
                          "save of train.py: restore it or use another --workdir") from None


def checkpoint_steps(workdir) -> list[int]:
    """The steps of the finished checkpoints in a run directory, read from their folder names
    (Orbax renames a checkpoint to its step when the save completes)."""
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


def checkpoint_meta(workdir, step: int) -> dict:
    """The meta a checkpoint was saved with (step, stage, ledger, ...), {} if unreadable."""
    try:
        return json.loads((Path(workdir) / "checkpoints" / str(step) / "meta" / "metadata")
                          .read_text())
    except (OSError, ValueError):
        return {}


def load_config(workdir) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir``, laid over the package defaults."""
    saved = read_saved(workdir)
    if saved is None:
        raise RunDirError(f"{Path(workdir) / CONFIG_FILE} not found: --workdir must be a "
                          "directory written by train.py")
    return _nest(saved)


@dataclasses.dataclass
class Resume:
    """How a config relates to the run already in a workdir."""

    kind: str                       # "new" | "same" | "extended"
    previous_steps: int = 0         # the saved run's step budget (extended)
    changed: tuple = ()             # resumable fields that differ, for the log


def compare(workdir: Path, config, total_steps_of) -> Resume:
    """Refuses a workdir written by another experiment; ``total_steps_of(config)`` gives a
    config's step budget (a larger one extends the run)."""
    saved = read_saved(workdir)
    if saved is None:
        return Resume("new")
    current = flat(config)
    # A field msjax gained after the run was written reads as its default: new fields default
    # to what the code did before them, so such a run resumes.
    known = flat(defaults.get_config())
    saved = {**{k: v for k, v in known.items() if k not in saved and k in current}, **saved}
    diffs = [k for k in sorted(set(saved) | set(current))
             if not resumable(k) and saved.get(k) != current.get(k)]
    budget = [k for k in diffs if k in BUDGET_FIELDS]
    rest = [k for k in diffs if k not in BUDGET_FIELDS]
    changed = tuple(k for k in sorted(set(saved) | set(current))
                    if resumable(k) and k in saved and saved.get(k) != current.get(k))
    if rest:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in rest[:4])
        raise RunDirError(
            f"workdir {workdir} holds a run with another config ({shown}"
            f"{'; ...' if len(rest) > 4 else ''}); use a new --workdir or the same config")
    if not budget:
        return Resume("same", changed=changed)
    before, after = total_steps_of(_nest(saved)), total_steps_of(config)
    if after <= before:
        raise RunDirError(
            f"workdir {workdir} holds a run of {before} steps and this config asks for {after}: "
            f"a run can be extended, not shortened; use a new --workdir, or more steps")
    return Resume("extended", previous_steps=before, changed=changed)


def write_config(workdir: Path, config) -> None:
    """config.json, atomically (other processes of a multi-host run may be reading it)."""
    path = Path(workdir) / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(flat(config), indent=1, sort_keys=True))
    tmp.replace(path)


@dataclasses.dataclass
class Run:
    """A trained run, loaded: ``restore(y, t=None)`` maps a corrupted NHWC float batch in [0, 1]
    (LR for SR) to the restored batch, jitted; ``state`` / ``experiment`` for anything else."""

    workdir: Path
    config: Any
    experiment: Any
    state: Any
    step: int
    restore: Any


def load_state(workdir, which: str = "best", *, config=None):
    """(state, experiment, step) of the run's best (or latest) checkpoint, on one device."""
    from msjax import build, checkpoints, logs

    logs.quiet_library_logs()
    workdir = Path(workdir)
    config = config or load_config(workdir)
    exp = build.experiment(config, num_devices=1)
    side = config.data.patch // exp.task.scale
    template = build.initial_state(exp, (1, side, side, 3))
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        step = ckpt.best_step() if which == "best" else None
        if step is None:
            step = max(ckpt.steps(), default=None)
        if step is None:
            raise RunDirError(f"no checkpoint in {workdir / 'checkpoints'}: the run saved none "
                              "yet; train it first (python train.py ... --workdir "
                              f"{workdir})")
        state, _ = ckpt.restore(step, template)
    finally:
        ckpt.close()
    return state, exp, step


def load_run(workdir, which: str = "best") -> Run:
    """The run in ``workdir`` at its best (or latest) checkpoint, ready to restore images::

        run = msjax.load_run("runs/quickstart")
        restored = run.restore(corrupted)          # NHWC float32 in [0, 1]
    """
    from msjax import steps

    import jax.numpy as jnp

    state, exp, step = load_state(workdir, which)
    task = exp.task
    # The state is an argument, not a closure: closed-over arrays would be compiled in as
    # constants.
    program = exp.backend.jit(lambda s, y, t: jnp.clip(steps.predict(s, y, t, task=task), 0, 1))

    def restore(y, t=None):
        if task.time_conditioned and t is None:
            t = jnp.full((y.shape[0],), 0.05 if task.name in ("deblur", "inpaint") else 0.5)
        return program(state, jnp.asarray(y, jnp.float32), t)

    return Run(Path(workdir), exp.config, exp, state, step, restore)
