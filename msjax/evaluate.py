"""Evaluation of a trained run: its validation split, or folders of images of any size, each
target into its own folder (``output_folder``), never overwriting an earlier evaluation unasked.

PSNR / SSIM follow the SR literature's conventions (``msjax.metrics``): RGB or Y (BT.601), border
crop, float64. Large images run through fixed-shape tiles (``restore_image``), exact for models
without image-wide operations.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from msjax import build, data, logs, metrics, parallel, runs, steps, storage
from msjax.data import pairing
from msjax.errors import DataError, RunDirError


def _ensemble_views(x):
    """The 8 flips / 90-degree rotations of an NHWC batch, and how to undo each."""
    for k in range(4):
        for flip in (False, True):
            v = jnp.rot90(x, k, axes=(1, 2))
            v = v[:, :, ::-1] if flip else v
            yield v, (lambda o, k=k, flip=flip: jnp.rot90(o[:, :, ::-1] if flip else o, -k,
                                                            axes=(1, 2)))


class Restorer:
    """A jitted NHWC corrupted batch (+ t) -> restored batch in [0, 1]; ``unclipped`` is the same
    single-view prediction before clipping, which ``receptive_margin`` probes."""

    def __init__(self, program, unclipped):
        self._program, self._unclipped = program, unclipped

    def __call__(self, y, t):
        return self._program(y, t)

    def unclipped(self, y, t):
        return self._unclipped(y, t)


def make_restorer(state, task, *, self_ensemble: bool = False, backend=None) -> Restorer:
    """A jitted function NHWC corrupted batch (+ t) -> restored batch in [0, 1], compiled by the
    run's ``backend`` (training's kernels) where given."""

    def restore(state, y, t):
        if not self_ensemble:
            return jnp.clip(steps.predict(state, y, t, task=task), 0, 1)
        outs = [undo(steps.predict(state, v, t, task=task)) for v, undo in _ensemble_views(y)]
        return jnp.clip(sum(outs) / len(outs), 0, 1)

    def unclipped(state, y, t):
        return steps.predict(state, y, t, task=task)

    # The state is an argument: closed-over arrays would be compiled in as constants.
    jit = backend.jit if backend is not None else jax.jit
    program, probe = jit(restore), jit(unclipped)
    return Restorer(lambda y, t: program(state, y, t), lambda y, t: probe(state, y, t))


# ---- tiled restoration ---------------------------------------------------------------------------
#
# A model whose output pixel depends only on a bounded neighbourhood of the input (convolutions
# without image-wide statistics: residual_cnn, EDSR, MSRN, ...) restores an image tile by tile
# exactly as it restores it whole: the image is padded once as whole-image restoration pads it,
# tiles are cut from the padded image at origins that are multiples of ``multiple``, each tile
# overlaps its neighbours by the model's receptive-field margin, and every output pixel is taken
# from the one tile whose interior (the tile less its margin, except where the margin is the
# image's own edge) holds it. No averaging. The margin is measured once per restorer.

# The probe images' sides, tried in turn until a perturbation's effect stays inside one.
PROBE_SIDES = (64, 128, 256)
# An output change below this (on a [0, 1] scale) does not count as a dependence.
PROBE_TOLERANCE = 1e-6
_MARGINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def receptive_margin(restore, *, channels: int = 3, scale: int = 1, multiple: int = 8,
                     t: float | None = None) -> int | None:
    """How far (in input pixels) a change of the input reaches into the output, measured: a
    random probe image and the same image with a frame around a central square darkened (the
    frame an eighth of the side, the square's corners on multiples of ``multiple``) are
    restored, and the deepest output pixel inside the square that moves by more than
    ``PROBE_TOLERANCE`` gives the reach. None when the change reaches the square's middle at
    every side in ``PROBE_SIDES``: the model has image-wide operations (layer / group norm,
    attention, channel attention: the darker frame shifts their statistics everywhere) or a
    receptive field beyond the probe. Cached per restorer (and channels, scale, multiple)."""
    cache = _MARGINS.setdefault(restore, {})
    key = (channels, scale, multiple, t is None)
    if key in cache:
        return cache[key]
    probe = getattr(restore, "unclipped", restore)
    rng = np.random.default_rng(0)
    step = max(1, multiple)
    margin = None
    for side in PROBE_SIDES:
        side = -(-side // step) * step
        frame = -(-side // 8 // step) * step
        base = rng.uniform(0.25, 0.75, (side, side, channels)).astype(np.float32)
        changed = base * np.float32(0.3)
        changed[frame:side - frame, frame:side - frame] = base[frame:side - frame,
                                                               frame:side - frame]
        tt = None if t is None else jnp.full((2,), t, jnp.float32)
        out = np.asarray(probe(jnp.asarray(np.stack([base, changed])), tt), np.float64)
        moved = np.abs(out[0] - out[1]).max(axis=-1) > PROBE_TOLERANCE
        r = np.arange(side * scale) // scale - frame + 1  # depth from the square's near edges
        depth_1d = np.minimum(r, side - 2 * frame + 1 - r)
        depth = np.minimum(depth_1d[:, None], depth_1d[None, :])
        inside = moved & (depth > 0)
        reach = int(depth[inside].max()) if inside.any() else 0
        if reach < (side - 2 * frame) // 2:
            margin = reach
            break
    cache[key] = margin
    return margin


def _windows(n: int, window: int, margin: int) -> list[tuple[int, int, int]]:
    """(window start, core start, core end) along one padded axis of length ``n``: windows of
    ``window`` whose cores tile [0, n), each core at least ``margin`` inside its window except at
    the axis's ends."""
    if window >= n:
        return [(0, 0, n)]
    core = window - 2 * margin
    out = []
    for a in range(0, n, core):
        s = min(max(a - margin, 0), n - window)
        out.append((s, a, min(a + core, n)))
    return out


def _pad(image, multiple):
    h, w = image.shape[:2]
    return np.pad(image, ((0, (-h) % multiple), (0, (-w) % multiple), (0, 0)), mode="symmetric")


def _tiled(restore, padded, *, scale, tile, margin, multiple, t, chunk):
    hp, wp, ch = padded.shape
    win = tile // multiple * multiple
    th, tw = min(win, hp), min(win, wp)
    for n, window in ((hp, th), (wp, tw)):
        if window < n and window - 2 * margin < multiple:
            raise ValueError(
                f"tile {tile} is too small for this model: its receptive-field margin is "
                f"{margin} px (rounded up to a multiple of {multiple}), so a tile must be at least "
                f"{2 * margin + multiple} px")
    spans = [(ys, xs) for ys in _windows(hp, th, margin) for xs in _windows(wp, tw, margin)]
    out = np.zeros((hp * scale, wp * scale, ch), np.float32)
    for c in range(0, len(spans), chunk):
        part = spans[c:c + chunk]
        tiles = np.stack([padded[ys[0]:ys[0] + th, xs[0]:xs[0] + tw] for ys, xs in part])
        tiles = np.concatenate([tiles, np.repeat(tiles[-1:], chunk - len(part), 0)])
        tc = None if t is None else jnp.full((chunk,), t, jnp.float32)
        restored = np.asarray(restore(jnp.asarray(tiles), tc))
        for ((s, a, e), (u, b, f)), r in zip(part, restored):
            out[a * scale:e * scale, b * scale:f * scale] = \
                r[(a - s) * scale:(e - s) * scale, (b - u) * scale:(f - u) * scale]
    return out


def restore_image(restore, image: np.ndarray, *, scale: int = 1, tile: int = 0,
                  overlap: int = 16, multiple: int = 8, t: float | None = None,
                  chunk: int = 8, report=None) -> np.ndarray:
    """Restores one HxWxC float image (LR for SR; the result is ``scale`` times larger).

    The image is padded by mirroring to a multiple of ``multiple`` and restored whole, or with
    ``tile`` > 0 in tile x tile pieces (``chunk`` tiles per call, one shape, so bounded memory):

    - a model whose output pixel depends on a bounded neighbourhood (``receptive_margin``
      measures it once) gives exactly its whole-image result: tiles overlap by that margin and
      each output pixel comes from the tile whose interior holds it; a tile smaller than twice
      the margin plus ``multiple`` is refused with a ValueError naming the least tile;
    - a model with image-wide operations (per-sample layer norm in resnet / srnet, GroupNorm and
      attention in unet, channel attention in rcan / multiblock) is tiled all the same, with
      ``overlap`` as its margin, but its result is not the whole-image one: tiles change its
      image-wide statistics. ``report`` (default: print to stderr) gets one warning line with the
      largest difference from whole-image restoration measured on a crop of this image
      (1.5 tiles a side).
    """
    h, w = image.shape[:2]
    padded = _pad(image, multiple)
    hp, wp = padded.shape[:2]
    if not tile or (hp <= tile and wp <= tile):
        tt = None if t is None else jnp.full((1,), t, jnp.float32)
        out = np.asarray(restore(jnp.asarray(padded[None]), tt))[0]
        return out[:h * scale, :w * scale]
    if tile < multiple:
        raise ValueError(f"tile {tile} is smaller than the size multiple {multiple}")
    margin = receptive_margin(restore, channels=image.shape[2], scale=scale, multiple=multiple,
                              t=t)
    local = margin is not None
    # Tile origins stay on multiples of ``multiple`` (strided models see the same grid).
    margin = -(-(margin if local else max(overlap, 0)) // multiple) * multiple
    options = {"scale": scale, "tile": tile, "margin": margin, "multiple": multiple, "t": t,
               "chunk": chunk}
    out = _tiled(restore, padded, **options)[:h * scale, :w * scale]
    if not local:
        side = tile + tile // 2
        crop = image[:side, :side]
        whole = restore_image(restore, crop, scale=scale, multiple=multiple, t=t)
        tiled = _tiled(restore, _pad(crop, multiple), **options)[:whole.shape[0], :whole.shape[1]]
        deviation = float(np.abs(tiled - whole).max())
        line = (f"warning: this model has image-wide operations (normalization or attention "
                f"over the whole image, or a receptive field over "
                f"{PROBE_SIDES[-1] * 3 // 8} px), so "
                f"tiles change its image-wide statistics: on a {crop.shape[0]}x{crop.shape[1]} "
                f"crop of this image, tiles of {tile} differ from whole-image restoration by up "
                f"to {deviation:.3g} (on [0, 1])")
        (report or (lambda s: print(s, file=sys.stderr)))(line)
    return out


# ---- where an evaluation's results go ----------------------------------------------------------
#
# <workdir>/eval/<checkpoint>-<step>/<target>/ : one folder per evaluated target, named from it
# ('valid', 'folder-<dir>', 'targets-<dir>', 'bench-<dir>', '-ensemble' with self-ensemble), then
# for folders and benchmarks by what differs from the run's default evaluation ('-tile128',
# '-whole', '-t0.05', '-crop4', '-y' / '-rgb': ``variant``), and holding target.json (what
# was evaluated). An evaluation that repeats an earlier one exactly gets the next free name
# (<target>-2, ...) unless it asks to overwrite; two different targets whose names coincide (two
# folders called LR) never share a folder.

EVAL_FILES = ("per_image.csv", "per_set.csv", "summary.json", "target.json")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "images"


def evaluation_target(*, input_dir: str = "", target_dir: str = "", benchmark_root: str = "",
                      self_ensemble: bool = False) -> tuple[str, dict]:
    """(folder name, identity) of what an evaluation scores; the identity (absolute paths) tells
    two targets with the same folder name apart."""
    resolved = lambda p: str(Path(p).expanduser().resolve()) if p else ""  # noqa: E731
    if benchmark_root:
        name, identity = f"bench-{_safe(Path(resolved(benchmark_root)).name)}", {
            "benchmark_root": resolved(benchmark_root)}
    elif input_dir:
        name, identity = f"folder-{_safe(Path(resolved(input_dir)).name)}", {
            "input_dir": resolved(input_dir), "target_dir": resolved(target_dir)}
    elif target_dir:
        name, identity = f"targets-{_safe(Path(resolved(target_dir)).name)}", {
            "target_dir": resolved(target_dir)}
    else:
        name, identity = "valid", {"split": "valid"}
    if self_ensemble:
        name += "-ensemble"
    return name, {**identity, "self_ensemble": bool(self_ensemble)}


def variant(options: dict, defaults: dict) -> list[str]:
    """What an evaluation's ``options`` change from the run's default evaluation (``defaults``:
    the same keys), as parts of its folder name: ``tile128`` (``whole`` for untiled), ``t0.05``,
    ``crop4``, ``y`` / ``rgb``; [] when nothing differs."""
    parts = []
    if options.get("tile") != defaults.get("tile"):
        parts.append("whole" if not options["tile"] else f"tile{options['tile']}")
    if options.get("t") is not None:
        parts.append(f"t{options['t']:g}")
    if options.get("crop_border") != defaults.get("crop_border"):
        parts.append(f"crop{options['crop_border']}")
    if bool(options.get("y_channel")) != bool(defaults.get("y_channel")):
        parts.append("y" if options["y_channel"] else "rgb")
    return parts


def _identity_of(folder: Path):
    try:
        return json.loads((folder / "target.json").read_text())["identity"]
    except (OSError, ValueError, KeyError):
        return None


def output_folder(workdir: Path, checkpoint: str, name: str, identity: dict, *,
                  output_dir: str = "", overwrite: bool = False) -> tuple[Path, bool]:
    """(folder, replaced): ``<workdir>/eval/<checkpoint>/<name>``, or the next free
    ``<name>-<n>``; with ``overwrite`` the folder that already holds this very target is emptied
    and reused. An explicit ``output_dir`` holding an evaluation is reused only with
    ``overwrite``."""
    if output_dir:
        folder = Path(output_dir).expanduser()
        earlier = [f for f in EVAL_FILES if (folder / f).exists()]
        if earlier and not overwrite:
            raise RunDirError(f"{folder} already holds an evaluation ({', '.join(earlier)}); "
                              "pass --overwrite to replace it or choose another --output_dir")
        for f in earlier:
            (folder / f).unlink()
        folder.mkdir(parents=True, exist_ok=True)
        return folder, bool(earlier)
    base = Path(workdir) / "eval" / checkpoint
    for n in itertools.count(1):
        folder = base / (name if n == 1 else f"{name}-{n}")
        if not folder.exists():
            folder.mkdir(parents=True)
            return folder, False
        if overwrite and _identity_of(folder) == identity:
            shutil.rmtree(folder)  # ours: it holds target.json with this target
            folder.mkdir(parents=True)
            return folder, True


class Results:
    """An evaluation's per_image.csv, written row by row (a later failure keeps what is done),
    and its summary.json, written by ``close`` (also after a failure, then with the error)."""

    def __init__(self, folder: Path, header: dict):
        self.folder, self.header = Path(folder), header
        self.rows, self.skipped = [], {}
        self._csv = logs.CsvLog(self.folder / "per_image.csv")

    def add(self, row: dict):
        self.rows.append(row)
        self._csv.write(row)

    def skip(self, path: Path, problem: str):
        self.skipped[str(path)] = problem

    def close(self, error: BaseException | None = None, **extra) -> dict:
        summary = {**self.header, **summarize(self.rows), **extra, "skipped": self.skipped,
                   "complete": error is None}
        if error is not None:
            summary["error"] = f"{type(error).__name__}: {error}"
        storage.write_file(self.folder / "summary.json", json.dumps(summary, indent=1))
        return summary


def save_images(folder: Path, name: str, *, input, output, target=None, crop_border: int = 0,
                y_channel: bool = False):
    """``<name>.png`` (the output), ``input/<name>.png`` and ``compare/<name>.png``: input (for
    SR also bicubic), output and target side by side, headed and with each one's PSNR."""
    logs.save_png(folder / f"{name}.png", output)
    logs.save_png(folder / "input" / f"{name}.png", input)
    panels = {"input": input[None], "output": output[None]}
    if target is not None:
        panels["target"] = target[None]
    side = max(np.shape(target if target is not None else output)[:2])
    # Small images (validation crops) enlarged to a viewable size; large ones at their own.
    grid = logs.image_grid(panels, title=name, size=None if side >= 256 else 256,
                           crop_border=crop_border, y_channel=y_channel)
    logs.save_png(folder / "compare" / f"{name}.png", grid)


def evaluate_validation(state, exp, *, output_dir: Path | None = None,
                        results: Results | None = None) -> list[dict]:
    """Per-image metrics on the run's fixed validation set, computed exactly as at training time,
    beside the input's own (the corrupted crop, or for SR its MATLAB-bicubic upsampling); with
    ``output_dir`` the restored crops are saved there as well (``save_images``)."""
    task = exp.task
    valid = build.make_validation(exp)
    batch, n = valid.batch, valid.count
    kw = exp.eval.metric_kw

    def scores(s, b):
        out = steps.eval_step(s, b, task=task, **kw)
        y = b["input"]
        baseline = task.baseline(y)
        out["input_psnr"] = metrics.psnr_batch(baseline, b["target"], **kw)
        out["input_ssim"] = metrics.ssim_batch(baseline, b["target"], **kw)
        return out, jnp.clip(steps.predict(s, y, b.get("t"), task=task), 0, 1)

    out, restored = parallel.fetch(exp.backend.jit(scores)(state, batch))
    host = parallel.fetch(batch)
    rows = []
    for i in range(n):
        row = {"image": f"valid_{i:03d}", **{k: float(out[k][i]) for k in (
            "psnr", "ssim", "input_psnr", "input_ssim", "loss")}}
        if output_dir is not None:
            save_images(output_dir, row["image"], input=host["input"][i], output=restored[i],
                        target=host["target"][i], **kw)
        rows.append(row)
        if results is not None:
            results.add(row)
    return rows


def _read(path: Path):
    """(HxWx3 float image, None) or (None, what is wrong with the file)."""
    try:
        return data.to_float(data.folders.decode(path)), None
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, ...
        return None, f"cannot be read ({type(e).__name__}: {e})"


def _score(image, target, crop: int, use_y: bool) -> tuple[float, float]:
    """PSNR / SSIM of 8-bit-rounded ``image`` against ``target`` on their common extent."""
    h, w = min(image.shape[0], target.shape[0]), min(image.shape[1], target.shape[1])
    a, b = (np.round(np.clip(z[:h, :w], 0, 1) * 255) for z in (image, target))
    return (metrics.psnr(a, b, crop_border=crop, y_channel=use_y),
            metrics.ssim(a, b, crop_border=crop, y_channel=use_y))


def evaluate_folder(state, exp, *, input_dir: str = "", target_dir: str = "",
                    output_dir: Path, tile: int = 0, overlap: int = 16,
                    self_ensemble: bool = False, t: float | None = None,
                    crop_border: int | None = None, y_channel: bool | None = None,
                    bad_images: str | None = None, results: Results | None = None,
                    row_prefix: dict | None = None) -> list[dict]:
    """Restores every image of ``input_dir`` (or of ``target_dir`` corrupted by the task with a
    fixed key, e.g. HR benchmark folders with MATLAB-bicubic LR) and saves input, output and a
    side-by-side to ``output_dir`` (``save_images``); with a ``target_dir`` each output is scored
    against its ground truth, and so is the input (for SR its MATLAB-bicubic upsampling).

    A file that cannot be read follows ``bad_images`` (default: the run's data.bad_images):
    'skip' records it in ``results`` and goes on, 'error' raises a DataError naming it."""
    crop = exp.eval.crop_border if crop_border is None else crop_border
    use_y = exp.eval.y_channel if y_channel is None else y_channel
    policy = exp.input.bad_images if bad_images is None else bad_images
    task = exp.task
    restore = make_restorer(state, task, self_ensemble=self_ensemble, backend=exp.backend)
    output_dir = Path(output_dir)
    with storage.writing(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
    inputs, truths = pair_inputs(input_dir, target_dir, task.scale)
    stems = [p.stem for p in inputs]
    key = jax.random.fold_in(jax.random.PRNGKey(exp.seed), 2**31 - 2)
    rows, first_bad = [], None
    for i, path in enumerate(inputs):
        time_value = t
        gt_path = truths[i]
        image, problem = _read(path)
        x = None
        if image is not None and gt_path is not None:
            x, problem = _read(gt_path)
            problem = problem and f"has a ground truth {gt_path.name} that {problem}"
        if problem is not None:
            if policy == "error":
                done = f"; the {len(rows)} images before it are scored in {output_dir}" if rows \
                    else ""
                raise DataError(f"{path} {problem}; fix or remove it, or pass --bad_images=skip"
                                f" to skip such files{done}")
            if results is not None:
                results.skip(path, problem)
            first_bad = first_bad or f"{path.name} {problem}"
            continue
        if input_dir:
            y = image
        else:  # synthesize the input from the ground truth
            s = task.scale
            x = x[:x.shape[0] // s * s, :x.shape[1] // s * s]
            if task.validation_corrupt is not None:  # the task's fixed form (damage suite)
                y_batch, t_batch = task.validation_corrupt(jnp.asarray(x[None]))
            else:
                y_batch, t_batch = task.corrupt(jnp.asarray(x[None]), jax.random.fold_in(key, i),
                                                0)
            y = np.asarray(y_batch[0])
            if t_batch is not None and time_value is None:
                time_value = float(t_batch[0])
        if task.time_conditioned and time_value is None:
            time_value = task.eval_t
        out = restore_image(restore, y, scale=task.scale, tile=tile, overlap=overlap,
                            multiple=8, t=time_value if task.time_conditioned else None)
        # Two inputs with one stem (a.png, a.jpg) keep apart.
        name = path.stem if stems.count(path.stem) == 1 else _safe(path.name)
        row = {**(row_prefix or {}), "image": path.name}
        if x is not None:
            baseline = np.asarray(task.baseline(y.astype(np.float64)))
            row["psnr"], row["ssim"] = _score(out, x, crop, use_y)
            row["input_psnr"], row["input_ssim"] = _score(baseline, x, crop, use_y)
        h, w = out.shape[:2] if x is None else (min(out.shape[0], x.shape[0]),
                                                min(out.shape[1], x.shape[1]))
        save_images(output_dir, name, input=y, output=out,
                    target=None if x is None else x[:h, :w], crop_border=crop,
                    y_channel=use_y)
        rows.append(row)
        if results is not None:
            results.add(row)
    if not rows:
        flag = "input_dir" if input_dir else "target_dir"
        raise DataError(f"none of the {len(inputs)} images in --{flag} "
                        f"{input_dir or target_dir} could be read (the first: {first_bad}); "
                        f"pass --{flag} a folder of readable images")
    return rows


def _images(folder: str, flag: str) -> list[Path]:
    """The image files of ``folder``, refused with eval.py's ``--<flag>``."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"--{flag} {folder} is not a folder; pass --{flag} a folder of images")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in data.sources.IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--{flag} {folder} holds no images "
                        f"({', '.join(data.sources.IMAGE_SUFFIXES)}); pass --{flag} a folder "
                        "of images")
    return files


def pair_inputs(input_dir: str, target_dir: str, scale: int) -> tuple[list, list]:
    """(input files, each one's ground truth or None). With both folders every input must have
    exactly one target, paired by name as in training (``data.pairing``; the folders may be one,
    its LR files the inputs): the unpaired are named in one DataError before any work. With a
    target folder alone the targets are the inputs' sources."""
    if not target_dir:
        inputs = _images(input_dir, "input_dir")
        return inputs, [None] * len(inputs)
    targets = _images(target_dir, "target_dir")
    if not input_dir:
        return targets, targets
    inputs = _images(input_dir, "input_dir")
    if Path(input_dir).expanduser().resolve() == Path(target_dir).expanduser().resolve():
        targets, inputs = pairing.split_shared_folder(inputs, scale)
    truths, unpaired = [], []
    for path in inputs:
        match, found = pairing.partner(path, targets, scale)
        truths.append(match)
        if match is None:
            unpaired.append(f"{path.name} ({len(found)} candidates: "
                            f"{', '.join(p.name for p in found)})" if found else path.name)
    if unpaired:
        raise DataError(f"{len(unpaired)} of {len(inputs)} inputs in {input_dir} have no single "
                        f"ground truth in {target_dir}: {', '.join(unpaired[:10])}"
                        f"{' ...' if len(unpaired) > 10 else ''}; targets pair by name "
                        "('Canon_001_LR2' or 'babyx2' with 'Canon_001_HR' or 'baby'), or "
                        "leave out --target_dir to restore without scores")
    return inputs, truths


def benchmark_sets(root: str, scale: int) -> list[tuple[str, str, str]]:
    """(set name, HR folder, LR folder or '') of every set under ``root``. A set is a folder of HR
    images (root/Set5/*.png), or root/Set5/HR with the given LR in root/Set5/LR_bicubic/X{scale}
    if that exists; without given LR, the LR is made from the HR by the run's task (MATLAB
    bicubic). ``root`` may itself be one set laid out that way."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"benchmark root {root} is not a directory; pass --benchmark_root a "
                        "folder of sets (Set5/, Set14/, ...)")

    def as_set(folder: Path):
        hr = folder / "HR" if (folder / "HR").is_dir() else folder
        if not any(p.suffix.lower() in data.sources.IMAGE_SUFFIXES for p in hr.iterdir()):
            return None
        lr = folder / "LR_bicubic" / f"X{scale}"
        return folder.name, str(hr), str(lr) if lr.is_dir() and hr != folder else ""

    found = [as_set(base)] if (base / "HR").is_dir() else [
        as_set(d) for d in sorted(base.iterdir()) if d.is_dir()]
    found = [s for s in found if s is not None]
    if not found:
        raise DataError(f"no benchmark sets under {root}: expected one folder of HR "
                        f"images per set, or <set>/HR (+ <set>/LR_bicubic/X{scale})")
    return found


def evaluate_benchmarks(state, exp, root: str, *, output_dir: Path,
                        results: Results | None = None,
                        **folder_options) -> tuple[list[dict], list[dict]]:
    """Scores every set under ``root`` (see ``benchmark_sets``) into ``output_dir/<set>``;
    returns per-image rows (with the set's name) and per-set means. ``folder_options`` go to
    ``evaluate_folder``."""
    rows = []
    for name, hr, lr in benchmark_sets(root, exp.task.scale):
        rows += evaluate_folder(state, exp, input_dir=lr, target_dir=hr,
                                output_dir=output_dir / name, results=results,
                                row_prefix={"set": name}, **folder_options)
    return rows, per_set_means(rows)


def per_set_means(rows: list[dict]) -> list[dict]:
    sets = list(dict.fromkeys(r["set"] for r in rows))
    return [{"set": s, **summarize([r for r in rows if r["set"] == s])} for s in sets]


def markdown_table(rows: list[dict]) -> str:
    """Rows as a markdown table (floats to 4 decimals); keys of any row, '-' where one lacks it."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) if k in r else "-" for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def summarize(rows: list[dict]) -> dict:
    """The image count and the mean of every numeric column (over the rows that have it)."""
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)))
    means = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    return {"images": len(rows), **means}


def run(workdir: str, *, which: str = "best", input_dir: str = "", target_dir: str = "",
        output_dir: str = "", tile: int | None = None, self_ensemble: bool | None = None,
        t: float | None = None, crop_border: int | None = None,
        y_channel: bool | None = None, benchmark_root: str = "", overwrite: bool = False,
        bad_images: str | None = None) -> tuple[list[dict], dict, Path]:
    """eval.py's work: returns (per-image rows, summary, the folder written; see
    ``output_folder``). The folder holds per_image.csv, summary.json, target.json, the outputs
    (``<image>.png``), inputs (``input/``) and side-by-sides (``compare/``); per_image.csv and
    summary.json are written even when a later image fails.

    With ``benchmark_root`` (SR benchmark sets, see ``benchmark_sets``) the metrics default to the
    SR literature's: Y channel, border crop = scale; the summary's ``sets`` holds the per-set means
    (also written to per_set.csv)."""
    logs.quiet_library_logs()
    workdir = Path(workdir)
    state, exp, step = runs.load_state(workdir, which)
    task = exp.task
    ensemble = exp.eval.self_ensemble if self_ensemble is None else self_ensemble
    name, identity = evaluation_target(input_dir=input_dir, target_dir=target_dir,
                                       benchmark_root=benchmark_root, self_ensemble=ensemble)
    checkpoint = f"step-{step}" if str(which).isdigit() else f"{which}-{step}"
    identity = {"checkpoint": checkpoint, **identity}
    defaults = {"tile": exp.eval.tile, "t": None,
                "crop_border": task.scale if benchmark_root else exp.eval.crop_border,
                "y_channel": True if benchmark_root else exp.eval.y_channel}
    if benchmark_root:
        crop_border = task.scale if crop_border is None else crop_border
        y_channel = True if y_channel is None else y_channel
    options = {"tile": exp.eval.tile if tile is None else tile,
               "overlap": exp.eval.tile_overlap, "self_ensemble": ensemble, "t": t,
               "crop_border": exp.eval.crop_border if crop_border is None else crop_border,
               "y_channel": exp.eval.y_channel if y_channel is None else y_channel,
               "bad_images": exp.input.bad_images if bad_images is None else bad_images}
    # The validation set is scored exactly as training did, whatever the options.
    parts = variant(options, defaults) if (input_dir or target_dir or benchmark_root) else []
    if parts:  # a default evaluation's identity stays what it always was
        name = "-".join([name, *parts])
        identity = {**identity, "variant": parts}
    with storage.writing(output_dir or workdir / "eval" / checkpoint,
                         "making the evaluation folder in "
                         f"{output_dir or workdir / 'eval' / checkpoint}"):
        out_dir, replaced = output_folder(workdir, checkpoint, name, identity,
                                          output_dir=output_dir, overwrite=overwrite)
    storage.write_file(out_dir / "target.json",
                       json.dumps({"identity": identity, "options": options}, indent=1))
    results = Results(out_dir, {"checkpoint": str(which), "step": step, "target": name,
                                **({"replaced_earlier": True} if replaced else {})})
    folder_options = dict(tile=options["tile"], overlap=options["overlap"],
                          self_ensemble=ensemble, crop_border=options["crop_border"],
                          y_channel=options["y_channel"], bad_images=options["bad_images"],
                          results=results)
    error, extra = None, {}
    try:
        if benchmark_root:
            evaluate_benchmarks(state, exp, benchmark_root, output_dir=out_dir,
                                **folder_options)
        elif input_dir or target_dir:
            evaluate_folder(state, exp, input_dir=input_dir, target_dir=target_dir,
                            output_dir=out_dir, t=t, **folder_options)
        else:
            evaluate_validation(state, exp, output_dir=out_dir, results=results)
    except BaseException as e:
        error = e
        raise
    finally:
        if benchmark_root and results.rows:
            extra["sets"] = per_set_means(results.rows)
            logs.write_csv(out_dir / "per_set.csv", extra["sets"])
        summary = results.close(error, **extra)
    return results.rows, summary, out_dir
