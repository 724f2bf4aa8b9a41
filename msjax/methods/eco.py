"""ECO: noise-free optimization in early training steps for SR (Kim et al., ECO, CVPR 2024).

A frozen, pretrained SR network f_pre turns each LR image into SR_pre = f_pre(LR), a centroid-like
estimate of its HR image without the HR's unpredictable detail, and LR_pre = bicubic-down(SR_pre)
keeps input and target consistent. Training starts on the teacher pair (LR_pre, SR_pre) and moves
to the real pair (LR, HR) by a schedule alpha(progress), alpha being the teacher pair's weight:

    pixel mix:  input = alpha LR_pre + (1 - alpha) LR,   target = alpha SR_pre + (1 - alpha) HR
    sample mix: each sample is the whole teacher pair with probability alpha, else the real pair

The mix is a ``batch_transform`` of the loop: it rewrites each MGE term's device batch into paired
data (``input``, ``target``), which the estimator restricts level by level like any LR/HR pair.
The teacher runs on the fly on those batches (a full-resolution forward per term, every step), or
once on whole training images (``precompute``),
its pairs cached to disk as 8-bit PNGs as the official code did. The cache is then part of the
training source (``teacher_source``): the sampler cuts the teacher's images at the same windows
as the real ones, so each batch carries ``teacher_target`` (and ``teacher_input`` for paired
data) beside them, on either input path.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from msjax import data, evaluate, logs, parallel, resize, runs, steps, storage, train
from msjax.errors import ConfigError
from msjax.registry import METHODS

SCHEDULES = ("sigmoid", "linear")
MIXES = ("pixel", "sample")
_MIX_SALT = 0x3C0  # keeps the sample-mix draws apart from the loop's noise keys


def teacher_weight(progress: float, schedule: str = "sigmoid", shift: float = 0.0) -> float:
    """alpha, the teacher pair's weight, at ``progress`` = step / steps in [0, 1].

    sigmoid (official): s = clip(1.2 (sigmoid(10 (p - 1/2) - shift) - 1/2), -1/2, 1/2) + 1/2,
    alpha = 1 - s: teacher only until p ~ 0.26, real only after p ~ 0.74 (shift 0); a positive
    shift lengthens the teacher phase. linear (the README's snippet): alpha = 1 - p.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - p
    if schedule != "sigmoid":
        raise ValueError(f"unknown ECO schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    s = 1.0 / (1.0 + math.exp(-(10.0 * (p - 0.5) - shift)))
    return 1.0 - (min(max(1.2 * (s - 0.5), -0.5), 0.5) + 0.5)


def teacher_pair(teacher_state, lr, *, teacher_task):
    """(LR_pre, SR_pre) of an LR batch. stop_gradient: nothing downstream can reach the teacher."""
    sr = jnp.clip(steps.predict(teacher_state, lr, None, task=teacher_task), 0.0, 1.0)
    sr = jax.lax.stop_gradient(sr)
    return resize.bicubic_downsample(sr, teacher_task.scale), sr


def mix_pairs(real, teacher, alpha, key, *, mix: str):
    """The training pair (input, target) from the real (LR, HR) and teacher (LR_pre, SR_pre) pairs,
    clipped to [0, 1] as the official dataset does."""
    (lr, hr), (lr_pre, sr_pre) = real, teacher
    if mix == "pixel":
        a = alpha
    elif mix == "sample":
        a = jax.random.bernoulli(key, alpha, (hr.shape[0], 1, 1, 1)).astype(hr.dtype)
    else:
        raise ValueError(f"unknown ECO mix {mix!r}; choose one of {', '.join(MIXES)}")
    return (jnp.clip(a * lr_pre + (1 - a) * lr, 0.0, 1.0),
            jnp.clip(a * sr_pre + (1 - a) * hr, 0.0, 1.0))


def _mix_terms(teacher_state, batches, alpha, step, seed_key, *, task, teacher_task, mix):
    out = []
    for k, batch in enumerate(batches):
        hr = batch["target"]
        # Synthetic SR data carries no LR: make it with the task's corruption, as the loop would.
        lr = batch["input"] if "input" in batch else task.corrupt(hr, None, 0)[0]
        if "teacher_target" in batch:  # the cached SR_pre at this window; LR_pre made like LR
            sr_pre = batch["teacher_target"]
            lr_pre = batch["teacher_input"] if "teacher_input" in batch else \
                task.corrupt(sr_pre, None, 0)[0]
            pre = (lr_pre, sr_pre)
        else:
            pre = teacher_pair(teacher_state, lr, teacher_task=teacher_task)
        key = jax.random.fold_in(jax.random.fold_in(seed_key, step), k)
        inp, tgt = mix_pairs((lr, hr), pre, alpha, key, mix=mix)
        rest = {name: v for name, v in batch.items() if not name.startswith("teacher_")}
        out.append({**rest, "input": inp, "target": tgt})
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class EcoSettings:
    """The ``eco`` section (msjax/defaults.py has each field's meaning)."""

    teacher_workdir: str
    teacher_checkpoint: str
    schedule: str
    shift: float
    mix: str
    precompute: bool
    cache_dir: str
    tile: int


class TeacherMix:
    """The loop's input transform: (step, device batches) -> batches of mixed pairs. With
    ``precomputed`` the batches carry the teacher's crops (``teacher_source``); otherwise the
    teacher runs on each batch's LR."""

    def __init__(self, exp, teacher_state, teacher_task, precomputed: bool = False):
        mesh, e = exp.mesh, exp.method_settings
        self.mesh, self.total = mesh, exp.total_steps
        self.schedule = functools.partial(teacher_weight, schedule=e.schedule, shift=e.shift)
        # The teacher's parameters live on the training mesh, replicated, and enter the compiled
        # mix as an argument (closing over them would bake them into the program as constants).
        self.teacher = None if precomputed else parallel.put_replicated(
            teacher_state.replace(opt_state=None), mesh)
        self.seed_key = parallel.put_replicated(
            jax.random.fold_in(jax.random.PRNGKey(exp.seed), _MIX_SALT), mesh)
        self._mix = exp.backend.jit(functools.partial(_mix_terms, task=exp.task,
                                                      teacher_task=teacher_task, mix=e.mix))

    def __call__(self, step: int, batches):
        alpha = self.schedule(step / self.total)
        # Explicit transfers, one leaf at a time: the loop's transfer guard forbids implicit ones
        # (and, with several devices, counts a pytree device_put of host scalars as implicit).
        alpha, step_index = (jax.device_put(v, parallel.replicated(self.mesh))
                             for v in (np.float32(alpha), np.int32(step)))
        return self._mix(self.teacher, batches, alpha, step_index, self.seed_key)


# --- precomputed teacher pairs -------------------------------------------------------------------

class TeacherCache:
    """Cached teacher images, index-aligned with the training source, by batch key:
    ``teacher_target`` (SR_pre at the HR image's size) and, for a paired source,
    ``teacher_input`` (LR_pre at the LR image's size)."""

    def __init__(self, directory: Path, count: int, paired: bool):
        self.directory, self.count, self.paired = Path(directory), count, paired

    @property
    def keys(self) -> tuple:
        return ("teacher_target", "teacher_input") if self.paired else ("teacher_target",)

    def __len__(self):
        return self.count

    def path(self, i: int, kind: str) -> Path:
        return self.directory / f"{int(i):06d}_{kind}.png"

    def __getitem__(self, i) -> dict:
        out = {"teacher_target": data.folders.decode(self.path(i, "sr_pre"))}
        if self.paired:
            out["teacher_input"] = data.folders.decode(self.path(i, "lr_pre"))
        return out


def teacher_source(spec, cache: TeacherCache, *, scale: int):
    """The training source of ``spec`` (``settings.InputSpec``) with the cached teacher images
    aligned with its own: the sampler cuts every array of an item at the same window."""
    return data.AlignedSource(data.open_source(spec, "train", scale=scale), cache,
                              keys=cache.keys, resize=data.pipeline.whole_image_resize(spec))


def precompute(exp, teacher_state, teacher_task, teacher_id: dict, directory: Path,
               *, tile: int = 0) -> TeacherCache:
    """Runs the teacher once on every whole training image and caches its pairs; images already
    cached for the same teacher and data are reused (an interrupted precompute resumes)."""
    scale = teacher_task.scale
    source = data.open_source(exp.input, "train", scale=scale)
    paired = isinstance(source[0], tuple)  # given LR images (paired folders, official Urban100)
    manifest = json.loads(json.dumps({"teacher": teacher_id,
                                      "data": dataclasses.asdict(exp.input),
                                      "scale": scale, "count": len(source)}))  # JSON's view
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()) != manifest:
        for old in directory.glob("*_pre.png"):
            old.unlink()
    storage.write_file(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
    cache = TeacherCache(directory, len(source), paired)
    restore = evaluate.make_restorer(teacher_state, teacher_task, backend=exp.backend)
    resize_image = data.pipeline.whole_image_resize(exp.input)
    for i in range(len(source)):
        if cache.path(i, "sr_pre").exists() and (not paired or cache.path(i, "lr_pre").exists()):
            continue
        item = source[i]
        if paired:
            hr_shape, lr = None, data.to_float(item[1])
        else:
            hr = resize_image(item) if resize_image else item
            hr = data.to_float(hr).astype(np.float64)
            hr_shape = hr.shape
            lr = resize.bicubic_downsample(hr[:hr.shape[0] // scale * scale,
                                              :hr.shape[1] // scale * scale], scale)
        sr = logs.to_u8(evaluate.restore_image(restore, np.asarray(lr, np.float32), scale=scale,
                                           tile=tile, overlap=min(16, tile // 2)))
        if paired:
            lr_pre = resize.bicubic_downsample(sr.astype(np.float64) / 255.0, scale)
            logs.save_png(cache.path(i, "lr_pre"), logs.to_u8(lr_pre))
        else:  # edge-pad rows / columns the modcrop dropped, so sizes (and crops) match the HR
            pad = ((0, hr_shape[0] - sr.shape[0]), (0, hr_shape[1] - sr.shape[1]), (0, 0))
            sr = np.pad(sr, pad, mode="edge")
        logs.save_png(cache.path(i, "sr_pre"), sr)
    return cache


# --- the method ----------------------------------------------------------------------------------

def check(e: EcoSettings, exp) -> None:
    """Refusals before any data is read."""
    for ok, message in (
            (exp.task.name == "sr", f"method=eco trains super-resolution; task.name is "
             f"{exp.task.name!r}"),
            (bool(e.teacher_workdir), "method=eco needs --config.eco.teacher_workdir: the run "
             "directory of a pretrained SR model (train one with method='' first)"),
            (e.schedule in SCHEDULES, f"eco.schedule={e.schedule!r}; choose one of "
             f"{', '.join(SCHEDULES)}"),
            (e.mix in MIXES, f"eco.mix={e.mix!r}; choose one of {', '.join(MIXES)}"),
            (e.teacher_checkpoint in ("best", "latest"), "eco.teacher_checkpoint must be best or "
             "latest")):
        if not ok:
            raise ConfigError(message)


def load_teacher(e: EcoSettings, scale: int):
    """(state, task, identity) of the frozen teacher from its msjax run directory."""
    state, teacher, step = runs.load_state(Path(e.teacher_workdir), e.teacher_checkpoint)
    if teacher.task.scale != scale:
        raise ConfigError(f"the teacher in {e.teacher_workdir} is x{teacher.task.scale}, the run "
                          f"x{scale}; use a teacher trained at the same scale")
    identity = {"workdir": str(Path(e.teacher_workdir).resolve()), "step": int(step)}
    return state, teacher.task, identity


@METHODS.register("eco", settings=EcoSettings, check=check)
def run(exp, workdir) -> dict:
    e = exp.method_settings
    teacher_state, teacher_task, identity = load_teacher(e, exp.task.scale)
    source = None
    if e.precompute:
        directory = Path(e.cache_dir or Path(workdir) / "eco_teacher_pairs")
        cache = precompute(exp, teacher_state, teacher_task, identity, directory, tile=e.tile)
        source = teacher_source(exp.input, cache, scale=teacher_task.scale)
    transform = TeacherMix(exp, teacher_state, teacher_task, precomputed=source is not None)
    return train.train_and_evaluate(exp, workdir, transform=transform, train_source=source)
