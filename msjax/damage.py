"""Damage suite of the pyramidal autoencoders: what the model learns to undo.

Every damage maps a batch of NHWC float images in [0, 1] and a PRNG key to damaged images of the
same shape and range, and is a pure function of (images, key). All but ``jpeg`` are jit-able jax;
``jpeg`` runs on the host (numpy + Pillow) and ignores the key. Random damages draw independently
per image from ``jax.random.split(key, N)``.

Defaults are the reference's (abel-bernabeu/autoencoder, CelebA 64x64 crops). Geometric layouts are
given on that 64x64 crop; on other sizes they are scaled by min(H, W) / 64 and centred, which
reproduces the reference's own 128x128 numbers (block 64 px at 32 +- 2). As in the reference, a
square of ``size`` at (x, y) covers x..x+size inclusive (cv2.rectangle), i.e. size + 1 pixels.

``validation_damage`` gives the fixed validation form. Like the reference, forms with several
fixed layouts (noise fields, square layouts) pick one per image from its top-left pixel colour, so
an image's damage does not depend on its position in the batch.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

DAMAGES = ("noise", "pixelate", "block", "squares", "grid", "blur", "jpeg")
MAGENTA = (1.0, 0.0, 1.0)
REFERENCE_SIDE = 64  # crop size the reference's layouts are written for
# The reference's four fixed validation layouts for 'squares', as (size, x, y) on a 64 crop.
SQUARES_VALIDATION_LAYOUTS = (
    ((5, 9, 17), (12, 39, 20), (9, 48, 42), (7, 18, 52)),
    ((5, 49, 42), (12, 12, 31), (9, 7, 13), (7, 39, 6)),
    ((5, 49, 17), (12, 12, 20), (9, 7, 42), (7, 39, 52)),
    ((5, 9, 52), (12, 39, 31), (9, 48, 13), (7, 18, 6)),
)


# ---------------------------------------------------------------- helpers


def _per_image(fn, images, key):
    """Applies fn(image, key) to each image with its own key."""
    return jax.vmap(fn)(images, jax.random.split(key, images.shape[0]))


def _pick_by_corner(images, count):
    """Index in [0, count) from the top-left pixel's summed 0-255 colour (reference get_item)."""
    channels = images.shape[-1]
    total = jnp.sum(jnp.round(images[:, 0, 0, :] * 255), axis=-1).astype(jnp.int32)
    return total * count // (255 * channels + 1)


def _scale_and_offset(height, width):
    """Maps the reference 64x64 crop onto a centred min(H, W) square of this image."""
    scale = min(height, width) / REFERENCE_SIDE
    return scale, (width - REFERENCE_SIDE * scale) / 2, (height - REFERENCE_SIDE * scale) / 2


def _square_mask(height, width, sizes, xs, ys):
    """Union of inclusive squares [x, x+size] x [y, y+size]; sizes, xs, ys are int arrays [K]."""
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    inside = ((rows >= ys[:, None, None]) & (rows <= (ys + sizes)[:, None, None])
              & (cols >= xs[:, None, None]) & (cols <= (xs + sizes)[:, None, None]))
    return jnp.any(inside, axis=0)


def _paint(image, mask, color):
    channels = image.shape[-1]
    if np.size(color) not in (1, channels):
        raise ValueError(f"fill color {color} does not fit {channels} channels; pass color=")
    fill = jnp.broadcast_to(jnp.asarray(color, image.dtype), (channels,))
    return jnp.where(mask[..., None], fill, image)


def _layout_to_image(layout, height, width):
    """(size, x, y) rows given on the reference crop -> integer pixel arrays for this image."""
    scale, dx, dy = _scale_and_offset(height, width)
    layout = np.asarray(layout, np.float64)
    sizes = np.round(layout[..., 0] * scale).astype(np.int32)
    xs = np.round(layout[..., 1] * scale + dx).astype(np.int32)
    ys = np.round(layout[..., 2] * scale + dy).astype(np.int32)
    return jnp.asarray(sizes), jnp.asarray(xs), jnp.asarray(ys)


def _jittered_layout(images, key, layout, jitter, color):
    """Paints a fixed layout shifted per image by (+-jitter, +-jitter) reference pixels."""
    _, height, width, _ = images.shape
    sizes, xs, ys = _layout_to_image(layout, height, width)
    step = int(round(jitter * _scale_and_offset(height, width)[0]))

    def one(image, key):
        sign_x, sign_y = jax.random.choice(key, jnp.array([-1, 1]), (2,))
        return _paint(image, _square_mask(height, width, sizes, xs + sign_x * step,
                                          ys + sign_y * step), color)

    return _per_image(one, images, key)


# ---------------------------------------------------------------- damages


def noise(images, key, sigma=125 / 255):
    """Additive Gaussian noise, std 125 on the 0-255 scale (massive), clipped to [0, 1]."""
    return jnp.clip(images + sigma * jax.random.normal(key, images.shape, images.dtype), 0, 1)


def fixed_noise(images, seed=0, sigma=125 / 255, fields=3):
    """Validation noise: one of ``fields`` fixed noise fields per image (chosen by its colour)."""
    shape = (fields, *images.shape[1:])
    noise_fields = sigma * jax.random.normal(jax.random.PRNGKey(seed), shape, images.dtype)
    return jnp.clip(images + noise_fields[_pick_by_corner(images, fields)], 0, 1)


def pixelate(images, key=None, factor=8):
    """Averages factor x factor blocks, then repeats each average (an x8 super-resolution input).

    The reference downscales bicubically; a block average is the exact area downscale.
    """
    n, height, width, channels = images.shape
    if height % factor or width % factor:
        raise ValueError(f"pixelate needs H and W divisible by {factor}, got {height}x{width}")
    blocks = images.reshape(n, height // factor, factor, width // factor, factor, channels)
    means = blocks.mean(axis=(2, 4))
    return jnp.repeat(jnp.repeat(means, factor, axis=1), factor, axis=2)


def block(images, key, size=32, jitter=1, color=MAGENTA):
    """One large centred square (32 px on a 64 crop), shifted by +-jitter px for training."""
    offset = (REFERENCE_SIDE - size) / 2
    return _jittered_layout(images, key, [(size, offset, offset)], jitter, color)


def grid(images, key, count=3, size=12, spacing=14, jitter=1, color=MAGENTA):
    """A centred count x count grid of squares (3 x 3 of 12 px, 14 px apart on a 64 crop)."""
    origin = (REFERENCE_SIDE - (spacing * (count - 1) + size)) / 2
    layout = [(size, origin + spacing * col, origin + spacing * row)
              for row in range(count) for col in range(count)]
    return _jittered_layout(images, key, layout, jitter, color)


def squares(images, key, min_count=3, max_count=4, min_size=4, max_size=14, color=MAGENTA):
    """min_count..max_count squares of side min_size..max_size (reference px), anywhere."""
    _, height, width, _ = images.shape
    scale = _scale_and_offset(height, width)[0]

    def one(image, key):
        count_key, size_key, x_key, y_key = jax.random.split(key, 4)
        count = jax.random.randint(count_key, (), min_count, max_count + 1)
        sizes = jax.random.randint(size_key, (max_count,), min_size, max_size + 1)
        sizes = jnp.round(sizes * scale).astype(jnp.int32)
        xs = jax.random.randint(x_key, (max_count,), 0, width - sizes)
        ys = jax.random.randint(y_key, (max_count,), 0, height - sizes)
        # Squares beyond this image's count are pushed off the image instead of being dropped,
        # so the shapes stay static under jit.
        xs = jnp.where(jnp.arange(max_count) < count, xs, width + 1)
        return _paint(image, _square_mask(height, width, sizes, xs, ys), color)

    return _per_image(one, images, key)


def fixed_squares(images, layouts=SQUARES_VALIDATION_LAYOUTS, color=MAGENTA):
    """Validation squares: one of the fixed layouts per image (chosen by its colour)."""
    _, height, width, _ = images.shape
    sizes, xs, ys = _layout_to_image(layouts, height, width)
    picks = _pick_by_corner(images, len(layouts))

    def paint_one(image, k):
        return _paint(image, _square_mask(height, width, sizes[k], xs[k], ys[k]), color)

    return jax.vmap(paint_one)(images, picks)


def blur(images, key=None, kernel_size=15, sigma=None):
    """Separable Gaussian blur with replicated borders (cv2.GaussianBlur(15x15, sigma=0)).

    sigma=None uses OpenCV's rule 0.3 ((k - 1) / 2 - 1) + 0.8, i.e. 2.6 for k = 15.
    """
    if sigma is None:
        sigma = 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8
    radius = kernel_size // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    _, height, width, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(w * padded[:, i:i + height] for i, w in enumerate(taps))
    out = sum(w * rows[:, :, i:i + width] for i, w in enumerate(taps))
    return jnp.clip(out, 0, 1)


def jpeg(images, key=None, quality=5):
    """JPEG encode + decode at ``quality`` with Pillow, on the host; returns a numpy array."""
    pixels = np.round(np.clip(np.asarray(images, np.float32), 0, 1) * 255).astype(np.uint8)
    if pixels.shape[-1] not in (1, 3):
        raise ValueError(f"jpeg needs 1 or 3 channels, got {pixels.shape[-1]}")
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
            buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(buffer)).reshape(image.shape))
    return np.stack(decoded).astype(np.float32) / 255


# ---------------------------------------------------------------- dispatch

_TRAIN_FORMS = {"noise": noise, "pixelate": pixelate, "block": block, "squares": squares,
                "grid": grid, "blur": blur, "jpeg": jpeg}


def _check(name):
    if name not in _TRAIN_FORMS:
        raise ValueError(f"unknown damage {name!r}; choose one of {', '.join(DAMAGES)}")


def damage(name, images, key, **kwargs):
    """The random (training) form of damage ``name``; kwargs override the reference defaults."""
    _check(name)
    return _TRAIN_FORMS[name](images, key, **kwargs)


def validation_damage(name, images, seed=0, **kwargs):
    """The fixed validation form: the same output for the same image on every call."""
    _check(name)
    if name == "noise":
        return fixed_noise(images, seed, **kwargs)
    if name == "squares":
        return fixed_squares(images, **kwargs)
    if name in ("block", "grid"):
        kwargs.setdefault("jitter", 0)
    return _TRAIN_FORMS[name](images, jax.random.PRNGKey(seed), **kwargs)
