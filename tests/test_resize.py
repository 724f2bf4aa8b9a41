"""MATLAB-exact bicubic imresize against the BasicSR/MATLAB goldens (tests/golden), and
restriction checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax.resize import bicubic_downsample, bicubic_upsample, imresize, restrict
from tests import golden

Z, META = golden.imresize()
RANDOM = [c for c in META["cases"] if c["input"].endswith("_u8")]
PHOTO = [c for c in META["cases"] if not c["input"].endswith("_u8")]


def _check(case, x64, x_bsr=None):
    """Our float64 and float32 outputs against the golden float64 (MATLAB's algorithm) and
    BasicSR's float32 values, at every pixel the golden data keep."""
    scale = case["scale"]
    f64, bsr = Z[case["expected_f64"]], Z[case["expected_bsr"]]
    out = imresize(x64, scale)
    assert list(out.shape) == case["out_shape"] and out.dtype == np.float64
    np.testing.assert_allclose(golden.sampled(Z, case, "f64", out), f64, rtol=0, atol=1e-12)
    out32 = imresize(jnp.asarray(x64, jnp.float32), scale)
    assert out32.dtype == jnp.float32 and list(out32.shape) == case["out_shape"]
    np.testing.assert_allclose(golden.sampled(Z, case, "f64", out32), f64, rtol=0, atol=1e-6)
    x_bsr = x64 if x_bsr is None else x_bsr  # BasicSR chains from its own float32 output
    np.testing.assert_allclose(golden.sampled(Z, case, "bsr", imresize(jnp.asarray(x_bsr), scale)),
                               bsr, rtol=0, atol=1e-5)
    return out, out32


def test_the_golden_data_cover_every_case():
    assert len(RANDOM) == 20 and len(PHOTO) == 3
    assert {(c["input"], c["scale"]) for c in RANDOM} == {
        (f"{name}_in_u8", s) for name in ("r16x16x3", "r17x23x3", "r33x20x1", "r48x48x3")
        for s in (0.5, 1 / 3, 0.25, 2, 3)}


@pytest.mark.parametrize("case", RANDOM, ids=lambda c: c["expected_f64"])
def test_random_cases(case):
    _check(case, Z[case["input"]].astype(np.float64) / 255)


def test_photo_cases():
    outputs = {}
    for case in PHOTO:
        if case["chained_from"] is None:
            x = golden.imresize_input(Z, META, case).astype(np.float64) / 255
            x_bsr = None
        else:  # the x4 upscale of the x1/4 result, each variant chained from its own
            x, x_bsr = outputs[case["chained_from"]]
        out, out32 = _check(case, x, x_bsr)
        outputs[case["expected_f64"][:-len("_f64")]] = (out, out32)


def test_photo_chain_float32_end_to_end():
    case = next(c for c in PHOTO if c["chained_from"] is not None)
    x = jnp.asarray(golden.imresize_input(Z, META, case), jnp.float32) / 255
    out = bicubic_upsample(bicubic_downsample(x, 4), 4)
    assert out.shape == (256, 256, 3)
    np.testing.assert_allclose(golden.sampled(Z, case, "f64", out), Z[case["expected_f64"]],
                               rtol=0, atol=1e-6)


def test_batch_matches_single_images():
    x = Z["r17x23x3_in_u8"].astype(np.float64) / 255
    x = np.stack([x, x[::-1]])
    out = imresize(x, 1 / 3)
    np.testing.assert_allclose(out[0], Z["r17x23x3_down3_f64"], rtol=0, atol=1e-12)
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
