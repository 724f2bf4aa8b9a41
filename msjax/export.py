"""A trained run's restorer as a file other programs run: a serialized ``jax.export`` artefact
(StableHLO) or an ONNX model, each with a JSON card beside it::

    python -m msjax.export runs/quickstart --format onnx [--checkpoint best|latest|STEP]

The exported function is what ``msjax.load_run(RUN).restore`` computes on whole images: NHWC
float32 in [0, 1] in (LR for SR), the task's input preparation (the ``:official``
normalisation, the signed range, SR's bilinear upsampling of the input) and the clip to [0, 1]
included; t is a second input, one value per image, for time-conditioned tasks. The caller does
what ``run.restore`` does around the model: pad each image by mirroring to a multiple of 8
(``SIZE_MULTIPLE``) and crop the output back. The StableHLO artefact states the multiple in its
input shape (``8*h``); ONNX has no such constraint and trusts the caller (the card says so).

The model is built on XLA's own convolutions whatever the run trained on: oneDNN's kernels
(``runtime.cpu_convolutions``) are custom calls that no other runtime has. Every file is checked
as it is written: run on crops of a real photo against ``run.restore``, and removed if any pixel
differs by more than ``TOLERANCE``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import warnings
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from msjax import runs, steps
from msjax.errors import MsjaxError

FORMATS = ("stablehlo", "onnx")
SUFFIXES = {"stablehlo": ".stablehlo", "onnx": ".onnx"}
# run.restore mirrors images to a multiple of 8 before the model sees them.
SIZE_MULTIPLE = 8
# The largest difference from run.restore an exported file may show, on the [0, 1] scale: the
# same float32 computation, in an order another compiler picks.
TOLERANCE = 1e-5
# A serialized jax.export artefact runs on any of these (the restorer has no platform-specific
# operation once its convolutions are XLA's).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
EXTRA = "pip install 'msjax[export]'"


class ExportError(MsjaxError):
    """An export that cannot be written, or whose file does not reproduce the run."""


@dataclasses.dataclass
class Exported:
    path: Path
    card_path: Path
    max_abs_diff: float
    card: dict


def load_run(workdir, checkpoint: str | int = "best") -> tuple[runs.Run, dict]:
    """The run at ``checkpoint`` (best, latest or a step), its model on XLA's convolutions, and
    the checkpoint's metadata."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ExportError(f"run directory {workdir} not found: pass a run directory that "
                          "train.py wrote")
    state, exp, step, meta = runs.load_checkpoint(workdir, checkpoint, portable=True)
    return runs.Run(workdir, exp, state, step), meta


def restorer(run: runs.Run):
    """f(image[, t]) -> restored batch, clipped to [0, 1]; the weights are constants in it."""
    task = run.experiment.task

    def restore(image, *t):
        return jnp.clip(steps.predict(run.state, image, t[0] if t else None, task=task), 0, 1)

    return restore


def input_names(run: runs.Run) -> list[str]:
    return ["image", "t"] if run.experiment.task.time_conditioned else ["image"]


def export_stablehlo(run: runs.Run, path: Path, size: tuple[int, int] | None) -> dict:
    from jax import export

    if size is None:
        b, h, w = export.symbolic_shape(f"b, {SIZE_MULTIPLE}*h, {SIZE_MULTIPLE}*w")
    else:
        (b,), (h, w) = export.symbolic_shape("b"), size
    args = [jax.ShapeDtypeStruct((b, h, w, run.channels), jnp.float32)]
    if run.experiment.task.time_conditioned:
        args.append(jax.ShapeDtypeStruct((b,), jnp.float32))
    exported = export.export(jax.jit(restorer(run)), platforms=PLATFORMS)(*args)
    path.write_bytes(exported.serialize())
    return {"platforms": list(exported.platforms),
            "input_shapes": [str(a.shape) for a in exported.in_avals],
            "output_shape": str(exported.out_avals[0].shape)}


def _onnx_modules():
    """jax2onnx and onnxruntime, quietly: jax2onnx logs the plugins it cannot load for the
    libraries it also converts (dm-pix, equinox) and prints debug lines on stdout."""
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import jax2onnx
            import onnxruntime
    except ImportError as e:
        raise ExportError(f"ONNX export needs jax2onnx and onnxruntime ({e}); {EXTRA}") from None
    return jax2onnx, onnxruntime


def export_onnx(run: runs.Run, path: Path, size: tuple[int, int] | None) -> dict:
    jax2onnx, _ = _onnx_modules()
    task = run.experiment.task
    # At a fixed size the batch is fixed too: jax2onnx's resize takes no free dimension at all.
    b, h, w = ("B", "H", "W") if size is None else (1, *size)
    shapes = [(b, h, w, run.channels)] + ([(b,)] if task.time_conditioned else [])
    try:
        # jax2onnx's own deprecation warnings and debug prints say nothing about this run.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = jax2onnx.to_onnx(restorer(run), shapes, input_names=input_names(run),
                                     output_names=["restored"], model_name=run.workdir.name)
    except Exception as e:  # a converter's failure: said in one line, with what to do
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if size is None and task.upsample_input and task.scale > 1:
            raise ExportError(
                "jax2onnx converts this run's bilinear upsampling of the input "
                f"(task.upsample_input) only at a fixed size ({first}): pass --size HxW "
                f"(multiples of {SIZE_MULTIPLE}), or export --format stablehlo, which keeps "
                "sizes free") from e
        raise ExportError(f"jax2onnx cannot convert this run's restorer ({first}); try "
                          "--size HxW or --format stablehlo") from e
    path.write_bytes(model.SerializeToString())
    return {"converter": f"jax2onnx {version('jax2onnx')}",
            "opset": max(o.version for o in model.opset_import)}


def check_images(run: runs.Run, size: tuple[int, int] | None) -> list[np.ndarray]:
    """Crops of skimage's astronaut: two of sizes that are no multiple of 8 (the caller's padding
    is checked too), or one of the fixed size."""
    import skimage.data

    photo = skimage.data.astronaut()[..., :run.channels].astype(np.float32) / 255
    if size is not None:
        h, w = size
        reps = (math.ceil(h / photo.shape[0]), math.ceil(w / photo.shape[1]), 1)
        return [np.tile(photo, reps)[:h, :w]]
    return [photo[:60, :44], photo[150:210, 200:244]]


def run_file(fmt: str, path: Path, names: list[str]):
    """f(padded batch[, t]) -> output batch, running the written file."""
    if fmt == "stablehlo":
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
        return lambda *args: np.asarray(exported.call(*map(jnp.asarray, args)))
    _, ort = _onnx_modules()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda *args: session.run(None, dict(zip(names, args)))[0]


def pad_to_multiple(batch: np.ndarray, multiple: int = SIZE_MULTIPLE) -> np.ndarray:
    """What run.restore does before the model: mirror the bottom and right edges."""
    h, w = batch.shape[1:3]
    return np.pad(batch, ((0, 0), (0, (-h) % multiple), (0, (-w) % multiple), (0, 0)),
                  mode="symmetric")


def max_difference(run: runs.Run, fmt: str, path: Path, size) -> float:
    """The largest pixel difference between the file and run.restore on the check crops."""
    call = run_file(fmt, path, input_names(run))
    task = run.experiment.task
    worst = 0.0
    for image in check_images(run, size):
        expected = run.restore(image)
        batch = pad_to_multiple(image[None])
        args = [batch] + ([np.full((1,), task.eval_t, np.float32)]
                          if task.time_conditioned else [])
        h, w = image.shape[:2]
        out = call(*args)[0, :h * task.scale, :w * task.scale]
        if out.shape != expected.shape:
            raise ExportError(f"{path} gives a {out.shape} image where run.restore gives "
                              f"{expected.shape}; the file is removed")
        worst = max(worst, float(np.max(np.abs(out - expected))))
    return worst


def describe_input(task) -> str:
    if task.normalize is not None:
        mean, std = task.normalize
        return (f"(x - mean) / std per channel with mean {list(mean)}, std {list(std)} (the "
                "official loaders' Normalize), inside the exported graph")
    if task.model_range == "signed":
        return "2x - 1 (the model works in [-1, 1]), inside the exported graph"
    return "none: the model takes [0, 1] as it is"


def make_card(run: runs.Run, meta: dict, fmt: str, path: Path, checkpoint, size,
              diff: float, details: dict) -> dict:
    task, exp = run.experiment.task, run.experiment
    best = meta.get("best_psnr")
    free = size is None
    if free and fmt == "stablehlo":
        sizes = (f"dynamic, multiples of {SIZE_MULTIPLE} (the input shape says so: "
                 f"{SIZE_MULTIPLE}*h x {SIZE_MULTIPLE}*w)")
    elif free:
        sizes = (f"dynamic; the caller pads to a multiple of {SIZE_MULTIPLE} (the ONNX graph "
                 "runs at any size but matches run.restore only so)")
    else:
        sizes = (f"fixed: exactly {size[0]} x {size[1]}" + (", batch 1" if fmt == "onnx" else "")
                 + "; images of that size match run.restore")
    return {
        "format": fmt,
        "file": path.name,
        "model": exp.model_name,
        "task": task.name,
        "scale": task.scale,
        "channels": run.channels,
        "layout": "NHWC",
        "dtype": "float32",
        "input_range": [0, 1],
        "inputs": {
            "image": f"NHWC float32 in [0, 1], {run.channels} channels"
                     + (" (the low-resolution image)" if task.scale > 1 else ""),
            **({"t": "float32 [N], one per image"} if task.time_conditioned else {}),
        },
        "output": (f"NHWC float32 in [0, 1], {task.scale}x the input's height and width"
                   if task.scale > 1 else "NHWC float32 in [0, 1], the input's size"),
        "normalisation": describe_input(task),
        "upsampling_of_input": ("bilinear, inside the exported graph"
                                if task.upsample_input and task.scale > 1 else "none"),
        "t_is_input": task.time_conditioned,
        "t_default": task.eval_t if task.time_conditioned else None,
        "size_multiple": SIZE_MULTIPLE,
        "dynamic_height_width": free,
        "sizes": sizes,
        "caller_pads": (f"mirror the bottom and right edges to a multiple of {SIZE_MULTIPLE} "
                        "(numpy.pad mode='symmetric'), then crop the output to scale x the "
                        "original size, as run.restore does"),
        "dynamic_batch": free or fmt == "stablehlo",
        "checkpoint": str(checkpoint),
        "step": run.step,
        "best_psnr": best if best is not None and math.isfinite(best) else None,
        "checked": {"against": "msjax.load_run(RUN).restore", "on": "skimage.data.astronaut "
                    "crops", "max_abs_diff": diff, "tolerance": TOLERANCE},
        "convolutions": "XLA's (lax.conv), whatever the run trained on",
        "jax": jax.__version__,
        **details,
    }


def parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        h = w = -1
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ExportError(f"--size {text!r}: give HxW, both positive multiples of "
                          f"{SIZE_MULTIPLE} (the padded input size), e.g. 256x192")
    return h, w


def export_run(workdir, fmt: str, checkpoint: str | int = "best", out=None,
               size: tuple[int, int] | None = None) -> Exported:
    """Writes the run's restorer in ``fmt`` to ``out`` (default RUN/export/<model>-step<N>
    with the format's suffix) and its card to ``out`` + '.json'; checks the file against
    run.restore and removes it if it differs by more than ``TOLERANCE``."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    # A missing extra is said before anything loads.
    if fmt == "onnx":
        _onnx_modules()
    else:
        try:  # jax serializes its artefacts with flatbuffers, which it does not require
            import flatbuffers  # noqa: F401
        except ImportError as e:
            raise ExportError(f"a jax.export artefact is written with flatbuffers ({e}); "
                              f"{EXTRA}") from None
    run, meta = load_run(workdir, checkpoint)
    path = Path(out) if out else (Path(workdir) / "export"
                                  / f"{run.experiment.model_name}-step{run.step}{SUFFIXES[fmt]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    card_path = path.with_name(path.name + ".json")
    try:
        details = (export_stablehlo if fmt == "stablehlo" else export_onnx)(run, path, size)
        diff = max_difference(run, fmt, path, size)
        if not diff <= TOLERANCE:
            raise ExportError(f"{path} differs from run.restore by {diff:.3g} on the check photo "
                              f"(tolerance {TOLERANCE:g}); the file is removed")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    card = make_card(run, meta, fmt, path, checkpoint, size, diff, details)
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    return Exported(path, card_path, diff, card)


if __name__ == "__main__":
    from msjax import cli

    cli.export()
