"""Images from sources as the batches take them: float conversion, whole-image resizing, fixed
validation crops. The random training patches are the sampler's (``sampler``)."""

from __future__ import annotations

import logging
import math

import numpy as np

from msjax.errors import DataError

log = logging.getLogger(__name__)


def to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32)


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


def validation_crops(source, count: int, patch: int, *, scale: int = 1,
                     resize=None) -> dict:
    """``count`` fixed crops of ``patch`` (evenly spaced over the validation images). A split
    with fewer images than ``count`` gives each image several crops, distinct windows only (an
    image the size of the patch gives one), and says so where that cuts fewer than ``count``."""
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
        windows = list(dict.fromkeys((int(tops[j // grid]), int(lefts[j % grid]))
                                     for j in range(per_image)))
        for top, left in windows:
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
        raise DataError(f"no validation image is at least {patch} pixels on each side; lower "
                        "data.valid_patch (0: data.patch) or data.patch to fit the images, or "
                        "validate on larger ones (data.valid_dir)")
    if len(targets) < count:  # asked for more crops than distinct windows: say what it cut
        log.warning("validation: the split has %d images, fewer than data.valid_images=%d; "
                    "using %d crops of them (up to %d distinct windows each)",
                    len(source), count, len(targets), per_image)
    out = {"target": np.stack(targets)}
    if inputs:
        out["input"] = np.stack(inputs)
    return out
