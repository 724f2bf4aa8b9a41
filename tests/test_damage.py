"""The pyramidal damage suite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import damage as dmg

RANDOM = ("noise", "block", "squares", "grid")
IMAGES = jax.random.uniform(jax.random.key(0), (4, 64, 96, 3))


PAINTED = ("block", "squares", "grid")


@pytest.mark.parametrize("name", dmg.DAMAGES)
def test_every_damage_keeps_shape_and_range_and_changes_the_images(name):
    for out in (dmg.damage(name, IMAGES, jax.random.key(1)), dmg.validation_damage(name, IMAGES)):
        assert out.shape == IMAGES.shape
        assert float(jnp.min(out)) >= 0 and float(jnp.max(out)) <= 1
        assert float(jnp.mean(jnp.abs(out - IMAGES))) > 0.01


def _clipped_normal_moments(sigma, limit):
    """Mean square and tail mass of clip(N(0, sigma^2), -limit, limit), by numpy quadrature."""
    x = np.linspace(-12 * sigma, 12 * sigma, 400001)
    pdf = np.exp(-0.5 * (x / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    dx = x[1] - x[0]
    return (np.sum(np.clip(x, -limit, limit) ** 2 * pdf) * dx,
            np.sum(pdf[np.abs(x) > limit]) * dx)


def test_noise_has_the_clipped_gaussian_statistics_and_independent_draws():
    grey = jnp.full((4, 64, 96, 3), 0.5)
    sigma = 125 / 255
    residual = np.asarray(dmg.damage("noise", grey, jax.random.key(0))) - 0.5
    mean_square, clipped = _clipped_normal_moments(sigma, 0.5)
    n = residual.size
    assert abs(residual.mean()) < 4 * np.sqrt(mean_square / n)
    np.testing.assert_allclose(np.mean(residual ** 2), mean_square, rtol=0.02)
    np.testing.assert_allclose(np.mean(np.abs(residual) == 0.5), clipped, atol=0.01)
    flat = residual.reshape(4, -1)  # each image draws its own noise: uncorrelated
    assert np.abs(np.corrcoef(flat)[np.triu_indices(4, 1)]).max() < 0.03
    other = np.asarray(dmg.damage("noise", grey, jax.random.key(1))) - 0.5
    assert abs(np.corrcoef(flat[0], other.reshape(4, -1)[0])[0, 1]) < 0.03


def test_pixelate_equals_numpy_block_means():
    x = np.asarray(IMAGES, np.float64)
    n, h, w, c = x.shape
    means = x.reshape(n, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))
    expected = np.kron(means, np.ones((1, 8, 8, 1)))
    np.testing.assert_allclose(np.asarray(dmg.damage("pixelate", IMAGES, None)), expected,
                               rtol=0, atol=1e-6)


def test_blur_equals_a_numpy_separable_gaussian_with_replicated_borders():
    x = np.asarray(IMAGES[:2, :40, :48], np.float64)
    taps = np.exp(-0.5 * (np.arange(-7, 8) / 2.6) ** 2)  # OpenCV's sigma for a 15-tap kernel
    taps /= taps.sum()
    padded = np.pad(x, ((0, 0), (7, 7), (7, 7), (0, 0)), mode="edge")
    expected = np.zeros_like(x)
    for i in range(15):  # the 2-D kernel is the outer product of the taps
        for j in range(15):
            expected += taps[i] * taps[j] * padded[:, i:i + 40, j:j + 48]
    np.testing.assert_allclose(np.asarray(dmg.blur(jnp.asarray(x, jnp.float32))), expected,
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", ["train", "validation"])
@pytest.mark.parametrize("name", PAINTED)
def test_painted_damages_change_only_the_pixels_they_paint_magenta(name, form):
    out = np.asarray(dmg.damage(name, IMAGES, jax.random.key(4)) if form == "train"
                     else dmg.validation_damage(name, IMAGES))
    painted = np.all(out == dmg.MAGENTA, axis=-1)  # uniform random inputs are never magenta
    np.testing.assert_array_equal(out[~painted], np.asarray(IMAGES)[~painted])
    # 64 x 96 images: the 64-px reference layout, centred; squares are size + 1 pixels wide
    area = painted.reshape(4, -1).sum(axis=1)
    if name == "block":
        assert (area == 33 ** 2).all()
    elif name == "grid":
        assert (area == 9 * 13 ** 2).all()
    else:  # 3 or 4 squares of side 5..15 pixels, which may overlap
        assert ((area >= 15 ** 2 // 4) & (area <= 4 * 15 ** 2)).all()
    assert not painted[:, :, :16].any() or name == "squares"  # centred: the margins stay clear


def test_block_jitter_is_drawn_per_image():
    starts = [tuple(np.argwhere(np.all(np.asarray(img) == dmg.MAGENTA, axis=-1)).min(0))
              for img in dmg.damage("block", jnp.zeros((32, 64, 64, 3)) + 0.5, jax.random.key(7))]
    counts = {s: starts.count(s) for s in set(starts)}
    assert set(counts) == {(15, 15), (15, 17), (17, 15), (17, 17)}  # one key, 32 draws
    assert min(counts.values()) >= 3


@pytest.mark.parametrize("name", dmg.DAMAGES)
def test_validation_form_of_an_image_does_not_depend_on_its_batch(name):
    fixed = np.asarray(dmg.validation_damage(name, IMAGES))
    order = [2, 0, 3, 1]
    np.testing.assert_allclose(np.asarray(dmg.validation_damage(name, IMAGES[np.array(order)])),
                               fixed[order], atol=1e-6)
    np.testing.assert_allclose(fixed[2:3], dmg.validation_damage(name, IMAGES[2:3]), atol=1e-6)


def test_jpeg_at_quality_5_is_blocky_and_far_worse_than_at_quality_75():
    smooth = dmg.blur(IMAGES)
    low = np.asarray(dmg.damage("jpeg", smooth, None))
    high = np.asarray(dmg.damage("jpeg", smooth, None, quality=75))
    np.testing.assert_allclose(np.round(low * 255), low * 255, atol=1e-4)  # decoded uint8

    def psnr(x):
        return 10 * np.log10(1 / np.mean((x - np.asarray(smooth)) ** 2))
    assert psnr(low) < psnr(high) - 5
    # Quality 5 keeps little more than each 8x8 block's mean: the error is mostly within blocks.
    error = low - np.asarray(smooth)
    n, h, w, c = error.shape
    block_means = error.reshape(n, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))
    assert np.mean(block_means ** 2) < np.mean(error ** 2)


def test_unknown_damage_names_the_valid_ones():
    with pytest.raises(ValueError, match="noise, pixelate, block"):
        dmg.damage("rain", IMAGES, jax.random.key(0))
    with pytest.raises(ValueError, match="jpeg"):
        dmg.validation_damage("rain", IMAGES)


def test_pixelate_needs_multiples_of_8():
    with pytest.raises(ValueError, match="divisible by 8"):
        dmg.pixelate(jnp.zeros((1, 60, 64, 3)))


def painted(images):
    return np.argwhere(np.all(np.asarray(images[0]) == [1, 0, 1], axis=-1))


def test_block_geometry_matches_the_reference_at_64_and_128():
    # validation: side 32 at (16, 16) on 64, 64 at (32, 32) on 128, inclusive corners
    for side, lo, hi in [(64, 16, 48), (128, 32, 96)]:
        pixels = painted(dmg.validation_damage("block", jnp.zeros((1, side, side, 3))))
        assert pixels.min(0).tolist() == [lo, lo] and pixels.max(0).tolist() == [hi, hi]
    # training positions: 15 or 17 on a 64 crop
    starts = {tuple(painted(dmg.damage("block", jnp.zeros((1, 64, 64, 3)), jax.random.key(s)))
                    .min(0)) for s in range(12)}
    assert starts <= {(15, 15), (15, 17), (17, 15), (17, 17)} and len(starts) > 1


def test_grid_and_squares_validation_paint_the_reference_layouts():
    grid = painted(dmg.validation_damage("grid", jnp.zeros((1, 64, 64, 3))))
    assert len(grid) == 9 * 13 * 13 and grid.min(0).tolist() == [12, 12]
    squares = painted(dmg.validation_damage("squares", jnp.zeros((1, 64, 64, 3))))
    # black picks layout 0: sides 5, 12, 9, 7 painted size + 1 wide, not overlapping
    assert len(squares) == 6 ** 2 + 13 ** 2 + 10 ** 2 + 8 ** 2


def test_noise_and_blur_parameters():
    grey = jnp.full((2, 64, 64, 3), 0.5)
    small = dmg.damage("noise", grey, jax.random.key(0), sigma=0.01)
    assert abs(float(jnp.std(small)) - 0.01) < 0.001
    np.testing.assert_allclose(dmg.blur(grey), grey, atol=1e-6)  # normalised kernel, edge padding
    impulse = jnp.zeros((1, 31, 31, 1)).at[0, 15, 15, 0].set(1.0)
    response = np.asarray(dmg.blur(impulse))[0, :, 15, 0]
    taps = np.exp(-0.5 * (np.arange(-7, 8) / 2.6) ** 2)
    np.testing.assert_allclose(response[8:23], np.outer(taps, taps)[:, 7] / taps.sum() ** 2,
                               rtol=1e-5)


def test_pixelate_and_jpeg_outputs():
    pixelated = np.asarray(dmg.damage("pixelate", IMAGES, None))
    np.testing.assert_allclose(pixelated[:, :8, :8], pixelated[:, :1, :1].repeat(8, 1).repeat(8, 2))
    np.testing.assert_allclose(pixelated[0, 0, 0], IMAGES[0, :8, :8].mean((0, 1)), rtol=1e-5)
    compressed = dmg.damage("jpeg", IMAGES, None)
    np.testing.assert_allclose(np.round(compressed * 255), compressed * 255, atol=1e-4)
