"""Forward operators A(x) and the corruptions built on them: pure JAX functions on NHWC batches.

Images are float32 in [0, 1]. Each corruption returns the corrupted batch ``y`` and the per-sample
time ``t`` fed to time-conditioned models (``None`` where the task has none). FFTs always run in
float32: ``jnp.fft`` rejects bfloat16 and the blur must not lose precision under bf16 compute.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from msjax import resize


# --- deblurring: circular convolution with a Gaussian PSF -------------------------------------

def _circular_offsets(n: int) -> jax.Array:
    """Signed distance of each index from index 0 on a ring of n pixels (0, 1, .., -2, -1)."""
    i = jnp.arange(n, dtype=jnp.float32)
    return jnp.where(i <= n // 2, i, i - n)


def gaussian_psf(height: int, width: int, sigma=(3.0, 3.0)) -> jax.Array:
    """The Gaussian point-spread function on the full H x W grid, peak at (0, 0), summing to 1.

    Built at the image's own size (the official code only works at 128 x 128), untruncated: the
    blur is periodic, like the official ``blurFFT``. ``sigma`` is (along H, along W) in pixels.
    """
    sy, sx = sigma
    dy = _circular_offsets(height)[:, None]
    dx = _circular_offsets(width)[None, :]
    psf = jnp.exp(-(dy**2) / (2 * sy**2) - dx**2 / (2 * sx**2))
    return psf / psf.sum()


def psf_support(sigma) -> int:
    """Side in pixels of the square holding a Gaussian PSF to 3 sigma along its wider axis (19 for
    sigma 3): a grid smaller than this sees mostly the blur's wrap-around, not an image."""
    return 2 * math.ceil(3 * max(sigma)) + 1


def _transfer(height: int, width: int, sigma) -> jax.Array:
    return jnp.fft.rfft2(gaussian_psf(height, width, sigma))[None, :, :, None]


def _convolve(x: jax.Array, transfer: jax.Array) -> jax.Array:
    h, w = x.shape[1:3]
    spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2))
    return jnp.fft.irfft2(spectrum * transfer, s=(h, w), axes=(1, 2))


def blur(x: jax.Array, sigma=(3.0, 3.0)) -> jax.Array:
    """A x: circular Gaussian blur of an NHWC batch, computed by FFT in float32."""
    return _convolve(x, _transfer(x.shape[1], x.shape[2], sigma)).astype(x.dtype)


def blur_adjoint(x: jax.Array, sigma=(3.0, 3.0)) -> jax.Array:
    """A^T x: correlation with the PSF (the conjugate transfer function)."""
    return _convolve(x, jnp.conj(_transfer(x.shape[1], x.shape[2], sigma))).astype(x.dtype)


# --- inpainting: random boxes ------------------------------------------------------------------

def box_masks(key: jax.Array, n: int, height: int, width: int, *, count=(1, 4),
              size=(0.1, 0.3)) -> jax.Array:
    """Random keep-masks of shape [N, H, W, 1]: 1 where the pixel is kept, 0 inside the boxes.

    Each image gets between ``count[0]`` and ``count[1]`` boxes (inclusive); each box side is a
    fraction of the image side drawn from ``size``. Box counts vary per image with a fixed-shape
    computation (unused boxes are switched off), so this stays jit-able.
    """
    lo, hi = count
    k_count, k_size, k_pos = jax.random.split(key, 3)
    n_boxes = jax.random.randint(k_count, (n, 1), lo, hi + 1)
    sides = jax.random.uniform(k_size, (n, hi, 2), minval=size[0], maxval=size[1])
    sides = sides * jnp.array([height, width], jnp.float32)
    corner = jax.random.uniform(k_pos, (n, hi, 2)) * (jnp.array([height, width]) - sides)
    ys = jnp.arange(height, dtype=jnp.float32)[None, None, :, None]
    xs = jnp.arange(width, dtype=jnp.float32)[None, None, None, :]
    inside = ((ys >= corner[..., 0, None, None]) & (ys < (corner + sides)[..., 0, None, None])
              & (xs >= corner[..., 1, None, None]) & (xs < (corner + sides)[..., 1, None, None]))
    active = (jnp.arange(hi)[None, :] < n_boxes)[..., None, None]
    holes = jnp.any(inside & active, axis=1)
    return (~holes).astype(jnp.float32)[..., None]


# --- corruptions as used in training -------------------------------------------------------------

def _per_sample(t: jax.Array) -> jax.Array:
    return t[:, None, None, None]


def denoise_interpolation(x, key):
    """Official denoising: t ~ U(0,1), y = t x + (1-t) z (t -> 0 is pure noise)."""
    k_t, k_z = jax.random.split(key)
    t = jax.random.uniform(k_t, (x.shape[0],))
    z = jax.random.normal(k_z, x.shape, x.dtype)
    return _per_sample(t) * x + (1 - _per_sample(t)) * z, t


def denoise_gaussian(x, key, *, sigma: float = 25.0):
    """Fixed-level additive Gaussian noise, sigma on the 0-255 scale as in the literature."""
    z = jax.random.normal(key, x.shape, x.dtype)
    return x + (sigma / 255.0) * z, jnp.full((x.shape[0],), sigma / 255.0)


def _noisy_mix(clean_corrupt, key, t_max):
    """Official: t ~ t_max U(0,1), y = (1-t) clean_corrupt + t z."""
    k_t, k_z = jax.random.split(key)
    t = t_max * jax.random.uniform(k_t, (clean_corrupt.shape[0],))
    z = jax.random.normal(k_z, clean_corrupt.shape, clean_corrupt.dtype)
    return (1 - _per_sample(t)) * clean_corrupt + _per_sample(t) * z, t


def deblur(x, key, *, sigma=(3.0, 3.0), t_max: float = 0.1):
    """Official deblurring: y = (1-t) A x + t z with t ~ 0.1 U(0,1)."""
    return _noisy_mix(blur(x, sigma), key, t_max)


def inpaint(x, key, *, count=(1, 4), size=(0.1, 0.3), t_max: float = 0.1):
    """Boxes filled with uniform noise, then the official light noise mix (the official code has
    no mask at all; that is a defect we do not copy)."""
    k_mask, k_fill, k_mix = jax.random.split(key, 3)
    keep = box_masks(k_mask, x.shape[0], x.shape[1], x.shape[2], count=count, size=size)
    fill = jax.random.uniform(k_fill, x.shape, x.dtype)
    return _noisy_mix(keep * x + (1 - keep) * fill, k_mix, t_max)


def downsample(x, key, *, scale: int = 2, kernel: str = "bicubic"):
    """Super-resolution degradation: the LR image (no time). ``bicubic`` is MATLAB's imresize."""
    del key
    if kernel == "bicubic":
        return resize.imresize(x, 1.0 / scale), None
    if kernel == "bilinear":
        h, w = x.shape[1] // scale, x.shape[2] // scale
        return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=True), None
    raise ValueError(f"unknown SR kernel {kernel!r}; choose bicubic or bilinear")
