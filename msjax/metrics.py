"""PSNR and SSIM with the super-resolution literature's conventions (BasicSR / MATLAB).

Conventions, shared by the numpy evaluation functions and the jnp batched ones:

- Order: crop ``crop_border`` pixels from every edge, then (if ``y_channel``) convert RGB to Y,
  then compute in float (float64 in numpy, float32 inside JAX).
- Y is BT.601 studio swing, MATLAB ``rgb2ycbcr``: on the 0..255 scale
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, not rounded; channels are **RGB**.
  Grayscale input (HW or one channel) is used as it is.
- PSNR: ``10 log10(L^2 / MSE)`` with one MSE over all pixels and channels (not a mean of
  per-channel PSNRs); identical images give ``inf``.
- SSIM: per channel, then averaged; 11x11 Gaussian window, sigma 1.5, statistics over the valid
  region only (output (H-10) x (W-10)); ``c1 = (0.01 L)^2``, ``c2 = (0.03 L)^2``.
- The MGE SR training loss's SSIM (``ssim_zero_padded_batch``) is the official code's other
  convention: the same window and constants with L = 1, but zero padding 5, so the map keeps the
  image's H x W, border pixels see zeros (biased low), and patches smaller than the window (MGE's
  coarse levels) still have one; pixels 5 or more from every edge equal the valid map's.

The numpy functions take one HWC (or HW) image in the range ``[0, data_range]`` (uint8 or
float); the ``*_batch`` functions take NHWC float images in [0, 1] and return one value per image.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import dm_pix
import numpy as np

_Y_WEIGHTS = (65.481, 128.553, 24.966)  # per unit of 0..255 RGB, divided by 255 below
_WIN, _SIGMA = 11, 1.5


def rgb_to_y(img, data_range: float = 255.0) -> np.ndarray:
    """BT.601 studio-swing luma of an RGB HWC image, in float64, on the input's own scale.

    The input is taken on ``[0, data_range]``; Y is computed on 0..255 (range [16, 235]) and
    returned rescaled to ``data_range`` so PSNR / SSIM can keep the same peak value.
    """
    rgb = np.asarray(img, np.float64)
    if data_range != 255.0:
        rgb = rgb * (255.0 / data_range)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (_Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b) / 255.0
    return y if data_range == 255.0 else y * (data_range / 255.0)


def _prepare(a, b, crop_border: int, y_channel: bool, data_range: float):
    """crop -> Y -> float64, as the conventions say; returns HWC float64 arrays."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if crop_border:
        cb = crop_border
        a, b = a[cb:-cb, cb:-cb], b[cb:-cb, cb:-cb]
    if y_channel and a.shape[-1] == 3:
        return rgb_to_y(a, data_range)[..., None], rgb_to_y(b, data_range)[..., None]
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a, b, *, data_range: float = 255.0, crop_border: int = 0,
         y_channel: bool = False) -> float:
    """PSNR in dB of two HWC RGB (or HW gray) images; float64, conventions in the module doc."""
    a, b = _prepare(a, b, crop_border, y_channel, data_range)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _gauss1d() -> np.ndarray:
    t = np.arange(_WIN, dtype=np.float64) - (_WIN - 1) / 2
    g = np.exp(-(t * t) / (2 * _SIGMA**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """Valid-region Gaussian filter of an HW float64 plane.

    A separable filter written with sliding windows in numpy rather than scipy/cv2: the valid
    region needs no border mode, and the sum order is close enough to a direct 2-D convolution
    (agrees with the goldens to ~1e-15)."""
    g = _gauss1d()
    x = np.lib.stride_tricks.sliding_window_view(x, _WIN, axis=0) @ g  # (H-10, W)
    return np.lib.stride_tricks.sliding_window_view(x, _WIN, axis=1) @ g  # (H-10, W-10)


def _ssim_plane(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _filter_valid(x), _filter_valid(y)
    sxx = _filter_valid(x * x) - mx * mx
    syy = _filter_valid(y * y) - my * my
    sxy = _filter_valid(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def ssim(a, b, *, data_range: float = 255.0, crop_border: int = 0,
         y_channel: bool = False) -> float:
    """SSIM of two HWC RGB (or HW gray) images; float64, conventions in the module doc."""
    a, b = _prepare(a, b, crop_border, y_channel, data_range)
    if min(a.shape[:2]) < _WIN:
        raise ValueError(f"SSIM needs at least {_WIN}x{_WIN} pixels after cropping, got {a.shape}")
    return float(np.mean([_ssim_plane(a[..., c], b[..., c], data_range)
                          for c in range(a.shape[-1])]))


# --- JAX batched versions, for validation inside training (float32, images in [0, 1]) ---------


def _prepare_batch(x, y, crop_border: int, y_channel: bool):
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    if crop_border:
        cb = crop_border
        x, y = x[:, cb:-cb, cb:-cb], y[:, cb:-cb, cb:-cb]
    if y_channel and x.shape[-1] == 3:
        w = [c / 255.0 for c in _Y_WEIGHTS]

        def to_y(z):  # the 0..255 formula divided by 255; elementwise, so no TF32 matmul on GPU
            lum = 16.0 / 255.0 + w[0] * z[..., 0] + w[1] * z[..., 1] + w[2] * z[..., 2]
            return lum[..., None]

        x, y = to_y(x), to_y(y)
    return x, y


# Jitted at definition so eager validation calls compile once per shape instead of per op.
_jit = functools.partial(jax.jit, static_argnames=("crop_border", "y_channel"))


@_jit
def psnr_batch(x, y, *, crop_border: int = 0, y_channel: bool = False) -> jax.Array:
    """Per-image PSNR [N] of NHWC float images in [0, 1] (peak 1); jit-able, float32.

    ``dm_pix.psnr`` already uses one MSE over H, W and C per image, which is our convention."""
    x, y = _prepare_batch(x, y, crop_border, y_channel)
    return dm_pix.psnr(x, y)


@_jit
def ssim_batch(x, y, *, crop_border: int = 0, y_channel: bool = False) -> jax.Array:
    """Per-image SSIM [N] of NHWC float images in [0, 1]; jit-able, float32.

    ``dm_pix.ssim`` matches the convention (same 11x11 sigma-1.5 window, valid region, mean of
    the map over H, W and C, which equals the mean over channels of per-channel means). Its only
    difference, clamping variances to >= eps^2 and |cov| to sqrt(var var), touches only pixels
    where float32 rounding broke those bounds; on every golden pair and configuration it agrees
    with the float64 ``ssim`` to 4e-6 (PSNR to 2e-5 dB).
    """
    x, y = _prepare_batch(x, y, crop_border, y_channel)
    return dm_pix.ssim(x, y, max_val=1.0, filter_size=_WIN, filter_sigma=_SIGMA,
                       precision=jax.lax.Precision.HIGHEST)


# --- the official MGE SR loss's SSIM: zero padding, differentiable (float32, images in [0, 1]) ---


def _gaussian_zero_padded(z: jax.Array) -> jax.Array:
    """The 11x11 sigma-1.5 window over H and W of an NHWC batch, each channel on its own, with zero
    padding 5 (output H x W), as two 1-D passes: a separable window with zero padding is exactly
    the 2-D zero-padded convolution."""
    c, pad = z.shape[-1], _WIN // 2
    g = jnp.asarray(_gauss1d(), jnp.float32)
    for window, padding in (((_WIN, 1), ((pad, pad), (0, 0))), ((1, _WIN), ((0, 0), (pad, pad)))):
        z = jax.lax.conv_general_dilated(
            z, jnp.tile(g.reshape(*window, 1, 1), (1, 1, 1, c)), (1, 1), padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST)
    return z


def ssim_zero_padded_batch(x, y, *, return_map: bool = False) -> jax.Array:
    """Per-image SSIM [N] (or its NHWC map) with the official MGE loss's zero padding (module
    doc); differentiable, float32, peak 1, mean over H, W and C.

    ``dm_pix.ssim`` with this filter: its clamps of the variances (>= eps^2) and of |cov| only touch
    pixels where float32 rounding broke those bounds (a test pins it to a float64 transcription of
    the official formula)."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    return dm_pix.ssim(x, y, max_val=1.0, filter_fn=_gaussian_zero_padded, return_map=return_map)
