"""Tiled restoration: exactly the whole-image result for models whose output pixel depends on a
bounded neighbourhood (the quickstart's residual CNN, EDSR), a warning with the measured
deviation for models with image-wide operations; and what ``Run.restore`` accepts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from msjax import build, evaluate, models, runs
from msjax.errors import DataError
from tests.helpers import tiny_config


def _random_restorer(name, **kwargs):
    """A jitted (batch, t) -> output of ``name`` with random weights (every layer nonzero: the
    residual CNN's last layer starts at zero, which would make it the identity)."""
    model = models.create_model(name, **kwargs)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape)
                                       for a, k in zip(leaves, keys)])
    program = jax.jit(lambda y: model.apply(params, y))
    return lambda y, t: program(y)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()[:256, :256].astype(np.float32) / 255


@pytest.mark.parametrize("size", [(256, 256), (250, 203)])
def test_tiled_residual_cnn_equals_whole_image(astronaut, size):
    restore = _random_restorer("residual_cnn", features=8, depth=5)
    assert evaluate.receptive_margin(restore) == 5       # five 3x3 convs
    image = astronaut[:size[0], :size[1]]
    whole = evaluate.restore_image(restore, image)
    assert whole.shape == image.shape
    for tile in (64, 128):
        tiled = evaluate.restore_image(restore, image, tile=tile)
        assert tiled.shape == whole.shape
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_tiled_edsr_x2_equals_whole_image(astronaut):
    restore = _random_restorer("edsr", scale=2, n_feats=8, n_resblocks=2)
    image = astronaut[:120, :100]
    whole = evaluate.restore_image(restore, image, scale=2)
    assert whole.shape == (240, 200, 3)
    tiled = evaluate.restore_image(restore, image, scale=2, tile=48)
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_a_tile_smaller_than_the_margin_is_refused(astronaut):
    restore = _random_restorer("residual_cnn", features=8, depth=5)
    with pytest.raises(ValueError, match="must be at least 24 px"):
        evaluate.restore_image(restore, astronaut[:64, :64], tile=16)


def test_an_image_wide_model_is_tiled_with_a_measured_deviation(astronaut):
    restore = _random_restorer("rcan", scale=2, n_feats=8, n_resgroups=1, n_resblocks=1,
                               reduction=4)
    assert evaluate.receptive_margin(restore, scale=2) is None   # channel attention
    lines = []
    image = astronaut[:96, :96]
    tiled = evaluate.restore_image(restore, image, scale=2, tile=64, report=lines.append)
    assert tiled.shape == (192, 192, 3)
    assert len(lines) == 1 and "image-wide" in lines[0]
    deviation = float(lines[0].split("by up to ")[1].split()[0])
    whole = evaluate.restore_image(restore, image, scale=2)
    np.testing.assert_allclose(deviation, np.abs(tiled - whole).max(), rtol=1e-2)
    assert deviation > 1e-5


# ---- Run.restore's inputs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run():
    c = tiny_config()
    c.model_kwargs = {"features": 8, "depth": 3}
    exp = build.experiment(c, num_devices=1)
    state = build.initial_state(exp, (1, 16, 16, 3))
    # Nonzero last layer: the fresh model is the identity otherwise.
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    state = state.replace(params=jax.tree.unflatten(
        tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]))
    return runs.Run(None, exp, state, 0)


def test_restore_takes_hwc_and_nhwc_and_answers_in_the_same_layout(run):
    image = np.random.default_rng(0).random((20, 27, 3), np.float32)
    one = run.restore(image)
    assert one.shape == (20, 27, 3) and one.dtype == np.float32
    batch = run.restore(np.stack([image, image[::-1]]))
    assert batch.shape == (2, 20, 27, 3)
    np.testing.assert_allclose(batch[0], one, atol=1e-6)
    np.testing.assert_allclose(run.restore(image, tile=24), one, atol=1e-5)


def test_restore_scales_integer_images(run):
    u8 = np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)
    as_float = run.restore(u8.astype(np.float32) / 255)
    np.testing.assert_allclose(run.restore(u8), as_float, atol=1e-6)
    u16 = u8.astype(np.uint16) * 257
    np.testing.assert_allclose(run.restore(u16), as_float, atol=1e-6)
    assert run.restore(u8).max() <= 1.0


@pytest.mark.parametrize("bad, named", [
    (np.zeros((16, 16)), r"shape \(16, 16\)"),
    (np.zeros((1, 1, 16, 16, 3)), r"shape \(1, 1, 16, 16, 3\)"),
    (np.zeros((16, 16, 1)), r"shape \(16, 16, 1\)"),
    (np.zeros((2, 16, 16, 4)), r"shape \(2, 16, 16, 4\)"),
    (np.zeros((16, 16, 3), np.complex64), "dtype complex64"),
    (np.zeros((16, 16, 3), np.int32), "dtype int32"),
    (np.zeros((16, 16, 3), bool), "dtype bool"),
])
def test_restore_refuses_other_inputs_in_one_line(run, bad, named):
    with pytest.raises(DataError, match=named) as e:
        run.restore(bad)
    assert "\n" not in str(e.value) and "expected an HxWx3 image" in str(e.value)
