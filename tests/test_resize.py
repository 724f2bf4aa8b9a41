"""MATLAB-exact bicubic imresize against the BasicSR/MATLAB goldens, and restriction checks."""

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.resize import bicubic_downsample, bicubic_upsample, imresize, restrict

GOLDEN = Path(os.environ.get(
    "MSJAX_GOLDEN", Path(__file__).resolve().parents[1].parent / "shared" / "golden"))
needs_golden = pytest.mark.skipif(
    not (GOLDEN / "imresize_random.npz").exists(),
    reason=f"golden data not found at {GOLDEN} (set MSJAX_GOLDEN to the golden/ folder)")


def _load(name):
    return np.load(GOLDEN / f"{name}.npz"), json.load(open(GOLDEN / f"{name}.json"))


def _photo_input(z, expr):
    # Case inputs are expressions such as "astronaut_u8.astype(float64)/255" or an output key.
    key = expr.split()[0].split(".")[0]
    return z[key].astype(np.float64) / 255 if key.endswith("_u8") else z[key].astype(np.float64)


def _check(x64, scale, f64, bsr, x_bsr=None):
    out = imresize(x64, scale)
    assert out.shape == f64.shape and out.dtype == np.float64
    np.testing.assert_allclose(out, f64, rtol=0, atol=1e-12)
    out32 = imresize(jnp.asarray(x64, jnp.float32), scale)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32), f64, rtol=0, atol=1e-6)
    x_bsr = x64 if x_bsr is None else x_bsr  # BasicSR chains from its own float32 output
    np.testing.assert_allclose(np.asarray(imresize(jnp.asarray(x_bsr), scale)), bsr,
                               rtol=0, atol=1e-5)


@needs_golden
def test_random_cases():
    z, meta = _load("imresize_random")
    assert len(meta["cases"]) == 20
    for case in meta["cases"]:
        exp = z[case["expected_f64"]]
        assert list(exp.shape) == case["out_shape"]
        _check(z[case["input"]], case["scale"], exp, z[case["expected_bsr"]])


@needs_golden
@pytest.mark.parametrize("name", ["imresize_photo_full", "imresize_photo_crop"])
def test_photo_cases(name):
    z, meta = _load(name)
    for case in meta["cases"]:
        _check(_photo_input(z, case["input_f64"]), case["scale"], z[case["expected_f64"]],
               z[case["expected_bsr"]], x_bsr=_photo_input(z, case["input_bsr"]))


@needs_golden
def test_photo_chain_float32_end_to_end():
    z, _ = _load("imresize_photo_crop")
    x = jnp.asarray(z["astronaut_crop_u8"], jnp.float32) / 255
    out = bicubic_upsample(bicubic_downsample(x, 4), 4)
    exp = z["astronaut_crop_down4_up4_f64"]
    np.testing.assert_allclose(np.asarray(out), exp, rtol=0, atol=1e-6)


@needs_golden
def test_batch_matches_single_images():
    z, _ = _load("imresize_random")
    x = np.stack([z["r17x23x3_in"], z["r17x23x3_in"][::-1]])
    out = imresize(x, 1 / 3)
    np.testing.assert_allclose(out[0], z["r17x23x3_down3_f64"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[1], imresize(x[1], 1 / 3), rtol=0, atol=1e-15)


@pytest.mark.parametrize("shape,scale", [((7, 9, 2), 0.5), ((7, 9, 2), 1 / 3), ((12, 5, 1), 0.25),
                                         ((6, 4, 3), 2), ((5, 6, 1), 3)])
def test_constant_stays_constant(shape, scale):
    out = imresize(np.full(shape, 0.3), scale)
    np.testing.assert_allclose(out, 0.3, rtol=0, atol=1e-14)
    np.testing.assert_allclose(np.asarray(imresize(jnp.full(shape, 0.3), scale)), 0.3, atol=1e-6)


@pytest.mark.parametrize("n,scale,out", [(2, 1 / 2, 1), (3, 1 / 3, 1), (5, 1 / 4, 2),
                                         (4, 1 / 4, 1), (3, 1 / 2, 2)])
def test_tiny_inputs(n, scale, out):
    # The kernel is wider than the image here; the mirror must wrap with period 2n (BasicSR fails).
    x = np.random.default_rng(0).random((n, n, 3))
    y = imresize(x, scale)
    assert y.shape == (out, out, 3) and np.isfinite(y).all()
    c = np.full((n, n, 1), 0.7)
    np.testing.assert_allclose(imresize(c, scale).mean(), c.mean(), rtol=0, atol=1e-14)
    assert np.isfinite(np.asarray(imresize(jnp.asarray(x), scale))).all()


def test_tiny_2x2_half_is_the_mean():
    # The output sample sits at the image centre and the mirrored kernel weights both rows
    # (and both columns) equally, so a 2x2 image shrinks to its mean.
    x = np.random.default_rng(1).random((2, 2, 3))
    np.testing.assert_allclose(imresize(x, 0.5)[0, 0], x.mean(axis=(0, 1)), rtol=0, atol=1e-15)


def test_jit_and_dtype():
    x = jnp.asarray(np.random.default_rng(2).random((2, 12, 10, 3)), jnp.float32)
    f = jax.jit(imresize, static_argnums=1)
    out = f(x, 0.5)
    assert out.shape == (2, 6, 5, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(imresize(x, 0.5)), rtol=0, atol=1e-6)
    g = jax.grad(lambda v: jnp.sum(imresize(v, 2.0) ** 2))(x)  # usable inside a training loss
    assert g.shape == x.shape


def test_output_size_float_fuzz():
    # 30 * 0.1 is 3.0000000000000004 in floating point; the image still shrinks to 3 rows.
    assert imresize(np.zeros((30, 20, 1)), 0.1).shape == (3, 2, 1)


# --- restriction (MGE levels) ---------------------------------------------------------------


def _batch():
    return jnp.asarray(np.random.default_rng(3).random((2, 8, 12, 3)), jnp.float32)


@pytest.mark.parametrize("levels", [1, 2])
def test_restrict_area_is_average_pooling(levels):
    x, f = _batch(), 2**levels
    ref = nn.avg_pool(x, (f, f), strides=(f, f))
    np.testing.assert_allclose(np.asarray(restrict(x, levels, "area")), np.asarray(ref),
                               rtol=0, atol=1e-6)


def test_restrict_nearest_keeps_even_pixels():
    x = _batch()
    np.testing.assert_array_equal(np.asarray(restrict(x, 1, "nearest")), np.asarray(x[:, ::2, ::2]))
    np.testing.assert_array_equal(np.asarray(restrict(x, 2, "nearest")), np.asarray(x[:, ::4, ::4]))


def test_restrict_bilinear_preserves_constants():
    out = restrict(jnp.full((1, 8, 8, 2), 0.25), 2, "bilinear")
    assert out.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(np.asarray(out), 0.25, rtol=0, atol=1e-6)


def test_restrict_levels_zero_and_errors():
    x = _batch()
    assert restrict(x, 0) is x
    with pytest.raises(ValueError):
        restrict(jnp.zeros((1, 6, 8, 1)), 2)  # 6 does not divide by 4
    with pytest.raises(ValueError):
        restrict(x, 1, "lanczos")
