"""The run directory: where a run lives when none is named, its config.json, its lock, and the
rules for resuming in it.

A workdir holds one experiment. Running again in it resumes; the config may differ only where
``RESUMABLE_SECTIONS`` / ``RESUMABLE_SUFFIXES`` say (how the run executes, not what it computes),
by ``AFTER_STOP_FIELDS`` once the run stopped on non-finite steps (``record_stop``; config.json
keeps each change and the step it took effect, under ``HISTORY_KEY``), or, when asked to
(``extend``), by a larger step budget, which extends the run from its last checkpoint. A workdir
whose checkpoints lack their config.json, or whose logs lack their checkpoints, is refused: it
cannot say which experiment it holds. The config is seen here only as its flat record
({'section.field': value}, JSON's view); ``msjax.build`` makes and reads it, ``msjax.runs``
loads a trained run back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Mapping

import jax

from msjax import storage
from msjax.errors import RunDirError
from msjax.lock import WorkdirLock

CONFIG_FILE = "config.json"
RUNS = Path("runs")
# What may change when a run resumes in its workdir (a rule, not a list): the sections that say
# how a process runs the job or looks at it, and paths (a dataset or teacher moved to another
# disk). Anything else is another experiment.
RESUMABLE_SECTIONS = ("runtime", "log", "eval")
RESUMABLE_SUFFIXES = ("_dir", "_workdir", "init_from")
# Fields that set the step budget: a larger total extends a run instead of making another one.
BUDGET_FIELDS = ("train.steps", "fms.stage_steps", "fms.stage_weights", "fms.extended_from")
# What may change once a run stopped on non-finite steps: the remedies its message names.
AFTER_STOP_FIELDS = ("train.lr", "train.lr_schedule", "train.grad_clip_norm",
                     "runtime.nonfinite")
STOPS_FILE = "stops.json"
# config.json's list of changes made on resume: {"step", "field", "from", "to"}.
HISTORY_KEY = "_changes"
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


def default_workdir(config_file: str, mode: str = "", model: str = "",
                    seed: int | None = None) -> Path:
    """``runs/<config name>``, plus ``_<argument>`` for a config argument
    (``configs/sr_urban100.py:resnet``), then what the command line changed that makes another
    experiment of the same config: ``_<model>`` (``--config.model``), ``_<mode>``
    (``--config.mode``, so the README's ``--config.mode=fullmultiscale`` variant gets its own
    directory) and ``_seed<seed>`` (a seed other than the config's), in the official code's
    order (task_dataset_network_mode, then the run). Without them the name stays the config's,
    so a run started before they were named resumes where it is."""
    path, _, argument = str(config_file).partition(":")
    parts = [Path(path).stem, argument, model, mode, "" if seed is None else f"seed{seed}"]
    return RUNS / "_".join(p for p in parts if p)


def flat(tree) -> dict:
    """A config (or any nested mapping) as {'section.field': value}, tuples as lists (JSON's
    view): config.json, TensorBoard's config table and the resume rules all see this."""
    def walk(d, prefix=""):
        for k, v in d.items():
            if hasattr(v, "items"):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", list(v) if isinstance(v, tuple) else v
    return dict(walk(tree.to_dict() if hasattr(tree, "to_dict") else tree))


def resumable(key: str) -> bool:
    return key.split(".")[0] in RESUMABLE_SECTIONS or key.endswith(RESUMABLE_SUFFIXES)


def read_saved(workdir) -> dict | None:
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return {LEGACY_NAMES.get(k, k): v for k, v in json.loads(path.read_text()).items()
                if k != HISTORY_KEY}
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


def record_stop(workdir, step: int, message: str) -> None:
    """Adds a non-finite stop at ``step`` to the run directory's ``STOPS_FILE``."""
    path = Path(workdir) / STOPS_FILE
    write_json(path, read_stops(workdir) + [{"step": step, "message": message}])


def read_stops(workdir) -> list:
    """The non-finite stops recorded in ``workdir``, oldest first ([] when none)."""
    try:
        return list(json.loads((Path(workdir) / STOPS_FILE).read_text()))
    except (OSError, ValueError):
        return []


def read_history(workdir) -> list:
    """config.json's record of fields changed on resume ([] when none)."""
    try:
        return list(json.loads((Path(workdir) / CONFIG_FILE).read_text()).get(HISTORY_KEY, []))
    except (OSError, ValueError, AttributeError):
        return []


def check_contents(workdir) -> None:
    """Refuses a workdir whose parts cannot say which experiment they belong to: checkpoints
    without config.json, or logs (train.csv) without the checkpoints folder."""
    workdir = Path(workdir)
    if not (workdir / CONFIG_FILE).exists() and checkpoint_steps(workdir):
        raise RunDirError(
            f"workdir {workdir} holds checkpoints but no {CONFIG_FILE}, so nothing says which "
            f"config they were trained with; put the run's {CONFIG_FILE} back, or use another "
            "--workdir")
    if (workdir / "train.csv").exists() and not (workdir / "checkpoints").is_dir():
        raise RunDirError(
            f"workdir {workdir} holds logs (train.csv) but no checkpoints/ folder, so the run "
            "cannot resume and a fresh start would overwrite its logs; put checkpoints/ back, or "
            "move the workdir aside (or use another --workdir) to start afresh")


@dataclasses.dataclass
class Resume:
    """How a config relates to the run already in a workdir."""

    kind: str                       # "new" | "same" | "extended"
    previous_steps: int = 0         # the saved run's step budget (extended)
    changed: tuple = ()             # resumable fields that differ, for the log
    after_stop: tuple = ()          # (field, saved, current) changed after a non-finite stop


def compare(workdir: Path, saved: Mapping, current: Mapping, total_steps: int,
            known: Mapping, total_steps_of: Callable[[Mapping], int], *,
            extend: bool = False, stopped: bool = False) -> Resume:
    """Refuses a workdir written by another experiment. ``saved`` and ``current`` are flat
    records, ``known`` the record of today's defaults (a field msjax gained after the run was
    written reads as its default, which does what the code did before it, so such a run
    resumes), ``total_steps`` the current budget, ``total_steps_of(saved)`` the saved one's (a
    larger budget extends the run when ``extend``). ``stopped``: the run stopped on non-finite
    steps, so ``AFTER_STOP_FIELDS`` may differ."""
    saved = {**{k: v for k, v in known.items() if k not in saved and k in current}, **saved}
    diffs = [k for k in sorted(set(saved) | set(current))
             if not resumable(k) and saved.get(k) != current.get(k)]
    budget = [k for k in diffs if k in BUDGET_FIELDS]
    remedies = [k for k in diffs if k in AFTER_STOP_FIELDS and stopped]
    rest = [k for k in diffs if k not in BUDGET_FIELDS and k not in remedies]
    changed = tuple(k for k in sorted(set(saved) | set(current))
                    if resumable(k) and k in saved and saved.get(k) != current.get(k))
    after_stop = tuple((k, saved.get(k), current.get(k)) for k in sorted(
        set(remedies) | {k for k in changed if k in AFTER_STOP_FIELDS}))
    if rest:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in rest[:4])
        raise RunDirError(
            f"workdir {workdir} holds a run with another config ({shown}"
            f"{'; ...' if len(rest) > 4 else ''}); use a new --workdir or the same config"
            + ("" if stopped or not any(k in AFTER_STOP_FIELDS for k in rest) else
               f" ({', '.join(AFTER_STOP_FIELDS)} may change only after a non-finite stop)"))
    before = total_steps_of(saved)
    if not budget or total_steps == before:
        return Resume("same", changed=changed, after_stop=after_stop)
    if total_steps < before:
        raise RunDirError(
            f"workdir {workdir} holds a run of {before} steps and this config asks for "
            f"{total_steps}: a run can be extended, not shortened; use a new --workdir, or "
            f"--config.train.steps={before} (its own budget)")
    if not extend:
        raise RunDirError(
            f"workdir {workdir} holds a run of {before} steps and this config asks for "
            f"{total_steps}; extending a run is explicit: give --config.train.steps="
            f"{total_steps} on the command line (from Python: extend=True), or use another "
            "--workdir")
    return Resume("extended", previous_steps=before, changed=changed, after_stop=after_stop)


def write_config(workdir: Path, record: Mapping, history=()) -> None:
    """config.json from the flat ``record`` and the ``history`` of fields changed on resume,
    atomically (other processes of a multi-host run may be reading it)."""
    write_json(Path(workdir) / CONFIG_FILE,
               dict(record) | ({HISTORY_KEY: list(history)} if history else {}))


def write_json(path: Path, value) -> None:
    storage.write_file(Path(path), json.dumps(value, indent=1, sort_keys=True))


def open_for(workdir: Path) -> Path:
    """``workdir`` as a directory path, refused when it is a file."""
    workdir = Path(workdir).expanduser()
    if workdir.exists() and not workdir.is_dir():
        raise RunDirError(f"--workdir {workdir} is a file, not a directory; choose another path")
    return workdir


class Claim:
    """The workdir made and locked for this run (process 0 does both; the others wait for
    nothing): ``with Claim(workdir): ...``."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.lock = WorkdirLock(self.workdir) if jax.process_index() == 0 else None

    def __enter__(self):
        if self.lock is not None:
            with storage.writing(self.workdir, f"making the workdir {self.workdir}"):
                self.workdir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
