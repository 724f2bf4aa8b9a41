"""Evaluation of a trained run: its validation split, or folders of images of any size.

PSNR / SSIM follow the SR literature's conventions (``msjax.metrics``): RGB or Y (BT.601), border
crop, float64. Large images run through fixed-shape tiles, so one compiled program serves all.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from msjax import build, data, metrics, parallel, rundir, steps

load_config = rundir.load_config


def load_state(config, workdir: Path, which: str = "best"):
    """(state, experiment, step) restored from the run's best (or latest) checkpoint."""
    return rundir.load_state(workdir, which, config=config)


def _ensemble_views(x):
    """The 8 flips / 90-degree rotations of an NHWC batch, and how to undo each."""
    for k in range(4):
        for flip in (False, True):
            v = jnp.rot90(x, k, axes=(1, 2))
            v = v[:, :, ::-1] if flip else v
            yield v, (lambda o, k=k, flip=flip: jnp.rot90(o[:, :, ::-1] if flip else o, -k,
                                                            axes=(1, 2)))


def make_restorer(state, task, *, self_ensemble: bool = False, backend=None):
    """A jitted function NHWC corrupted batch (+ t) -> restored batch in [0, 1], compiled by the
    run's ``backend`` (training's kernels) where given."""

    def restore(state, y, t):
        if not self_ensemble:
            return jnp.clip(steps.predict(state, y, t, task=task), 0, 1)
        outs = [undo(steps.predict(state, v, t, task=task)) for v, undo in _ensemble_views(y)]
        return jnp.clip(sum(outs) / len(outs), 0, 1)

    # The state is an argument: closed-over arrays would be compiled in as constants.
    program = backend.jit(restore) if backend is not None else jax.jit(restore)
    return lambda y, t: program(state, y, t)


def restore_image(restore, image: np.ndarray, *, scale: int = 1, tile: int = 0,
                  overlap: int = 16, multiple: int = 8, t: float | None = None) -> np.ndarray:
    """Restores one HxWx3 float image. With ``tile`` > 0 the image is cut into overlapping
    tile x tile pieces (padded by mirroring), restored in fixed-shape batches and blended."""
    h, w = image.shape[:2]
    tt = None if t is None else jnp.full((1,), t, jnp.float32)
    if not tile:
        ph, pw = (-h) % multiple, (-w) % multiple
        padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
        out = np.asarray(restore(jnp.asarray(padded[None]), tt))[0]
        return out[:h * scale, :w * scale]
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    stride = tile - overlap
    ny, nx = (max(1, math.ceil((n - overlap) / stride)) for n in (h, w))
    hp, wp = (ny - 1) * stride + tile, (nx - 1) * stride + tile
    padded = np.pad(image, ((0, hp - h), (0, wp - w), (0, 0)), mode="symmetric")
    out = np.zeros((hp * scale, wp * scale, image.shape[2]), np.float64)
    weight = np.zeros((hp * scale, wp * scale, 1), np.float64)
    corners = [(i * stride, j * stride) for i in range(ny) for j in range(nx)]
    chunk = 8  # a fixed batch of tiles: one compile for every image
    for c in range(0, len(corners), chunk):
        part = corners[c:c + chunk]
        tiles = np.stack([padded[a:a + tile, b:b + tile] for a, b in part])
        tiles = np.concatenate([tiles, np.repeat(tiles[-1:], chunk - len(part), 0)])
        tc = None if t is None else jnp.full((chunk,), t, jnp.float32)
        restored = np.asarray(restore(jnp.asarray(tiles), tc))
        for (a, b), r in zip(part, restored):
            out[a * scale:(a + tile) * scale, b * scale:(b + tile) * scale] += r
            weight[a * scale:(a + tile) * scale, b * scale:(b + tile) * scale] += 1
    return (out / weight)[:h * scale, :w * scale].astype(np.float32)


def _save_png(path: Path, img: np.ndarray):
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def _write_rows(path: Path, rows: list[dict]):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def evaluate_validation(config, state, exp) -> list[dict]:
    """Per-image metrics on the run's fixed validation set, computed exactly as at training time."""
    valid = build.make_validation(config, exp.task, exp.mesh)
    batch, n = valid.batch, valid.count
    out = parallel.fetch(build.eval_step(exp)(state, batch))
    return [{"image": f"valid_{i:03d}", "psnr": float(out["psnr"][i]),
             "ssim": float(out["ssim"][i]), "loss": float(out["loss"][i])} for i in range(n)]


def evaluate_folder(config, state, exp, *, input_dir: str = "", target_dir: str = "",
                    output_dir: Path, tile: int = 0, overlap: int = 16,
                    self_ensemble: bool = False, t: float | None = None,
                    crop_border: int | None = None, y_channel: bool | None = None) -> list[dict]:
    """Restores every image of ``input_dir`` (or of ``target_dir`` corrupted by the task with a
    fixed key, e.g. HR benchmark folders with MATLAB-bicubic LR) and writes the results to
    ``output_dir``; with a ``target_dir`` each image is also scored against its ground truth."""
    crop = config.eval.crop_border if crop_border is None else crop_border
    use_y = config.eval.y_channel if y_channel is None else y_channel
    task = exp.task
    restore = make_restorer(state, task, self_ensemble=self_ensemble, backend=exp.backend)
    multiple = 8 * (1 if task.scale == 1 else 1)
    output_dir.mkdir(parents=True, exist_ok=True)
    targets = {p.stem: p for p in data.sources.list_images(target_dir)} if target_dir else {}
    inputs = data.sources.list_images(input_dir) if input_dir else list(targets.values())
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2**31 - 2)
    time_value = t
    rows = []
    for i, path in enumerate(inputs):
        if input_dir:
            y = data.to_float(data.folders.decode(path))
        else:  # synthesize the input from the ground truth
            x = data.to_float(data.folders.decode(path))
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
            time_value = 0.05 if task.name in ("deblur", "inpaint") else 0.5
        out = restore_image(restore, y, scale=task.scale, tile=tile, overlap=overlap,
                            multiple=multiple, t=time_value if task.time_conditioned else None)
        _save_png(output_dir / f"{path.stem}.png", out)
        row = {"image": path.name}
        gt = ground_truth_for(path.stem, targets)
        if gt is not None:
            x = data.to_float(data.folders.decode(gt))[:out.shape[0], :out.shape[1]]
            out_u8 = np.round(np.clip(out, 0, 1) * 255)
            x_u8 = np.round(x * 255)
            row["psnr"] = metrics.psnr(out_u8, x_u8, crop_border=crop, y_channel=use_y)
            row["ssim"] = metrics.ssim(out_u8, x_u8, crop_border=crop, y_channel=use_y)
        rows.append(row)
        if not input_dir:
            time_value = t
    return rows


def ground_truth_for(stem: str, targets: dict):
    """The target of an input file: the same stem, or else the longest target stem the input's
    starts with (benchmark LR files carry suffixes: 'babyx2', 'Canon_001_LR2')."""
    if stem in targets:
        return targets[stem]
    prefixes = [t for t in targets if stem.startswith(t)]
    return targets[max(prefixes, key=len)] if prefixes else None


def benchmark_sets(root: str, scale: int) -> list[tuple[str, str, str]]:
    """(set name, HR folder, LR folder or '') of every set under ``root``. A set is a folder of HR
    images (root/Set5/*.png), or root/Set5/HR with the given LR in root/Set5/LR_bicubic/X{scale}
    if that exists; without given LR, the LR is made from the HR by the run's task (MATLAB
    bicubic). ``root`` may itself be one set laid out that way."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"benchmark root {root} is not a directory")

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
        raise FileNotFoundError(f"no benchmark sets under {root}: expected one folder of HR "
                                f"images per set, or <set>/HR (+ <set>/LR_bicubic/X{scale})")
    return found


def evaluate_benchmarks(config, state, exp, root: str, *, output_dir: Path,
                        **folder_options) -> tuple[list[dict], list[dict]]:
    """Scores every set under ``root`` (see ``benchmark_sets``); returns per-image rows (with the
    set's name) and per-set means. ``folder_options`` go to ``evaluate_folder``."""
    rows, per_set = [], []
    for name, hr, lr in benchmark_sets(root, exp.task.scale):
        set_rows = evaluate_folder(config, state, exp, input_dir=lr, target_dir=hr,
                                   output_dir=output_dir / name, **folder_options)
        rows += [{"set": name, **r} for r in set_rows]
        per_set.append({"set": name, "images": len(set_rows), **summarize(set_rows)})
    return rows, per_set


def markdown_table(rows: list[dict]) -> str:
    """Rows as a markdown table (floats to 4 decimals)."""
    keys = list(rows[0])
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def summarize(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))] if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} | {"images": len(rows)}


def run(workdir: str, *, which: str = "best", input_dir: str = "", target_dir: str = "",
        output_dir: str = "", tile: int | None = None, self_ensemble: bool | None = None,
        t: float | None = None, crop_border: int | None = None,
        y_channel: bool | None = None, benchmark_root: str = "") -> tuple[list[dict], dict, Path]:
    """eval.py's work: returns (per-image rows, summary, where the CSVs were written).

    With ``benchmark_root`` (SR benchmark sets, see ``benchmark_sets``) the metrics default to the
    SR literature's: Y channel, border crop = scale; the summary's ``sets`` holds the per-set means
    (also written to per_set.csv)."""
    workdir = Path(workdir)
    config = load_config(workdir)
    state, exp, step = load_state(config, workdir, which)
    task = exp.task
    out_dir = Path(output_dir) if output_dir else workdir / f"eval_{which}_{step}"
    out_dir.mkdir(parents=True, exist_ok=True)
    per_set = None
    if benchmark_root:
        rows, per_set = evaluate_benchmarks(
            config, state, exp, benchmark_root, output_dir=out_dir,
            tile=config.eval.tile if tile is None else tile, overlap=config.eval.tile_overlap,
            self_ensemble=config.eval.self_ensemble if self_ensemble is None else self_ensemble,
            crop_border=task.scale if crop_border is None else crop_border,
            y_channel=True if y_channel is None else y_channel)
        _write_rows(out_dir / "per_set.csv", per_set)
    elif input_dir or target_dir:
        rows = evaluate_folder(
            config, state, exp, input_dir=input_dir, target_dir=target_dir, output_dir=out_dir,
            tile=config.eval.tile if tile is None else tile, overlap=config.eval.tile_overlap,
            self_ensemble=config.eval.self_ensemble if self_ensemble is None else self_ensemble,
            t=t, crop_border=crop_border, y_channel=y_channel)
    else:
        rows = evaluate_validation(config, state, exp)
    summary = {"step": step, **summarize(rows)}
    if per_set is not None:
        summary["sets"] = per_set
    if rows:
        _write_rows(out_dir / "per_image.csv", rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return rows, summary, out_dir
