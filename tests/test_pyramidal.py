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


# The 48/16 model's level widths (reference notes d.2): encoder skips s_5 .. s_1 (the decoder
# concatenates each with the transition up's output) and the widths the transitions up receive.
SKIPS = (656, 464, 304, 192, 112)
UP_INPUTS = (240, 192, 160, 112, 80)
DECODER_BLOCKS = (12, 10, 7, 5, 5)
ENCODER_AND_BOTTLENECK = ((48, 4), (112, 5), (192, 7), (304, 10), (464, 12), (656, 15))
DOWN_INPUTS = (112, 192, 304, 464, 656)


def pyramidal103_blocks(up_width):
    """(input width, layers) of every dense block, with transitions up mapping c -> up_width(c)."""
    decoder = [(s + up_width(c), n) for s, c, n in zip(SKIPS, UP_INPUTS, DECODER_BLOCKS)]
    return list(ENCODER_AND_BOTTLENECK) + decoder


def pyramidal103_params(up_width, up_params, k=16):
    """The (48, k=16) model's parameter count from the layer facts, for a transition up that maps
    c channels to ``up_width(c)`` with ``up_params(c)`` parameters."""
    count = (9 * 3 * 48 + 48) + (9 * 80 * 3 + 3)  # input conv 3->48, output conv 80->3
    count += sum(dense_block_params(c, n, k) for c, n in pyramidal103_blocks(up_width))
    count += sum(c * c + c + 2 * c for c in DOWN_INPUTS)  # 1x1 conv + BN, then the pool
    return count + sum(up_params(c) for c in UP_INPUTS)


def pyramidal103_batch_stats(up_width, up_normalises, k=16):
    """Running mean and variance of every BatchNorm: dense layers, transitions down, and the
    transitions up if they normalise their input."""
    widths = [c + j * k for c, n in pyramidal103_blocks(up_width) for j in range(n)]
    widths += list(DOWN_INPUTS) + (list(UP_INPUTS) if up_normalises else [])
    return 2 * sum(widths)


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
    same_width = lambda c: c  # noqa: E731
    expected = pyramidal103_params(same_width, lambda c: 9 * c * c + c)
    assert count(variables["params"]) == expected == 9_358_819
    assert count(variables["batch_stats"]) == pyramidal103_batch_stats(same_width, False) == 103_584


@pytest.mark.parametrize("down, up, up_reduction, expected", [
    # Pooling has no parameters: average pooling costs what max pooling does.
    ("avgpool", "transposed", 2, 9_358_819),
    # 'ext': BN on c (2c), transposed conv c -> c // n with bias, decoder blocks on s_l + c // n.
    ("maxpool", "transposed_ext", 1, 9_360_387),
    ("maxpool", "transposed_ext", 2, 8_232_219),
    # Pixel shuffle: no parameters, decoder blocks on s_l + c / 4 channels.
    ("maxpool", "pixel_shuffle", 2, 7_353_603),
])
def test_pyramidal103_transition_variants_parameter_counts(down, up, up_reduction, expected):
    """The reference's alternative transitions in its final model, counted from their layer
    facts (reference notes d.1) with the same arithmetic as the default model."""
    n = up_reduction
    up_width, up_params = {
        "transposed": (lambda c: c, lambda c: 9 * c * c + c),
        "transposed_ext": (lambda c: c // n, lambda c: 2 * c + 9 * c * (c // n) + c // n),
        "pixel_shuffle": (lambda c: c // 4, lambda c: 0),
    }[up]
    assert pyramidal103_params(up_width, up_params) == expected
    model = PyramidalAutoencoder("pyramidal103", 48, 16, down=down, up=up, up_reduction=n)
    variables = abstract_variables(model, (1, 64, 64, 3))
    assert count(variables["params"]) == expected
    assert count(variables["batch_stats"]) == pyramidal103_batch_stats(
        up_width, up == "transposed_ext")


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


@pytest.mark.parametrize("up", UP_KINDS)
@pytest.mark.parametrize("down", DOWN_KINDS)
def test_every_transition_pair_keeps_a_rectangular_grayscale_shape(down, up):
    model = PyramidalAutoencoder("pyramidal457", 8, 4, down=down, up=up)
    x = jnp.zeros((1, 16, 24, 1))
    out = jax.eval_shape(lambda v: model.apply(v, x), abstract_variables(model, x.shape))
    assert out.shape == x.shape


def test_pixel_shuffle_up_needs_widths_that_divide_by_four():
    # pyramidal457's bottleneck has 7 layers: 7 x growth 2 = 14 channels.
    with pytest.raises(ValueError, match="divides by 4"):
        abstract_variables(PyramidalAutoencoder("pyramidal457", 8, 2, up="pixel_shuffle"),
                           (1, 16, 16, 3))


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
    # Config validation reads size_multiple, so a misspelt transition fails before any compile.
    with pytest.raises(ValueError, match="pixel_shuffle"):
        PyramidalAutoencoder("pyramidal44", up="pixelshuffle").size_multiple


@pytest.mark.parametrize("kind", DOWN_KINDS)
def test_transition_down_halves(kind):
    block = TransitionDown(kind)
    x = jnp.zeros((1, 8, 12, 5))
    out = jax.eval_shape(lambda: block.init_with_output(RNGS, x)[0])
    assert out.shape == (1, 4, 6, 5)


@pytest.mark.parametrize("kind, channels_out", [
    ("transposed", 8), ("transposed_ext", 4), ("pixel_shuffle", 2), ("resize_conv", 8)])
def test_transition_up_doubles(kind, channels_out):
    x = jnp.zeros((1, 4, 6, 8))
    out = jax.eval_shape(lambda: TransitionUp(kind).init_with_output(RNGS, x)[0])
    assert out.shape == (1, 8, 12, channels_out)
    if kind != "pixel_shuffle":  # the others take any output width
        block = TransitionUp(kind, features=7)
        assert jax.eval_shape(lambda: block.init_with_output(RNGS, x)[0]).shape == (1, 8, 12, 7)


def test_ext_transition_up_normalises_first_and_drops_out_in_training():
    block = TransitionUp("transposed_ext", reduction=4)
    x = jax.random.normal(jax.random.key(7), (2, 3, 4, 8))
    variables = numpy_variables(block, x)
    shapes = jax.tree.map(lambda a: a.shape, variables["params"])
    assert shapes == {"BatchNorm_0": {"scale": (8,), "bias": (8,)},
                      "ConvTranspose_0": {"kernel": (3, 3, 8, 2), "bias": (2,)}}

    def train(seed):
        return block.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(seed)})[0]

    a, b = train(0), train(1)
    assert a.shape == (2, 6, 8, 2) and not np.allclose(a, b)
    assert 0.1 < float(jnp.mean(a == 0)) < 0.3  # dropout 0.2 after the conv (zero bias here)
    np.testing.assert_array_equal(block.apply(variables, x), block.apply(variables, x))


def test_pixel_shuffle_up_is_depth_to_space_in_pytorch_order():
    x = jnp.arange(2 * 3 * 8, dtype=jnp.float32).reshape(1, 2, 3, 8)
    y = TransitionUp("pixel_shuffle").apply({}, x)
    # Output channel c at offset (i, j) of each 2x2 cell is input channel 4c + 2i + j.
    for c in range(2):
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(y[0, i::2, j::2, c], x[0, :, :, 4 * c + 2 * i + j])


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
