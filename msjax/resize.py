"""Resizing between grids: restriction to coarse MGE levels, bilinear and MATLAB-exact bicubic.

Images are NHWC (a leading batch axis) unless a function says otherwise.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

RESTRICTIONS = ("area", "nearest", "bilinear")


def restrict(x: jax.Array, levels: int = 1, method: str = "area") -> jax.Array:
    """Restricts a batch from the fine grid to ``levels`` grids coarser (each halves H and W).

    ``area`` is the exact mean of each 2^l x 2^l block (average pooling), ``nearest`` keeps the
    even-indexed pixels as the official code's ``F.interpolate(nearest)`` does, and ``bilinear``
    is an antialiased (triangle-filter) resize.
    """
    if levels == 0:
        return x
    f = 2**levels
    n, h, w, c = x.shape
    if h % f or w % f:
        raise ValueError(
            f"cannot restrict a {h}x{w} image by {levels} levels: H and W must divide by {f}")
    if method == "area":
        return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))
    if method == "nearest":
        return x[:, ::f, ::f, :]
    if method == "bilinear":
        return jax.image.resize(x, (n, h // f, w // f, c), "bilinear", antialias=True)
    raise ValueError(f"unknown restriction {method!r}; choose one of {', '.join(RESTRICTIONS)}")


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize with half-pixel centres (PyTorch ``align_corners=False``), no antialias
    on upscaling: the official SR code's ``bilinear_x2``."""
    n, _, _, c = x.shape
    return jax.image.resize(x, (n, height, width, c), "bilinear", antialias=False)


# --- MATLAB-exact bicubic imresize -----------------------------------------------------------
#
# Same algorithm as MATLAB's imresize(x, scale, 'bicubic') with antialiasing (the convention
# BasicSR's reference LR images use), restated from the published description. The weights are a
# dense (out, in) matrix per axis so the resize is two matrix products: exact, jit-able, and fast
# for the image sizes SR uses.


def _cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (support [-2, 2])."""
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (1.5 * t3 - 2.5 * t2 + 1.0) * (t <= 1)
    far = (-0.5 * t3 + 2.5 * t2 - 4.0 * t + 2.0) * ((t > 1) & (t <= 2))
    return near + far


def _out_size(n: int, scale: float) -> int:
    """ceil(scale*n), except that a product within 1e-9 of an integer counts as that integer.

    The golden shapes are plain ceil(scale*n); the guard only changes products like 30*0.1 =
    3.0000000000000004, where ceil would add a spurious row."""
    s = scale * n
    r = round(s)
    return int(r) if abs(s - r) < 1e-9 else math.ceil(s)


@functools.lru_cache(maxsize=256)
def _weights(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """Dense float64 (out_size, in_size) resampling matrix; each row sums to 1. Read-only."""
    width = 4.0
    kernel = _cubic
    if scale < 1:  # antialias: stretch the kernel by 1/scale, scale its height to keep the area
        width = 4.0 / scale
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
    x = np.arange(1, out_size + 1, dtype=np.float64)  # 1-based output coordinates, as MATLAB
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # matching 1-based input coordinate
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based, may fall outside [1, in_size]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # Half-sample symmetric mirror [1..n, n..1] repeated with period 2n: unlike padding by
    # reflection once, this stays valid when the kernel is wider than the image (2x2 at 1/2).
    period = np.concatenate([np.arange(in_size), np.arange(in_size)[::-1]])
    src = period[np.mod(idx.astype(np.int64) - 1, 2 * in_size)]
    mat = np.zeros((out_size, in_size), np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_size), taps), src.ravel()), w.ravel())
    mat.setflags(write=False)
    return mat


def imresize(x, scale: float):
    """MATLAB ``imresize(x, scale)`` (bicubic, antialiased on downscale) of an HWC or NHWC image.

    Output is ``ceil(scale*H) x ceil(scale*W)``, H resized first, then W, borders mirrored
    half-sample symmetrically; no clipping, no rounding (values leave [0, 1] near edges).
    A numpy float64 input is resized in numpy float64 (matches MATLAB to ~1e-15); anything else
    (jax arrays, tracers, other numpy dtypes, cast not rescaled) in jnp float32 with the float64
    weights rounded once, so it is jit-able and returns float32.
    """
    scale = float(scale)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if x.ndim not in (3, 4):
        raise ValueError(f"imresize expects HWC or NHWC, got shape {x.shape}")
    h, w = x.shape[-3], x.shape[-2]
    wh = _weights(h, _out_size(h, scale), scale)
    ww = _weights(w, _out_size(w, scale), scale)
    if isinstance(x, np.ndarray) and x.dtype == np.float64:
        y = np.einsum("oh,...hwc->...owc", wh, x)
        return np.einsum("pw,...owc->...opc", ww, y)
    return _apply_f32(jnp.asarray(wh, jnp.float32), jnp.asarray(ww, jnp.float32),
                      jnp.asarray(x, jnp.float32))


@jax.jit
def _apply_f32(wh, ww, x):
    # One compiled program per shape for eager calls (inlined under an outer jit). HIGHEST keeps
    # the products in true float32 on GPUs/TPUs (no TF32 / bf16 passes).
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,...hwc->...owc", wh, x, precision=hi)
    return jnp.einsum("pw,...owc->...opc", ww, y, precision=hi)


def bicubic_downsample(x, factor: int):
    """The SR literature's LR image: MATLAB bicubic ``imresize(x, 1/factor)``."""
    return imresize(x, 1.0 / factor)


def bicubic_upsample(x, factor: float):
    """MATLAB bicubic ``imresize(x, factor)`` (the classic bicubic SR baseline)."""
    return imresize(x, float(factor))
