"""Resizing between grids: restriction to coarse MGE levels, bilinear and MATLAB-exact bicubic.

Images are NHWC (a leading batch axis) unless a function says otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
