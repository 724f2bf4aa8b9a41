"""Training images held on the device, and each step's patches cut inside the compiled step.

All images of a source are decoded once (after ``data.resize_to``), zero-padded into one array
(N, Hmax, Wmax, 3) of uint8 (uint16 where a source has deeper images) per array of an item (the
target; a paired source's LR input; arrays aligned with them, such as a teacher's), with each
item's own (h, w), and replicated over the mesh. The sampler (``sampler.sample_batch``) then
draws image indices, crop positions inside each image's own (h, w), flips and 90-degree
rotations from a key, and gathers the patches in one indexed read per array: nothing crosses
from host to device per step. The key of term k at step s is ``term_key(seed_key, s, k)``, so
batches are a pure function of (seed, step, term), equal to the host path's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os

import flax.struct
import jax
import numpy as np

# The device path's sampler, under the names its users call it by.
from msjax.data.sampler import (LR_GRID, fields, grids, sample_batch,  # noqa: F401
                                step_batches, term_key)
from msjax.errors import ConfigError, DataError

# A CPU reports no memory limit; its device path is capped at this many bytes.
CPU_DEVICE_BYTES = 2 * 2**30


@flax.struct.dataclass
class DeviceImages:
    """A decoded dataset on the device (see the module doc): each array of the items under its
    batch key, and each item's (h, w) on the grid its windows are chosen on (a paired source's
    LR grid)."""

    arrays: dict          # batch key -> (N, Hmax, Wmax, 3) uint8 | uint16, zero padding
    sizes: jax.Array      # (N, 2) int32

    @property
    def pixels(self) -> jax.Array:
        return self.arrays["target"]

    @property
    def count(self) -> int:
        return int(self.sizes.shape[0])


# --- sizing and the on-device decision ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Footprint:
    """What a source's decoded, padded dataset holds, estimated before decoding."""

    count: int
    height: int          # the padded array's (largest) height and width
    width: int
    uniform: bool        # every image has that size
    itemsize: int        # 1 (uint8) or 2 (uint16)
    lr_bytes: int = 0
    aligned_bytes: int = 0   # arrays aligned with the images (e.g. a teacher's)

    @property
    def image_bytes(self) -> int:
        return self.count * self.height * self.width * 3 * self.itemsize

    @property
    def bytes(self) -> int:
        return self.image_bytes + self.lr_bytes + self.aligned_bytes

    def describe(self) -> str:
        size = f"{self.height}x{self.width}" if self.uniform else \
            f"up to {self.height}x{self.width}"
        amount = (f"{self.bytes / 1e9:.1f} GB" if self.bytes >= 1e9 else
                  f"{self.bytes / 1e6:.0f} MB")
        aligned = " with aligned arrays" if self.aligned_bytes else ""
        return (f"{self.count} images {size}{aligned}, {amount} "
                f"{'uint8' if self.itemsize == 1 else 'uint16'}")


def _resized_shape(h: int, w: int, resize_to: int, resize_mode: str) -> tuple[int, int]:
    if not resize_to:
        return h, w
    if resize_mode == "short_side":
        return round(h * resize_to / min(h, w)), round(w * resize_to / min(h, w))
    return resize_to, resize_to


def _image_shapes(source, sample: int = 16) -> tuple[list, bool]:
    """(h, w, itemsize) per image, from headers or array shapes where the source allows it, else
    of ``sample`` decoded images (then the second value is False: an estimate)."""
    from msjax.data.folders import FolderSource, image_size
    from msjax.data.sources import ArraySource, TfdsImages

    if hasattr(source, "image_shapes"):  # sources that know their sizes without decoding
        return source.image_shapes(), True
    if isinstance(source, ArraySource):
        return [(a.shape[0], a.shape[1], 1 if a.dtype == np.uint8 else 2)
                for a in source.images], True
    if isinstance(source, FolderSource):
        return [image_size(f) for f in source.files], True
    if isinstance(source, TfdsImages):
        info = getattr(source.records, "dataset_info", None)
        features = None if info is None else info.features
        key = next((k for k in ("image", "hr") if features is not None and k in features), None)
        feature = None if key is None else features[key]
        shape = getattr(feature, "shape", None)
        if shape is not None and None not in shape[:2]:
            itemsize = np.dtype(getattr(feature, "np_dtype", np.uint8)).itemsize
            return [(shape[0], shape[1], itemsize)] * len(source), True
    if not sample:
        return [], False
    picks = np.linspace(0, len(source) - 1, min(sample, len(source))).astype(int)
    shapes = []
    for i in picks:
        item = source[int(i)]
        a = item[0] if isinstance(item, tuple) else item
        shapes.append((a.shape[0], a.shape[1], 1 if a.dtype == np.uint8 else 2))
    return shapes * math.ceil(len(source) / len(shapes)), False


def estimate(source, *, resize_to: int = 0, resize_mode: str = "square",
             sample: bool = True) -> Footprint | None:
    """The decoded dataset's footprint, before decoding where the source tells image sizes;
    otherwise from a sample of decoded images, or None when ``sample`` is False. An aligned
    array counts as its grid's image (``sources.AlignedSource``)."""
    from msjax.data.folders import PairedSource
    from msjax.data.sources import AlignedSource

    if isinstance(source, AlignedSource):
        base = estimate(source.base, resize_to=resize_to, resize_mode=resize_mode, sample=sample)
        if base is None:
            return None
        more = sum(base.lr_bytes if k in LR_GRID else base.image_bytes for k in source.keys)
        return dataclasses.replace(base, aligned_bytes=base.aligned_bytes + more)
    hr = source.hr if isinstance(source, PairedSource) else source
    shapes, exact = _image_shapes(hr, sample=16 if sample else 0)
    if not exact and not sample:
        return None
    shapes = shapes[:len(hr)]
    sized = [_resized_shape(h, w, resize_to, resize_mode) for h, w, _ in shapes]
    height, width = max(s[0] for s in sized), max(s[1] for s in sized)
    itemsize = max(1 if s[2] == 1 else 2 for s in shapes)
    lr_bytes, lr = 0, None
    if hasattr(source, "lr_shapes"):
        lr = source.lr_shapes()
    elif isinstance(source, PairedSource):
        from msjax.data.folders import image_size

        lr = [image_size(p) for p in source.lr]
    if lr:
        lr_bytes = (len(lr) * max(s[0] for s in lr) * max(s[1] for s in lr) * 3
                    * max(1 if s[2] == 1 else 2 for s in lr))
    return Footprint(len(hr), height, width, len(set(sized)) == 1, itemsize, lr_bytes)


def device_budget(device, fraction: float) -> tuple[float, str]:
    """Bytes the device path may use on ``device``, and how that was set."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not implement it
        pass
    if stats and stats.get("bytes_limit"):
        limit = float(stats["bytes_limit"])
        return fraction * limit, f"{fraction:.0%} of one device's {limit / 1e9:.1f} GB"
    return float(CPU_DEVICE_BYTES), (f"the {CPU_DEVICE_BYTES / 2**30:.0f} GiB cap for a "
                                     f"{device.platform} device, which reports no memory limit")


def parse_on_device(value) -> str:
    """data.on_device as "auto" | "true" | "false" (bools and on/off accepted), or ConfigError."""
    text = str(value).strip().lower()
    mapped = {"auto": "auto", "true": "true", "1": "true", "on": "true", "yes": "true",
              "false": "false", "0": "false", "off": "false", "no": "false"}.get(text)
    if mapped is None:
        raise ConfigError(f"data.on_device must be auto, true or false, not {value!r}")
    return mapped


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the training images live: ``on_device``, and the run's start banner line."""

    on_device: bool
    line: str
    footprint: Footprint | None = None


def choose(spec, source, mesh, *, host_corrupt: bool = False) -> Placement:
    """``data.on_device``: auto puts the decoded dataset on the device when it fits in
    ``data.device_fraction`` of one device's memory (a CPU: ``CPU_DEVICE_BYTES``)."""
    c = spec
    setting = parse_on_device(c.on_device)
    host = (f"input: host workers, {c.host_workers or os.cpu_count()} threads, "
            f"{c.host_cache_gib:g} GiB image cache")
    if setting == "false":
        return Placement(False, f"{host} (data.on_device=false)")
    if host_corrupt:
        if setting == "true":
            raise ConfigError("data.on_device=true: this task corrupts its images on the host "
                              "(e.g. JPEG), so its batches cannot be cut on the device; set "
                              "--config.data.on_device=auto or false")
        return Placement(False, f"{host} (the task corrupts images on the host)")
    footprint = estimate(source, resize_to=c.resize_to, resize_mode=c.resize_mode)
    budget, budget_text = device_budget(mesh.devices.flat[0], c.device_fraction)
    if setting == "true" or footprint.bytes <= budget:
        why = "data.on_device=true" if setting == "true" and footprint.bytes > budget else \
            f"fits in {budget_text}"
        return Placement(True, f"input: on device, {footprint.describe()} replicated ({why})",
                         footprint)
    return Placement(False, f"{host}, {footprint.describe()} decoded: more than {budget_text}",
                     footprint)


# --- loading ------------------------------------------------------------------------------------

def _as_stored(img: np.ndarray, dtype) -> np.ndarray:
    from msjax.data.pipeline import _ensure_rgb, to_float

    img = _ensure_rgb(np.asarray(img))
    if img.dtype == dtype:
        return img
    if dtype == np.uint16 and img.dtype == np.uint8:
        return img.astype(np.uint16) * 257
    return (np.clip(to_float(img), 0, 1) * np.iinfo(dtype).max + 0.5).astype(dtype)


def _pad_stack(images: list, dtype) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.array([im.shape[:2] for im in images], np.int32)
    pixels = np.zeros((len(images), *sizes.max(0), 3), dtype)
    for i, im in enumerate(images):
        pixels[i, :im.shape[0], :im.shape[1]] = _as_stored(im, dtype)
    return pixels, sizes


def decode_all(source, *, resize=None, workers: int = 0) -> list:
    """Every item of ``source`` decoded (and resized), in order, on a thread pool (Pillow and
    ArrayRecord release the GIL while decoding)."""
    def load(i):
        item = source[i]  # pairs and dicts are used as they are, as the host path does
        return item if resize is None or isinstance(item, (tuple, dict)) else resize(item)

    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(load, range(len(source)), chunksize=64))


def load(source, mesh, *, patch: int, resize=None, scale: int = 1,
         workers: int = 0) -> DeviceImages:
    """The whole source decoded once, padded, and replicated over ``mesh``. Images smaller than
    ``patch``, and arrays that do not cover their item's window grid, are refused here: the
    sampler's crop positions assume they fit."""
    from msjax import parallel

    items = [fields(it) for it in decode_all(source, resize=resize, workers=workers)]
    hr = [it["target"] for it in items]
    small = [i for i, im in enumerate(hr) if min(im.shape[:2]) < patch]
    if small:
        raise DataError(f"{len(small)} training images are smaller than the {patch}-pixel patch "
                        f"(the first: item {small[0]}, {hr[small[0]].shape[0]}x"
                        f"{hr[small[0]].shape[1]}); lower data.patch or drop them")
    grid, factor = grids(items[0], scale)
    arrays, sizes = {}, {}
    for key in items[0]:
        images = [it[key] for it in items]
        deep = any(im.dtype != np.uint8 for im in images)
        arrays[key], sizes[key] = _pad_stack(images, np.uint16 if deep else np.uint8)
    for key, f in factor.items():
        if key != grid and np.any(sizes[grid] * f > sizes[key]):
            raise DataError(
                f"an LR image is larger than its HR partner / {scale}; paired folders need "
                "LR = HR / scale" if key == "target" else
                f"an aligned {key!r} array is smaller than its item's "
                f"{'LR' if key in LR_GRID else 'HR'} image")
    return DeviceImages(**parallel.put_replicated({"arrays": arrays, "sizes": sizes[grid]},
                                                  mesh))
