"""Batches from sources: random patches, flips and rotations, fixed validation crops.

Sampling is stateless: term k's batch at step s is a pure function of (seed, s, k), so a resumed
run sees exactly the batches the uninterrupted one would have, with no iterator state to save.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Callable

import numpy as np


def to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32)


def _augment(patches: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip and 90-degree rotation for every array of one sample (e.g. LR/HR)."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for p in patches:
        p = np.rot90(p, k, axes=(0, 1))
        out.append(p[:, ::-1] if flip else p)
    return out


RESIZE_MODES = ("square", "short_side")


RESIZE_METHODS = ("bicubic", "bilinear", "nearest")


def resize_whole(img: np.ndarray, size: int, mode: str = "square",
                 method: str = "bicubic") -> np.ndarray:
    """The whole image resized before cropping, as the reference loaders' Resize: ``square`` to
    size x size (the official MGE loaders), ``short_side`` keeping the aspect with the shorter
    side at ``size`` (torchvision's Resize(int); the pyramidal reference's (87, 71) for CelebA's
    218 x 178 faces). ``method``: bicubic, bilinear (torchvision's Resize) or nearest (the
    official MGE collate's F.interpolate)."""
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
                "nearest": Image.NEAREST}[method]

    img = _ensure_rgb(img)
    h, w = img.shape[:2]
    if mode == "square":
        out_h, out_w = size, size
    elif mode == "short_side":
        out_h, out_w = round(h * size / min(h, w)), round(w * size / min(h, w))
    else:
        raise ValueError(f"resize mode {mode!r}; use one of {RESIZE_MODES}")
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((out_w, out_h), resample))
    # 16-bit and float images: each channel as a float image, so no precision is lost.
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(to_float(img[..., c]))).resize(
        (out_w, out_h), resample)) for c in range(3)]
    out = np.clip(np.stack(channels, axis=-1), 0, 1)
    return (out * 65535 + 0.5).astype(np.uint16) if img.dtype == np.uint16 else out


def whole_image_resize(spec):
    """The whole-image resize of ``spec`` (``settings.InputSpec``: ``resize_to``, ``resize_mode``,
    ``resize_method``) as a function of one image, or None when off."""
    c = spec
    if not c.resize_to:
        return None
    return lambda img: resize_whole(img, c.resize_to, c.resize_mode, c.resize_method)


def _ensure_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img[..., :3]


def _cut(item, patch: int, rng: np.random.Generator, *, scale: int = 1,
         augment: bool = True) -> list[np.ndarray]:
    """Views of a random patch (and its aligned LR patch, for a paired item), flipped and rotated
    by ``rng``; nothing is copied yet."""
    if isinstance(item, tuple):
        hr, lr = (_ensure_rgb(a) for a in item)
        lp = patch // scale
        top = int(rng.integers(lr.shape[0] - lp + 1))
        left = int(rng.integers(lr.shape[1] - lp + 1))
        pair = [hr[top * scale:(top + lp) * scale, left * scale:(left + lp) * scale],
                lr[top:top + lp, left:left + lp]]
        return _augment(pair, rng) if augment else pair
    img = _ensure_rgb(item)
    h, w = img.shape[:2]
    if min(h, w) < patch:
        raise ValueError(f"image of {h}x{w} is smaller than the {patch}-pixel patch")
    top, left = int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
    crop = img[top:top + patch, left:left + patch]
    return _augment([crop], rng) if augment else [crop]


def sample_patch(item, patch: int, rng: np.random.Generator, *, scale: int = 1,
                 augment: bool = True):
    """A random patch: HxWx3 float32, or (HR patch, aligned LR patch) for a paired item."""
    views = _cut(item, patch, rng, scale=scale, augment=augment)
    floats = tuple(to_float(np.ascontiguousarray(v)) for v in views)
    return floats if isinstance(item, tuple) else floats[0]


def _to_float_into(view: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = to_float(view)``, bit for bit, without the temporaries."""
    if view.dtype == np.uint8:
        np.divide(view, np.float32(255.0), out=out)
    elif view.dtype == np.uint16:
        np.divide(view, np.float32(65535.0), out=out)
    else:
        out[...] = view


def term_batch(source, *, seed: int, step: int, term: int, batch: int, patch: int,
               scale: int = 1, augment: bool = True, rows: slice | None = None,
               resize=None) -> dict:
    """Term ``term``'s batch at ``step``: ``{'target': N x P x P x 3}`` (plus ``'input'`` for
    paired data). ``rows`` selects this process's share of the global batch (multi-host)."""
    rng = np.random.default_rng((seed, step, term))
    indices = rng.integers(0, len(source), size=batch)
    chosen = range(batch)[rows] if rows is not None else range(batch)
    load = (lambda i: resize(source[i])) if resize else source.__getitem__
    outs, paired = None, False
    for j, i in enumerate(chosen):
        item = load(indices[i])
        views = _cut(item, patch, np.random.default_rng((seed, step, term, i)), scale=scale,
                     augment=augment)
        if outs is None:  # written in place: no per-sample copies, no stacking
            outs, paired = [np.empty((len(chosen),) + v.shape, np.float32) for v in views], \
                isinstance(item, tuple)
        for view, out in zip(views, outs):
            _to_float_into(view, out[j])
    if paired:
        return {"target": outs[0], "input": outs[1]}
    return {"target": outs[0]}


def validation_crops(source, count: int, patch: int, *, scale: int = 1,
                     resize=None) -> dict:
    """``count`` fixed crops of ``patch`` (evenly spaced over the validation images)."""
    per_image = max(1, math.ceil(count / len(source)))
    targets, inputs = [], []
    for i in range(len(source)):
        item = resize(source[i]) if resize else source[i]
        hr = _ensure_rgb(item[0] if isinstance(item, tuple) else item)
        h, w = hr.shape[:2]
        if min(h, w) < patch:
            continue
        grid = math.ceil(math.sqrt(per_image))
        # One crop per image is the centre one (the reference loaders' CenterCrop); more are
        # spread from corner to corner.
        step = max(scale, 1)
        tops, lefts = ((np.linspace(0, n - patch, grid) if grid > 1
                        else np.array([(n - patch) / 2])).astype(int) // step * step
                       for n in (h, w))
        for j in range(per_image):
            top, left = int(tops[j // grid]), int(lefts[j % grid])
            targets.append(to_float(hr[top:top + patch, left:left + patch]))
            if isinstance(item, tuple):
                lr = _ensure_rgb(item[1])
                s, lp = scale, patch // scale
                inputs.append(to_float(lr[top // s:top // s + lp, left // s:left // s + lp]))
            if len(targets) == count:
                break
        if len(targets) == count:
            break
    if not targets:
        raise ValueError(f"no validation image is at least {patch} pixels on each side")
    out = {"target": np.stack(targets)}
    if inputs:
        out["input"] = np.stack(inputs)
    return out


class Prefetcher:
    """Builds the next steps' batches on a background thread while the device computes.

    ``make(step)`` must be a pure function of the step, so prefetching never changes results.
    """

    def __init__(self, make: Callable[[int], object], start: int, stop: int, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(make, start, stop), daemon=True)
        self._thread.start()

    def _run(self, make, start, stop):
        try:
            for step in range(start, stop):
                self._queue.put((step, make(step)))
        except BaseException as e:  # surfaced in the training thread by get()
            self._queue.put((None, e))

    def get(self):
        step, value = self._queue.get()
        if step is None:
            raise value
        return step, value
