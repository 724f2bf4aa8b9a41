"""The MGE model families: parameter counts of the reference, shapes, t handling, dropout, dtype;
and the convolution module every family builds its convolutions with."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.models import create_model

SR_RESNET = dict(time_embed=False, hidden=100, nlayers=9)


def init_shapes(model, shape=(1, 16, 16, 3)):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


@functools.cache
def init_variables(name, **kwargs):
    """Initialised once per configuration and shared: the parameters do not depend on H, W or batch,
    and on CPU the first (eager) init of a model dominates the test time."""
    return create_model(name, **kwargs).init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)))


def param_count(variables):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


def residual_cnn_count(channels=3, features=48, depth=5):
    def conv3x3(cin, cout):
        return 9 * cin * cout + cout

    inner = (depth - 2) * conv3x3(features, features)
    return conv3x3(channels, features) + inner + conv3x3(features, channels)


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("unet", {}, 2_537_187),
        ("resnet", {}, 597_699),
        ("resnet", SR_RESNET, 1_622_503),
        ("srnet", {}, 69_603),
        ("residual_cnn", {}, residual_cnn_count()),
    ],
)
def test_parameter_counts_match_the_reference(name, kwargs, expected):
    assert param_count(init_shapes(create_model(name, **kwargs))) == expected


def test_residual_cnn_default_count_by_hand():
    # 3->48, three 48->48, 48->3, all 3x3 with bias.
    assert residual_cnn_count() == (27 * 48 + 48) + 3 * (432 * 48 + 48) + (432 * 3 + 3) == 64_995


CASES = [
    ("unet", {}, (2, 16, 16, 3)),
    ("unet", {}, (1, 32, 32, 3)),
    ("resnet", {}, (2, 16, 16, 3)),
    ("resnet", {}, (1, 32, 48, 3)),
    ("resnet", SR_RESNET, (1, 16, 16, 3)),
    ("srnet", {}, (2, 16, 16, 3)),
    ("srnet", {}, (1, 32, 48, 3)),
    ("residual_cnn", {}, (2, 16, 16, 3)),
    ("residual_cnn", {}, (1, 32, 48, 3)),
    ("residual_cnn", {"time_embed": True}, (1, 16, 16, 3)),
]


@pytest.mark.parametrize("name, kwargs, shape", CASES)
def test_output_matches_input_shape_with_and_without_t(name, kwargs, shape):
    model = create_model(name, **kwargs)
    variables = init_variables(name, **kwargs)
    x = jax.random.normal(jax.random.key(1), shape)
    out_none = model.apply(variables, x)
    out_t = model.apply(variables, x, jnp.full((shape[0],), 0.3))
    assert out_none.shape == out_t.shape == shape
    assert bool(jnp.all(jnp.isfinite(out_t)))


def test_scalar_t_with_batch_of_one():
    # The reference squeezed t to 0-d for a batch of one and crashed in the time embedding.
    model, variables = create_model("resnet"), init_variables("resnet")
    x = jnp.ones((1, 16, 16, 3))
    scalar_t = model.apply(variables, x, jnp.array(0.5))
    np.testing.assert_allclose(scalar_t, model.apply(variables, x, jnp.array([0.5])))


def test_time_conditioning_changes_the_output():
    model, variables = create_model("resnet"), init_variables("resnet")
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    at_zero = model.apply(variables, x, jnp.zeros(2))
    assert not np.allclose(at_zero, model.apply(variables, x, jnp.ones(2)))


def test_unet_head_outputs_exactly_zero_at_init():
    model, variables = create_model("unet"), init_variables("unet")
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    assert bool(jnp.all(model.apply(variables, x, jnp.array([0.2, 0.9])) == 0))


def test_unet_dropout_is_active_only_in_training():
    model, variables = create_model("unet"), init_variables("unet")
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    # The zero-initialised convs after each dropout would hide it; perturb every parameter.
    # (numpy, because an eager jax op per parameter shape would compile each one).
    rng = np.random.default_rng(2)
    perturb = lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32)  # noqa: E731
    variables = jax.tree.map(perturb, variables)

    def run(seed, train):
        return model.apply(variables, x, train=train, rngs={"dropout": jax.random.key(seed)})

    assert not np.allclose(run(0, True), run(1, True))
    np.testing.assert_array_equal(run(0, False), run(1, False))


@pytest.mark.parametrize("name", ["unet", "resnet", "srnet", "residual_cnn"])
def test_bfloat16_compute_keeps_float32_params(name):
    model = create_model(name, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(init_shapes(model)))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    # The float32 model's variables have the same tree; reusing them skips a second init.
    out = model.apply(init_variables(name), x, jnp.array([0.5, 0.1]))
    assert out.dtype == jnp.bfloat16 and out.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


def test_sample_layer_norm_gradient_matches_autodiff_of_the_formula():
    from msjax.models.layers import sample_layer_norm

    def reference(x, eps=1e-5):  # F.layer_norm over (H, W, C), differentiated by jax
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return (x - mean) / jnp.sqrt(x.var(axis=(1, 2, 3), keepdims=True) + eps)

    rng = np.random.default_rng(0)
    x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((2, 5, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)  # a loss that weighs every pixel
    np.testing.assert_allclose(sample_layer_norm(x), reference(x), atol=1e-5)
    ours = jax.grad(lambda x: jnp.sum(w * jnp.tanh(sample_layer_norm(x))))(x)
    theirs = jax.grad(lambda x: jnp.sum(w * jnp.tanh(reference(x))))(x)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    assert float(jnp.abs(theirs).max()) > 0.1   # a gradient worth comparing
    bf16 = sample_layer_norm(x.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16


# --- the convolution every family builds on ----------------------------------------------------

CONV_GEOMETRIES = [  # kernel, strides, padding, dilation
    ((3, 3), 1, "SAME", 1),
    ((3, 3), 2, "SAME", 1),             # lax pads (0, 1) here on even sides
    ((3, 3), 2, 1, 1),
    ((5, 5), 1, "VALID", 1),
    ((3, 3), 1, "SAME", 2),
    ((3, 1), (2, 1), ((1, 2), (0, 1)), (1, 2)),
    ((1, 1), 1, (0, 0), 1),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kernel_size, strides, padding, dilation", CONV_GEOMETRIES)
def test_conv_initialises_and_computes_like_flax_conv(kernel_size, strides, padding, dilation,
                                                      dtype):
    import flax.linen as nn

    from msjax.models.layers import Conv

    options = dict(features=5, kernel_size=kernel_size, strides=strides, padding=padding,
                   kernel_dilation=dilation, dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (2, 10, 12, 3))
    ours, flax_conv = Conv(**options), nn.Conv(**options)
    variables = ours.init(jax.random.key(0), x)
    flax_variables = flax_conv.init(jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_variables)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(flax_variables)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    # A bias that is not zero, so adding it is checked too.
    variables = jax.tree.map(lambda p: p + 0.25, variables)
    y, expected = ours.apply(variables, x), flax_conv.apply(variables, x)
    assert y.dtype == expected.dtype == dtype and y.shape == expected.shape
    np.testing.assert_array_equal(y.astype(jnp.float32), expected.astype(jnp.float32))


def test_conv_without_bias_has_only_a_kernel():
    from msjax.models.layers import Conv

    variables = jax.eval_shape(Conv(4, (3, 3), use_bias=False).init, jax.random.key(0),
                               jnp.zeros((1, 8, 8, 2)))
    assert jax.tree.map(lambda a: a.shape, variables["params"]) == {"kernel": (3, 3, 2, 4)}


ROUTED_FAMILIES = [
    ("unet", dict(model_channels=16, channel_mult=(1, 2), groups=8), (1, 8, 8, 3)),
    ("resnet", dict(hidden=8, nlayers=1), (1, 8, 8, 3)),
    ("srnet", {}, (1, 8, 8, 3)),
    ("residual_cnn", dict(features=8, depth=3), (1, 8, 8, 3)),
    ("edsr", dict(n_resblocks=1, n_feats=8), (1, 6, 6, 3)),
    ("rcan", dict(n_resgroups=1, n_resblocks=2, n_feats=8, reduction=4), (1, 6, 6, 3)),
    ("msrn", dict(n_blocks=1, n_feats=8, scale=4), (1, 6, 6, 3)),
    ("multiblock", dict(n_blocks=2, n_feats=8, n_rcab=1, attention_hidden=2), (1, 6, 6, 3)),
    ("pyramidal", dict(variant="basic22", level_channels=(4, 4, 4)), (1, 8, 8, 3)),
    ("pyramidal", dict(variant="pyramidal44", features=8, growth=4), (1, 8, 8, 3)),
    ("pyramidal", dict(variant="pyramidal44", features=8, growth=4, down="strided",
                       up="resize_conv"), (1, 8, 8, 3)),
]


def host_random_variables(model, shape, seed=0):
    """Random variables drawn with numpy from the abstract tree (no initializer compiles)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))

    def fill(path, leaf):
        if path[-1].key == "var":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def regular_conv_modules(params):
    """Modules of the tree with an HWIO kernel that are not flax transposed convolutions."""
    found = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key == "kernel" and leaf.ndim == 4 and not path[-2].key.startswith(
                "ConvTranspose"):
            found += 1
    return found


@pytest.mark.parametrize("name, kwargs, shape", ROUTED_FAMILIES)
def test_every_regular_convolution_goes_through_the_conv_field(name, kwargs, shape):
    from msjax.models.layers import Conv

    calls = []

    def recording_convolution(*args, **kwargs):
        calls.append(args[1].shape)
        return jax.lax.conv_general_dilated(*args, **kwargs)

    default = create_model(name, **kwargs)
    routed = create_model(name, conv=functools.partial(Conv, convolution=recording_convolution),
                          **kwargs)
    variables = host_random_variables(default, shape)
    x = jax.random.uniform(jax.random.key(1), shape)
    # Traced once under jit: every convolution the model applies is one recorded call.
    y_routed = jax.jit(routed.apply)(variables, x)
    assert len(calls) == regular_conv_modules(variables["params"]) > 0
    np.testing.assert_array_equal(y_routed, jax.jit(default.apply)(variables, x))


def test_models_import_no_platform_kernels():
    import subprocess
    import sys

    # A fresh interpreter: this one may have imported msjax.kernels for other tests.
    program = ("import sys\n"
               "from msjax.models import MODEL_NAMES, model_class\n"
               "[model_class(name) for name in MODEL_NAMES]\n"
               "assert 'msjax.models.pyramidal' in sys.modules\n"
               "assert not [m for m in sys.modules if m.startswith('msjax.kernels')]\n")
    subprocess.run([sys.executable, "-c", program], check=True)
