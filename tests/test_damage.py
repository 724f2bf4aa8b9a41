"""The pyramidal damage suite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import damage as dmg

RANDOM = ("noise", "block", "squares", "grid")
IMAGES = jax.random.uniform(jax.random.key(0), (4, 64, 96, 3))


@pytest.mark.parametrize("name", dmg.DAMAGES)
def test_damage_is_a_deterministic_function_of_images_and_key(name):
    first = dmg.damage(name, IMAGES, jax.random.key(1))
    np.testing.assert_array_equal(first, dmg.damage(name, IMAGES, jax.random.key(1)))
    assert first.shape == IMAGES.shape
    assert float(jnp.min(first)) >= 0 and float(jnp.max(first)) <= 1
    assert float(jnp.mean(jnp.abs(first - IMAGES))) > 0.01


@pytest.mark.parametrize("name", RANDOM)
def test_random_damage_changes_with_the_key(name):
    first = dmg.damage(name, IMAGES, jax.random.key(1))
    assert not np.array_equal(first, dmg.damage(name, IMAGES, jax.random.key(2)))


@pytest.mark.parametrize("name", dmg.DAMAGES)
def test_validation_form_is_fixed_per_image(name):
    fixed = dmg.validation_damage(name, IMAGES)
    np.testing.assert_array_equal(fixed, dmg.validation_damage(name, IMAGES))
    # an image's damage does not depend on its batch neighbours
    np.testing.assert_allclose(fixed[2:3], dmg.validation_damage(name, IMAGES[2:3]), atol=1e-6)
    assert fixed.shape == IMAGES.shape
    assert float(jnp.min(fixed)) >= 0 and float(jnp.max(fixed)) <= 1


@pytest.mark.parametrize("name", [n for n in dmg.DAMAGES if n != "jpeg"])
def test_jax_damages_jit(name):
    jitted = jax.jit(lambda x, k: dmg.damage(name, x, k))
    np.testing.assert_allclose(jitted(IMAGES, jax.random.key(3)),
                               dmg.damage(name, IMAGES, jax.random.key(3)), atol=1e-6)


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
