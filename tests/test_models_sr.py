"""Super-resolution families: pinned parameter counts and paths, shapes, the multiblock chain,
dtypes."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.models import MODELS, create_model
from msjax.models.edsr import EDSR
from msjax.models.layers import Conv
from msjax.models.msrn import MSRB
from msjax.models.multiblock import MultiblockBlock, MultiblockChain
from msjax.models.sr_blocks import (
    ResBlock,
    ResidualGroup,
    Upsampler,
    from_network_range,
    pixel_shuffle,
    same_conv,
    to_network_range,
)

LR = (2, 12, 16, 3)
TINY = {
    "edsr": dict(n_resblocks=2, n_feats=16),
    "rcan": dict(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4),
    "msrn": dict(n_blocks=2, n_feats=16),
}
TINY_BLOCK = dict(n_feats=8, n_rcab=2, attention_hidden=2)


def lr_images(shape=LR, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def param_count(model, shape=(1, 12, 16, 3)):
    """Counts parameters from shapes alone (no compute), so full-size models are cheap."""
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("edsr", dict(scale=2), 1_369_859),
        ("edsr", dict(scale=3), 1_554_499),
        ("edsr", dict(scale=4), 1_517_571),
        ("edsr", dict(scale=2, n_resblocks=32, n_feats=256, res_scale=0.1), 40_729_603),
        ("rcan", dict(scale=2), 15_444_643),
        ("rcan", dict(scale=4), 15_592_355),
        ("msrn", dict(scale=2), 5_930_307),
        ("msrn", dict(scale=4), 6_078_019),
    ],
)
def test_parameter_counts_match_the_references(name, options, expected):
    """Exact counts with the mean shift as constants (the reference's frozen MeanShift convs would
    add 24 untrained numbers). They agree with the published figures: EDSR-baseline 1.37M / 1.55M /
    1.52M at x2 / x3 / x4 (x3 is largest: one conv to 9F channels, where x4 has two convs to 4F),
    EDSR 40.7M at x2, RCAN 15.44M at x2 and 15.59M at x4 (the "15.4-15.6M" range spans scales),
    MSRN 5.93M at x2 (RGB retrain). The often-quoted MSRN 6.3M at x4 is the paper-era Y-channel
    model with one conv to 16F and shuffle 4 (6,334,209); the RGB code has two x2 stages."""
    assert param_count(create_model(name, **options)) == expected


def test_multiblock_block_count_matches_the_reference():
    """conv 3->64, 16 RCABs (two 3x3 convs + attention 64->16->64), conv 64->64, conv 64->3."""
    assert param_count(MultiblockBlock()) == 1_256_195
    assert param_count(MultiblockChain(n_blocks=3)) == 3 * 1_256_195


def conv_shapes(path, k, cin, cout):
    return {f"{path}/kernel": (k, k, cin, cout), f"{path}/bias": (cout,)}


def rcab_shapes(path, f, hidden):
    return {**conv_shapes(f"{path}/Conv_0", 3, f, f), **conv_shapes(f"{path}/Conv_1", 3, f, f),
            f"{path}/ChannelAttention_0/Dense_0/kernel": (f, hidden),
            f"{path}/ChannelAttention_0/Dense_0/bias": (hidden,),
            f"{path}/ChannelAttention_0/Dense_1/kernel": (hidden, f),
            f"{path}/ChannelAttention_0/Dense_1/bias": (f,)}


def msrb_shapes(path, f):
    return {**conv_shapes(f"{path}/Conv_0", 3, f, f), **conv_shapes(f"{path}/Conv_1", 5, f, f),
            **conv_shapes(f"{path}/Conv_2", 3, 2 * f, 2 * f),
            **conv_shapes(f"{path}/Conv_3", 5, 2 * f, 2 * f),
            **conv_shapes(f"{path}/Conv_4", 1, 4 * f, f)}


# Every parameter path and shape at x4 (two upsampler stages), written out: checkpoints store
# these paths, so a run saved by any msjax loads only while they stay exactly as they are.
F = 8
PARAMETER_PATHS = {
    "edsr": (dict(n_resblocks=2, n_feats=F), {
        **conv_shapes("head", 3, 3, F),
        **conv_shapes("resblock_0/Conv_0", 3, F, F), **conv_shapes("resblock_0/Conv_1", 3, F, F),
        **conv_shapes("resblock_1/Conv_0", 3, F, F), **conv_shapes("resblock_1/Conv_1", 3, F, F),
        **conv_shapes("body_end", 3, F, F),
        **conv_shapes("upsampler/Conv_0", 3, F, 4 * F),
        **conv_shapes("upsampler/Conv_1", 3, F, 4 * F),
        **conv_shapes("tail", 3, F, 3)}),
    "rcan": (dict(n_resgroups=2, n_resblocks=2, n_feats=F, reduction=4), {
        **conv_shapes("head", 3, 3, F),
        **rcab_shapes("group_0/RCAB_0", F, 2), **rcab_shapes("group_0/RCAB_1", F, 2),
        **conv_shapes("group_0/Conv_0", 3, F, F),
        **rcab_shapes("group_1/RCAB_0", F, 2), **rcab_shapes("group_1/RCAB_1", F, 2),
        **conv_shapes("group_1/Conv_0", 3, F, F),
        **conv_shapes("body_end", 3, F, F),
        **conv_shapes("upsampler/Conv_0", 3, F, 4 * F),
        **conv_shapes("upsampler/Conv_1", 3, F, 4 * F),
        **conv_shapes("tail", 3, F, 3)}),
    "msrn": (dict(n_blocks=2, n_feats=F), {
        **conv_shapes("head", 3, 3, F),
        **msrb_shapes("msrb_0", F), **msrb_shapes("msrb_1", F),
        **conv_shapes("fusion", 1, 3 * F, F),
        **conv_shapes("fusion_conv", 3, F, F),
        **conv_shapes("upsampler/Conv_0", 3, F, 4 * F),
        **conv_shapes("upsampler/Conv_1", 3, F, 4 * F),
        **conv_shapes("tail", 3, F, 3)}),
}


def param_shapes(model, shape=(1, 8, 8, 3)):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    return {path: leaf.shape
            for path, leaf in flax.traverse_util.flatten_dict(variables, sep="/").items()}


@pytest.mark.parametrize("name", sorted(PARAMETER_PATHS))
def test_parameter_paths_and_shapes_are_pinned(name):
    options, expected = PARAMETER_PATHS[name]
    assert param_shapes(create_model(name, scale=4, **options)) == {
        f"params/{path}": shape for path, shape in expected.items()}


def by_hand(name, options, params, x, scale):
    """The model as its named layers in sequence: range in, head, the family's body, upsampler,
    tail, range out."""
    f = options["n_feats"]

    def layer(module, path, h):
        return module.apply({"params": params[path]}, h)

    def conv(features, kernel=3):
        return same_conv(Conv, features, kernel)

    head = layer(conv(f), "head", to_network_range(x, 255.0, jnp.float32))
    h = head
    if name == "edsr":
        for i in range(options["n_resblocks"]):
            h = layer(ResBlock(f), f"resblock_{i}", h)
        h = head + layer(conv(f), "body_end", h)
    elif name == "rcan":
        hidden = f // options["reduction"]
        for i in range(options["n_resgroups"]):
            h = layer(ResidualGroup(f, options["n_resblocks"], hidden), f"group_{i}", h)
        h = head + layer(conv(f), "body_end", h)
    else:
        features = []
        for i in range(options["n_blocks"]):
            h = layer(MSRB(f), f"msrb_{i}", h)
            features.append(h)
        h = layer(conv(f, 1), "fusion", jnp.concatenate(features + [head], axis=-1))
        h = layer(conv(f), "fusion_conv", h)
    h = layer(Upsampler(f, scale), "upsampler", h)
    return from_network_range(layer(conv(3), "tail", h), 255.0, jnp.float32)


@pytest.mark.parametrize("name", sorted(PARAMETER_PATHS))
@pytest.mark.parametrize("scale", [3, 4])
def test_sr_models_are_their_named_layers_in_sequence(name, scale):
    options = PARAMETER_PATHS[name][0]
    model = create_model(name, scale=scale, **options)
    x = lr_images((2, 8, 12, 3))
    params = model.init(jax.random.key(0), x)["params"]
    np.testing.assert_array_equal(model.apply({"params": params}, x),
                                  by_hand(name, options, params, x, scale))


def test_sr_model_fields_are_keyword_only():
    """Each family adds its fields after the shared ones, so a position would not say which."""
    with pytest.raises(TypeError):
        EDSR(2, 16)  # scale 2 and 16 blocks, or 16 features?


def test_upsampling_is_declared_by_the_families():
    assert {n for n in MODELS.names() if MODELS.info(n)["upsamples"]} == {"edsr", "rcan", "msrn"}


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_models_upsample_by_scale(name, scale):
    model = create_model(name, scale=scale, **TINY[name])
    x = lr_images()
    params = model.init(jax.random.key(0), x)
    y = model.apply(params, x)
    assert y.shape == (LR[0], scale * LR[1], scale * LR[2], 3)
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_compute_keeps_float32_params(name):
    model = create_model(name, scale=2, dtype=jnp.bfloat16, **TINY[name])
    x = lr_images()
    params = model.init(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    y = model.apply(params, x)
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 24, 32, 3)
    assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


def test_pixel_shuffle_uses_pytorch_channel_order():
    """Input channel c * r^2 + i * r + j lands on output channel c at offset (i, j)."""
    r, c = 2, 3
    x = jnp.arange(c * r * r, dtype=jnp.float32).reshape(1, 1, 1, c * r * r)
    y = np.asarray(pixel_shuffle(x, r))
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                assert y[0, i, j, ch] == ch * r * r + i * r + j


def test_upsampler_rejects_unsupported_scales():
    with pytest.raises(ValueError):
        Upsampler(8, scale=5).init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))


def test_multiblock_chain_keeps_resolution_and_runs_blocks_in_sequence():
    chain = MultiblockChain(n_blocks=2, **TINY_BLOCK)
    x = lr_images((2, 24, 32, 3))
    params = chain.init(jax.random.key(0), x)["params"]
    assert set(params) == {"block_0", "block_1"}
    block = MultiblockBlock(**TINY_BLOCK)
    first = block.apply({"params": params["block_0"]}, x)
    both = block.apply({"params": params["block_1"]}, first)
    np.testing.assert_allclose(chain.apply({"params": params}, x, num_active=1), first, atol=1e-6)
    np.testing.assert_allclose(chain.apply({"params": params}, x), both, atol=1e-6)
    assert both.shape == x.shape


def test_num_active_one_gives_no_gradient_to_later_blocks():
    chain = MultiblockChain(n_blocks=2, **TINY_BLOCK)
    x, target = lr_images((2, 12, 16, 3)), lr_images((2, 12, 16, 3), seed=1)
    params = chain.init(jax.random.key(0), x)["params"]

    def loss(p, **kwargs):
        return jnp.mean(jnp.abs(chain.apply({"params": p}, x, **kwargs) - target))

    grads = jax.grad(loss)(params, num_active=1)
    assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(grads["block_1"]))
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads["block_0"]))
    # Training block_1 on block_0's frozen output: the gradient flips sides.
    grads = jax.grad(loss)(params, num_frozen=1)
    assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(grads["block_0"]))
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads["block_1"]))


def test_clamped_blocks_output_images_in_unit_range():
    chain = MultiblockChain(n_blocks=2, clamp=True, **TINY_BLOCK)
    # Inputs beyond [0, 1] make the unclamped residual output leave the range for sure.
    x = 3.0 * lr_images((2, 12, 16, 3)) - 1.0
    params = chain.init(jax.random.key(0), x)
    y = chain.apply(params, x)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    unclamped = MultiblockChain(n_blocks=2, clamp=False, **TINY_BLOCK).apply(params, x)
    assert float(unclamped.min()) < 0.0 or float(unclamped.max()) > 1.0


def test_multiblock_bfloat16_compute_keeps_float32_params():
    chain = MultiblockChain(n_blocks=2, dtype=jnp.bfloat16, **TINY_BLOCK)
    x = lr_images()
    params = chain.init(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert chain.apply(params, x).dtype == jnp.bfloat16


def test_multiblock_is_registered_as_the_chain():
    assert isinstance(create_model("multiblock", n_blocks=2), MultiblockChain)
