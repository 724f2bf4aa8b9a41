"""The sampler: which patches term k of step s draws, and how they are cut and oriented, written
once and applied with jax.numpy inside the compiled step (``sample_batch``, from the images on the
device) and with numpy on the host (``term_batch``, from decoded images).

A term's choices come from 4 x batch random 32-bit words drawn from ``term_key(seed_key, step,
term)``: word 0 picks the image, words 1 and 2 the window's top and left inside that image's own
(h, w), word 3 one of 8 flips / 90-degree rotations. The host draws the same words (on the CPU)
and applies the same functions to them, so both paths cut the same batches, bit for bit, and a
resumed run sees the batches of the uninterrupted one without any iterator state. ``augment``
(``AUGMENTS``) says how many of the 8 orientations word 3 picks from.

An item is one image (the target), a pair (HR target, LR input) or a dict of arrays by batch key
(``fields``). Every array of an item is cut at the same window: arrays on the LR grid
(``LR_GRID``) at LR coordinates, the others at HR coordinates; the window is chosen on the LR
grid when the item has an ``input``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import as_strided

from msjax.data.pipeline import _ensure_rgb

# fold_in constant that separates the sampling keys from the step's noise keys, which fold in
# the step itself (< 2**31 - 2), and from the validation key (2**31 - 1).
DATA_STREAM = 2**31 - 2
# Batch keys of arrays on the LR grid of a paired item (the others are on the HR grid).
LR_GRID = frozenset({"input", "teacher_input"})
# Host samples cut per vectorised choice: bounds the decoded images a raw source holds at once.
_CHUNK = 32
# data.augment -> how many orientations (``source_pixel``'s transform ids 0..n-1) a patch draws
# from: all 8 flips / 90-degree rotations, ids 0 and 1 (bit 0 alone mirrors the columns: a
# left-right flip, as torchvision's RandomHorizontalFlip), or the identity.
AUGMENTS = {True: 8, "hflip": 2, False: 1}


def orientations(augment) -> int:
    """The number of orientations ``augment`` draws from (``AUGMENTS``)."""
    for key, count in AUGMENTS.items():
        if augment is key or (isinstance(key, str) and augment == key):
            return count
    raise ValueError(f"data.augment={augment!r} is unknown; choose one of "
                     f"{', '.join(map(str, AUGMENTS))}")


# --- the choices (numpy or jax.numpy: ``xp``) ---------------------------------------------------

def term_key(seed_key: jax.Array, step, term) -> jax.Array:
    """The sampling key of term ``term`` at ``step`` (a traced step counter works)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(seed_key, DATA_STREAM),
                                                 step), term)


def draw_bits(key: jax.Array, batch: int) -> jax.Array:
    """The term's random words, (4, batch) uint32. One draw for all choices; a modulo's bias is
    at most its range / 2**32 (under 2.5e-4 for a million images or positions)."""
    return jax.random.bits(key, (4, batch), jnp.uint32)


def image_choice(bits, count: int):
    """Each sample's item index in a source of ``count`` items."""
    return (bits[0] % count).astype(np.int32)


def window_choice(bits, sizes, window: int, augment, xp):
    """(top, left, transform) of each sample's ``window``-pixel window inside its image's own
    ``sizes`` (B, 2) = (h, w), and its orientation id (``augment``: ``AUGMENTS``; 0 without
    augmentation)."""
    sizes = sizes.astype(np.uint32)
    top = (bits[1] % (sizes[:, 0] - window + 1)).astype(np.int32)
    left = (bits[2] % (sizes[:, 1] - window + 1)).astype(np.int32)
    count = orientations(augment)
    transform = ((bits[3] % count).astype(np.int32) if count > 1
                 else xp.zeros(bits.shape[1:], np.int32))
    return top, left, transform


def source_pixel(i, j, transform, size: int, xp):
    """The window pixel (r, c) that pixel (i, j) of a ``size``-pixel patch shows under
    ``transform``, one of 8 flips / 90-degree rotations: bit 2 transposes, bit 1 flips rows,
    bit 0 flips columns. Affine in (i, j) for each transform."""
    swap, flip_r, flip_c = (transform & 4) != 0, (transform & 2) != 0, (transform & 1) != 0
    r, c = xp.where(swap, j, i), xp.where(swap, i, j)
    return xp.where(flip_r, size - 1 - r, r), xp.where(flip_c, size - 1 - c, c)


def fields(item) -> dict:
    """An item's arrays by batch key."""
    if isinstance(item, dict):
        return item
    if isinstance(item, tuple):
        return {"target": item[0], "input": item[1]}
    return {"target": item}


def grids(keys, scale: int) -> tuple[str, dict]:
    """(the key whose grid windows are chosen on, each key's factor from that grid's
    coordinates to its own)."""
    if any(k in LR_GRID for k in keys) and "input" not in keys:
        raise ValueError(f"arrays {sorted(k for k in keys if k in LR_GRID)} are on the LR grid "
                         "but the item has no 'input' to choose windows on")
    lr = "input" in keys
    return ("input" if lr else "target"), {k: 1 if k in LR_GRID or not lr else scale
                                           for k in keys}


def _window(patch: int, factor: dict) -> int:
    """The window's side on the grid it is chosen on."""
    if patch % factor["target"]:
        raise ValueError(f"a {patch}-pixel patch is not a whole number of LR pixels at scale "
                         f"{factor['target']}")
    return patch // factor["target"]


def pixel_scale(dtype) -> float:
    """The value of white in ``dtype`` (images are float32 in [0, 1] inside the library)."""
    dtype = np.dtype(dtype)
    return {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(dtype, 1.0)


# --- on the device: one gather per array, inside the compiled step ------------------------------

def _gather(pixels, index, top, left, size: int, transform):
    """Patches (B, size, size, 3) of ``pixels[index]`` at (top, left) under ``transform``,
    read with one gather."""
    r, c = source_pixel(jnp.arange(size)[:, None], jnp.arange(size)[None, :],
                        transform[:, None, None], size, jnp)
    patches = pixels.at[index[:, None, None], top[:, None, None] + r,
                        left[:, None, None] + c].get(mode="promise_in_bounds")
    return patches.astype(jnp.float32) / pixel_scale(pixels.dtype)


def sample_batch(dataset, key: jax.Array, *, batch: int, patch: int, augment=True,
                 scale: int = 1, sharding=None) -> dict:
    """One term's batch from a ``device.DeviceImages``: ``{'target': float32 [batch, patch,
    patch, 3]}`` in [0, 1], plus every other array of its items cut at the same windows (the
    LR ``'input'`` of a paired dataset, ``patch // scale`` wide), drawn from ``key``.

    ``sharding`` (e.g. the mesh's batch sharding) makes each device cut only its own rows."""
    _, factor = grids(dataset.arrays, scale)
    window = _window(patch, factor)
    bits = draw_bits(key, batch)
    index = image_choice(bits, dataset.count)
    top, left, transform = window_choice(bits, dataset.sizes[index], window, augment, jnp)
    if sharding is not None:
        index, top, left, transform = (jax.lax.with_sharding_constraint(a, sharding)
                                       for a in (index, top, left, transform))
    out = {k: _gather(pixels, index, top * factor[k], left * factor[k], window * factor[k],
                      transform) for k, pixels in dataset.arrays.items()}
    if sharding is not None:
        out = {k: jax.lax.with_sharding_constraint(v, sharding) for k, v in out.items()}
    return out


def step_batches(dataset, seed_key: jax.Array, step, batch_sizes: Sequence[int], *, patch: int,
                 augment=True, scale: int = 1, sharding=None) -> tuple:
    """Every term's batch of one step (``batch_sizes`` finest first; one entry for a shared
    batch), equal to the host path's. ``sharding``: one for every term, or a function of the
    term's batch size."""
    return tuple(sample_batch(dataset, term_key(seed_key, step, k), batch=n, patch=patch,
                              augment=augment, scale=scale,
                              sharding=sharding(n) if callable(sharding) else sharding)
                 for k, n in enumerate(batch_sizes))


# --- on the host: the same words, drawn on the CPU; strided views of decoded images -------------

@functools.cache
def _cpu():
    """This process's CPU device: the host path draws its words there, never on an
    accelerator (None where jax runs without a CPU backend)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


@functools.lru_cache(maxsize=16)
def _seed_key(seed: int):
    with jax.default_device(_cpu()):
        return jax.device_put(jax.random.PRNGKey(seed), _cpu())


# Steps whose words one call draws on the host: a call's dispatch costs more than its draw.
_BLOCK = 16


@functools.partial(jax.jit, static_argnames="batch")
def _block_bits(seed_key, first_and_term, *, batch: int):
    steps = first_and_term[0] + jnp.arange(_BLOCK, dtype=jnp.int32)
    return jax.vmap(lambda step: draw_bits(term_key(seed_key, step, first_and_term[1]),
                                           batch))(steps)


@functools.lru_cache(maxsize=256)
def _host_block(seed: int, block: int, term: int, batch: int) -> np.ndarray:
    # Explicit transfers only, so that a transfer guard does not object.
    first_and_term = jax.device_put(np.array([block * _BLOCK, term], np.int32), _cpu())
    words = np.asarray(jax.device_get(_block_bits(_seed_key(seed), first_and_term,
                                                  batch=batch)))
    words.flags.writeable = False
    return words


def host_bits(seed: int, step: int, term: int, batch: int) -> np.ndarray:
    """``draw_bits`` of term ``term`` at ``step`` for ``PRNGKey(seed)``, computed on the CPU
    with those of the neighbouring steps."""
    return _host_block(int(seed), int(step) // _BLOCK, int(term), int(batch))[int(step) % _BLOCK]


# The neighbours of output pixel (0, 0) that give a transform's affine map its two steps.
_CORNERS = (np.array([0, 1, 0]), np.array([0, 0, 1]))


def _oriented(image: np.ndarray, top: int, left: int, size: int, r, c) -> np.ndarray:
    """``image[top + r, left + c]`` over a ``size`` patch as a strided view: ``r``, ``c`` are
    ``source_pixel`` at output pixels (0, 0), (1, 0), (0, 1), and the map is affine."""
    sr, sc = image.strides[:2]
    down = int((r[1] - r[0]) * sr + (c[1] - c[0]) * sc)       # one output row further
    right = int((r[2] - r[0]) * sr + (c[2] - c[0]) * sc)      # one output column further
    start = image[top + int(r[0]):, left + int(c[0]):]
    return as_strided(start, (size, size) + image.shape[2:], (down, right) + image.strides[2:],
                      writeable=False)


def _to_float_into(view: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = view / white`` as the step computes it, without temporaries: XLA turns a
    division by a constant into a product with its float32 reciprocal."""
    if view.dtype in (np.uint8, np.uint16):
        np.multiply(view, np.float32(1.0) / np.float32(pixel_scale(view.dtype)), out=out)
    else:
        out[...] = view


def term_batch(source, *, seed: int, step: int, term: int, batch: int, patch: int,
               scale: int = 1, augment=True, rows: slice | None = None,
               resize=None) -> dict:
    """Term ``term``'s batch at ``step`` from the images of ``source``: ``{'target': N x P x P x
    3}`` float32 plus every other array of the items (``'input'`` for paired data), equal to
    ``sample_batch``'s for ``term_key(PRNGKey(seed), step, term)`` where the source's images
    are all uint8 or all uint16 (the device stores others as uint16). ``rows`` selects this
    process's share of the global batch (multi-host). ``resize`` applies to items that are one
    image (the arrays of pairs and dicts are used as they are)."""
    bits = host_bits(seed, step, term, batch)
    if rows is not None:
        bits = bits[:, rows]
    index = image_choice(bits, len(source))
    outs = {}
    for start in range(0, len(index), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        items = []
        for i in index[chunk]:
            item = source[int(i)]
            items.append(fields(resize(item) if resize is not None
                                and not isinstance(item, (tuple, dict)) else item))
        grid, factor = grids(items[0], scale)
        window = _window(patch, factor)
        sizes = np.array([f[grid].shape[:2] for f in items])
        if sizes.min() < window:
            h, w = sizes[np.argmin(sizes.min(1))]
            raise ValueError(f"image of {h}x{w} is smaller than the {window}-pixel window "
                             f"({patch}-pixel patch)")
        top, left, transform = window_choice(bits[:, chunk], sizes, window, augment, np)
        for key, f in factor.items():
            size = window * f
            r, c = source_pixel(*_CORNERS, transform[:, None], size, np)
            if key not in outs:  # written in place: no per-sample copies, no stacking
                outs[key] = np.empty((len(index), size, size, 3), np.float32)
            for j, item in enumerate(items):
                view = _oriented(_ensure_rgb(item[key]), int(top[j]) * f, int(left[j]) * f,
                                 size, r[j], c[j])
                _to_float_into(view, outs[key][start + j])
    return outs
