"""Warm start: a fresh run's weights from another run's checkpoint, tensor by tensor.

``train.init_from=WORKDIR`` starts a new run (never a resumed one) from the run in WORKDIR, its
best or latest checkpoint (``train.init_checkpoint``): every tensor whose path and shape match is
copied as it is, every other one keeps its fresh initial value and is reported by name. An x3 model
started from an x2 run so keeps its own upsampler, as EDSR, RCAN and ECO train x3 and x4. The
optimizer state, step and RNG start fresh: only weights (and model state such as batch-norm
statistics) cross over.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import flax
import jax
import jax.numpy as jnp

from msjax.errors import ConfigError, RunDirError

CHECKPOINTS = ("best", "latest")


@dataclasses.dataclass(frozen=True)
class WarmStartReport:
    source: str
    step: int
    copied: tuple[str, ...]                                # paths copied from the source
    skipped: tuple[tuple[str, tuple, tuple | None], ...]   # (path, shape here, shape there / None)
    unused: tuple[tuple[str, tuple], ...] = ()             # source tensors with no place here
    copied_values: int = 0
    total_values: int = 0

    def __str__(self) -> str:
        """One paragraph for the run's log."""
        text = (f"warm start from {self.source} (step {self.step}): copied {len(self.copied)} of "
                f"{len(self.copied) + len(self.skipped)} tensors ({self.copied_values:,} of "
                f"{self.total_values:,} values)")
        if self.skipped:
            text += "; kept fresh: " + ", ".join(
                f"{path} {shape}" + (f" (there {theirs})" if theirs is not None else " (absent)")
                for path, shape, theirs in self.skipped)
        if self.unused:
            text += "; not used from the source: " + ", ".join(f"{p} {s}" for p, s in self.unused)
        return text


def _flat(tree) -> dict[str, jax.Array]:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def match_tensors(fresh, source, *, source_name: str = "", step: int = 0):
    """(tree, report): ``fresh`` with every leaf of ``source`` at the same path and of the same
    shape copied in (cast to the fresh leaf's dtype, placed on its devices), the rest unchanged."""
    mine, theirs = _flat(fresh), _flat(source)
    out, copied, skipped = {}, [], []
    for path, leaf in mine.items():
        other = theirs.get(path)
        if other is not None and tuple(other.shape) == tuple(leaf.shape):
            value = jnp.asarray(other, dtype=leaf.dtype)
            if isinstance(leaf, jax.Array):  # onto the fresh run's devices and layout
                value = jax.device_put(value, leaf.sharding)
            out[path] = value
            copied.append(path)
        else:
            out[path] = leaf
            skipped.append((path, tuple(leaf.shape),
                            None if other is None else tuple(other.shape)))
    unused = tuple((p, tuple(v.shape)) for p, v in theirs.items() if p not in mine)
    report = WarmStartReport(
        source=source_name, step=step, copied=tuple(copied), skipped=tuple(skipped),
        unused=unused, copied_values=sum(math.prod(mine[p].shape) for p in copied),
        total_values=sum(math.prod(v.shape) for v in mine.values()))
    return flax.traverse_util.unflatten_dict(out, sep="/"), report


def check_source(spec) -> None:
    """Raises ConfigError when ``spec.init_from`` holds no run and no checkpoint, before a run
    that would start from it makes its workdir (``load_source`` reads it later)."""
    workdir = Path(spec.init_from).expanduser()
    checkpoints = workdir / "checkpoints"
    if not (workdir / "config.json").is_file() or not checkpoints.is_dir() or not any(
            p.name.isdigit() for p in checkpoints.iterdir()):
        raise ConfigError(f"train.init_from={spec.init_from!r} holds no trained run (config.json "
                          "and a checkpoint); train that run first (its config's docstring says "
                          "how), or set train.init_from=''")


def load_source(workdir, which: str = "best"):
    """(state, step) of the run in ``workdir``: its best (or latest) checkpoint."""
    from msjax import runs  # runs builds through build.py, which the loop imports

    if which not in CHECKPOINTS:
        raise ConfigError(f"train.init_checkpoint={which!r} is unknown; choose best or latest")
    workdir = Path(workdir).expanduser()
    try:
        state, _, step = runs.load_state(workdir, which)
    except RunDirError as e:
        raise RunDirError(f"train.init_from={workdir} cannot start this run: {e}; train that run "
                          "first (its config's docstring says how) or set train.init_from=''")
    return state, int(step)


def _require_overlap(report: WarmStartReport) -> None:
    if not report.copied:
        raise ConfigError(f"train.init_from={report.source} holds a model that shares no tensor "
                          "with this one; point it at a run of the same model family or set "
                          "train.init_from=''")


def load_matching(params, workdir, which: str = "best"):
    """(params, report): a fresh run's ``params`` with every tensor of ``workdir``'s checkpoint
    whose path and shape match copied in; raises ConfigError when none matches (another model)."""
    state, step = load_source(workdir, which)
    params, report = match_tensors(params, state.params, source_name=str(workdir), step=step)
    _require_overlap(report)
    return params, report


def warm_start(state, spec, write=print):
    """A fresh run's ``state`` with the weights (params and model state) of ``spec.init_from``
    (``settings.WarmStart``), its report written with ``write``."""
    source, step = load_source(spec.init_from, spec.init_checkpoint)
    params, report = match_tensors(state.params, source.params,
                                   source_name=str(spec.init_from), step=step)
    _require_overlap(report)
    model_state = state.model_state
    if model_state and source.model_state:  # batch-norm statistics follow their layers
        model_state, _ = match_tensors(model_state, source.model_state)
    write(str(report))
    return state.replace(params=params, model_state=model_state)
