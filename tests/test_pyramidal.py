"""Pyramidal autoencoders and their DenseNet blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.models import create_model
from msjax.models.densenet import DOWN_KINDS, UP_KINDS, TransitionDown, TransitionUp
from msjax.models.pyramidal import VARIANTS, PyramidalAutoencoder

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(RNGS, jnp.zeros(shape)))


def numpy_variables(model, x, seed=0):
    """LeCun-scaled random variables drawn on the host: a real ``init`` compiles one random
    initializer per parameter, which costs seconds each on a busy 2-core CPU."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), jnp.float32)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, x.shape))


def count(tree):
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def dense_block_params(channels_in, layers, growth):
    # layer j: BN scale + bias on its input, 3x3 conv input -> growth with bias
    return sum(2 * c + 9 * c * growth + growth
               for c in (channels_in + j * growth for j in range(layers)))


def test_pyramidal103_parameter_count():
    """The (48, 16) 103-layer model has exactly 9,358,819 parameters, the reference's ~9.36M.

    The count follows from the channel arithmetic of the reference notes (d.2): input conv 3->48,
    encoder dense blocks 4, 5, 7, 10, 12 on 48, 112, 192, 304, 464 channels, transitions down
    (1x1 conv + BN) on 112 .. 656, the 15-layer bottleneck on 656, transposed convs 3x3 c->c on
    240 .. 80, decoder blocks 12, 10, 7, 5, 5 on 896, 656, 464, 304, 192, output conv 80->3. It
    equals the PyTorch model's trainable count because BN scale/bias are parameters in both and the
    running statistics (103,584 floats here) live in ``batch_stats``, not in ``params``.
    """
    variables = abstract_variables(PyramidalAutoencoder("pyramidal103", 48, 16), (1, 64, 64, 3))
    k = 16
    expected = (9 * 3 * 48 + 48) + (9 * 80 * 3 + 3)
    expected += sum(dense_block_params(c, n, k) for c, n in
                    [(48, 4), (112, 5), (192, 7), (304, 10), (464, 12), (656, 15),
                     (896, 12), (656, 10), (464, 7), (304, 5), (192, 5)])
    expected += sum(c * c + c + 2 * c for c in (112, 192, 304, 464, 656))  # transitions down
    expected += sum(9 * c * c + c for c in (240, 192, 160, 112, 80))  # transitions up
    assert count(variables["params"]) == expected == 9_358_819
    assert count(variables["batch_stats"]) == 103_584


def test_registry_builds_the_pyramidal_family():
    assert isinstance(create_model("pyramidal", variant="basic21"), PyramidalAutoencoder)


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_keeps_the_input_shape(variant, size):
    model = PyramidalAutoencoder(variant)
    x = jnp.zeros((2, size, size, 3))
    variables = abstract_variables(model, x.shape)
    out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert out.shape == x.shape


def test_rectangular_grayscale_input_with_other_transitions():
    model = PyramidalAutoencoder("pyramidal457", 8, 4, down="strided", up="resize_conv")
    x = jnp.zeros((1, 16, 24, 1))
    out = jax.eval_shape(lambda v: model.apply(v, x), abstract_variables(model, x.shape))
    assert out.shape == x.shape


@pytest.mark.parametrize("variant", ["basic22", "pyramidal44"])
def test_small_model_trains_and_evaluates(variant):
    model = PyramidalAutoencoder(variant, features=8, growth=4, level_channels=(8, 8, 8))
    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3), minval=-1, maxval=1)
    variables = numpy_variables(model, x)

    @jax.jit
    def train_forward(dropout_key):
        return model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": dropout_key})

    y, updates = train_forward(jax.random.key(3))
    assert y.shape == x.shape and bool(jnp.all(jnp.abs(y) <= 1))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(moved))
    if variant == "pyramidal44":  # dropout draws from the rng only in dense layers
        assert not jnp.allclose(y, train_forward(jax.random.key(4))[0])
    evaluate = jax.jit(lambda t: model.apply(variables, x, t))
    evaluated = evaluate(None)
    assert evaluated.shape == x.shape
    np.testing.assert_array_equal(evaluated, evaluate(jnp.ones(2)))  # t is ignored


def test_linear_output_is_the_tanh_output_before_tanh_and_bad_fields_raise():
    tanh_model = PyramidalAutoencoder("basic21", level_channels=(4, 4, 4))
    linear_model = tanh_model.clone(output="linear")
    x = jax.random.normal(jax.random.key(6), (1, 8, 8, 3))
    variables = numpy_variables(tanh_model, x)
    linear, tanh = jax.jit(lambda v: (linear_model.apply(v, x), tanh_model.apply(v, x)))(variables)
    np.testing.assert_allclose(jnp.tanh(linear), tanh, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 32"):
        abstract_variables(PyramidalAutoencoder("pyramidal103"), (1, 48, 48, 3))
    with pytest.raises(ValueError, match="pyramidal103"):
        abstract_variables(PyramidalAutoencoder("nope"), (1, 64, 64, 3))
    with pytest.raises(ValueError, match="tanh"):
        abstract_variables(PyramidalAutoencoder("basic21", output="sigmoid"), (1, 64, 64, 3))


@pytest.mark.parametrize("kind", DOWN_KINDS)
def test_transition_down_halves(kind):
    block = TransitionDown(kind)
    x = jnp.zeros((1, 8, 12, 5))
    out = jax.eval_shape(lambda: block.init_with_output(RNGS, x)[0])
    assert out.shape == (1, 4, 6, 5)


@pytest.mark.parametrize("kind", UP_KINDS)
def test_transition_up_doubles(kind):
    block = TransitionUp(kind, features=7)
    x = jnp.zeros((1, 4, 6, 5))
    out = jax.eval_shape(lambda: block.init_with_output(RNGS, x)[0])
    assert out.shape == (1, 8, 12, 7)


def test_transposed_up_matches_pytorch_geometry():
    """ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): every input pixel i scatters
    w[a] into output 2i - 1 + a (cropped to 2H). Flax keeps the kernel unflipped, so its kernel
    is PyTorch's flipped in space; the learnable family is the same."""
    block = TransitionUp("transposed")
    x = jax.random.normal(jax.random.key(5), (1, 3, 4, 2))
    variables = numpy_variables(block, x)
    y = block.apply(variables, x)
    kernel = np.asarray(variables["params"]["ConvTranspose_0"]["kernel"])[::-1, ::-1]
    bias = np.asarray(variables["params"]["ConvTranspose_0"]["bias"])
    expected = np.zeros((1, 6 + 2, 8 + 2, 2))  # one spare row/col each side for the crop
    for i in range(3):
        for j in range(4):
            for a in range(3):
                for b in range(3):
                    expected[0, 2 * i + a, 2 * j + b] += np.asarray(x)[0, i, j] @ kernel[a, b]
    np.testing.assert_allclose(y, expected[:, 1:7, 1:9] + bias, rtol=1e-5, atol=1e-5)
