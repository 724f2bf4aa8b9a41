"""Tiled restoration: exactly the whole-image result for models whose output pixel depends on a
bounded neighbourhood (the quickstart's residual CNN, EDSR), a warning stating the measured
deviation for models with image-wide operations (ResNet's per-sample layer norm, RCAN's channel
attention); and what ``Run.restore`` accepts."""

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


@pytest.fixture(scope="module")
def quickstart_restorer():
    """The quickstart's network as configs/quickstart.py builds it (48 channels, 5 layers)."""
    from configs.quickstart import get_config
    c = get_config()
    return _random_restorer(c.model, **c.model_kwargs)


@pytest.mark.parametrize("size", [(256, 256), (250, 203)])
def test_tiled_quickstart_model_equals_whole_image(astronaut, quickstart_restorer, size):
    restore = quickstart_restorer
    assert evaluate.receptive_margin(restore) == 5       # five 3x3 convs
    image = astronaut[:size[0], :size[1]]
    whole = evaluate.restore_image(restore, image)
    assert whole.shape == image.shape
    for tile in (64, 128):
        tiled = evaluate.restore_image(restore, image, tile=tile)
        assert tiled.shape == whole.shape
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(256, 256), (120, 100)])
def test_tiled_edsr_x2_equals_whole_image(astronaut, size):
    restore = _random_restorer("edsr", scale=2, n_feats=8, n_resblocks=2)
    image = astronaut[:size[0], :size[1]]
    whole = evaluate.restore_image(restore, image, scale=2)
    assert whole.shape == (2 * size[0], 2 * size[1], 3)
    for tile in (48, 64, 128):
        tiled = evaluate.restore_image(restore, image, scale=2, tile=tile)
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_a_tile_smaller_than_the_margin_is_refused(astronaut):
    restore = _random_restorer("residual_cnn", features=8, depth=5)
    with pytest.raises(ValueError, match="must be at least 24 px"):
        evaluate.restore_image(restore, astronaut[:64, :64], tile=16)


# Image-wide models are tiled with a stated deviation, not in two passes: each of their
# normalization / attention layers pools the output of the layers before it, so exact tiling
# would need one pass over the whole image per such layer (RCAN's channel attention sits in
# every residual block) rather than two.
@pytest.mark.parametrize("name, kwargs, scale", [
    ("resnet", {"hidden": 8, "nlayers": 2, "time_embed": False}, 1),   # per-sample layer norm
    ("rcan", {"scale": 2, "n_feats": 8, "n_resgroups": 1, "n_resblocks": 1, "reduction": 4},
     2),                                                                 # channel attention
])
def test_an_image_wide_model_states_its_measured_deviation(astronaut, name, kwargs, scale):
    restore = _random_restorer(name, **kwargs)
    assert evaluate.receptive_margin(restore, scale=scale) is None
    lines = []
    # The warning measures on a crop of 1.5 tiles a side: at 96 px with tiles of 64 the crop is
    # the whole image, so the stated figure must be the deviation of this very restoration.
    image = astronaut[:96, :96]
    tiled = evaluate.restore_image(restore, image, scale=scale, tile=64, report=lines.append)
    assert tiled.shape == (96 * scale, 96 * scale, 3)
    assert len(lines) == 1 and "image-wide" in lines[0] and "\n" not in lines[0]
    stated = float(lines[0].split("by up to ")[1].split()[0])
    whole = evaluate.restore_image(restore, image, scale=scale)
    measured = float(np.abs(tiled - whole).max())
    # The line prints three significant digits.
    np.testing.assert_allclose(stated, measured, rtol=5e-3)
    assert measured > 1e-5


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
