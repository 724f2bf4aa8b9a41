"""PSNR / SSIM against the BasicSR goldens (tests/golden), and the jnp batched versions."""

import jax
import numpy as np
import pytest

from msjax.metrics import psnr, psnr_batch, rgb_to_y, ssim, ssim_batch
from tests import golden


@pytest.fixture(scope="module")
def golden_pairs():
    return golden.metrics()


def _cfg(cfg):
    return {"crop_border": int(cfg.split("_cb")[1]), "y_channel": cfg.startswith("y")}


def test_every_pair_and_config(golden_pairs):
    pairs, meta = golden_pairs
    values = meta["values"]
    assert len(pairs) == 6 and len(meta["configs"]) == 6
    for pair, (a, b) in pairs.items():  # uint8 RGB HWC, or 2-D gray
        for cfg in meta["configs"]:
            got = {"psnr": psnr(a, b, **_cfg(cfg)), "ssim": ssim(a, b, **_cfg(cfg))}
            for name, atol_bsr, atol_f64 in [("psnr", 1e-5, 1e-9), ("ssim", 1e-7, 1e-10)]:
                key = f"{pair}_{name}_{cfg}"
                msg = f"{key}: {got[name]!r}"
                np.testing.assert_allclose(got[name], float(values[key]), rtol=0, atol=atol_bsr,
                                           err_msg=msg)
                if key + "_f64y" in values:  # Y in float64, as ours: must agree far tighter
                    np.testing.assert_allclose(got[name], float(values[key + "_f64y"]), rtol=0,
                                               atol=atol_f64, err_msg=msg)


def test_y_planes(golden_pairs):
    pairs, meta = golden_pairs
    for s, img in zip("ab", pairs["rand_37x41x3"]):
        y = meta["values"]
        np.testing.assert_allclose(rgb_to_y(img), y[f"rand_37x41x3_{s}_y_f64"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(rgb_to_y(img), y[f"rand_37x41x3_{s}_y_bsr"], rtol=0, atol=1e-4)
        # Same Y, rescaled, for images on [0, 1].
        np.testing.assert_allclose(rgb_to_y(img / 255.0, 1.0) * 255, rgb_to_y(img), atol=1e-12)


def test_data_range_one_matches_uint8(golden_pairs):
    pairs, _ = golden_pairs
    a, b = pairs["rand_37x41x3"]
    for kw in ({}, {"crop_border": 2, "y_channel": True}):
        assert psnr(a / 255.0, b / 255.0, data_range=1.0, **kw) == pytest.approx(psnr(a, b, **kw),
                                                                                abs=1e-9)
        assert ssim(a / 255.0, b / 255.0, data_range=1.0, **kw) == pytest.approx(ssim(a, b, **kw),
                                                                                abs=1e-12)


def test_identical_images(golden_pairs):
    pairs, _ = golden_pairs
    for key in ("rand_37x41x3", "gray_40x45"):
        a = pairs[key][0]
        for kw in ({}, {"crop_border": 4, "y_channel": True}):
            assert psnr(a, a, **kw) == float("inf")
            assert ssim(a, a, **kw) == pytest.approx(1.0, abs=1e-15)


def _nhwc01(img):
    x = img.astype(np.float32) / 255
    return (x[..., None] if x.ndim == 2 else x)[None]


@pytest.mark.parametrize("pair,cfg", [("rand_37x41x3", "rgb_cb0"), ("rand_37x41x3", "y_cb4"),
                                      ("gray_40x45", "rgb_cb2"), ("ast_blur", "y_cb4")])
def test_batched_jax_matches_numpy(golden_pairs, pair, cfg):
    pairs, _ = golden_pairs
    a, b = pairs[pair]
    kw = _cfg(cfg)
    p = psnr_batch(_nhwc01(a), _nhwc01(b), **kw)
    s = ssim_batch(_nhwc01(a), _nhwc01(b), **kw)
    assert p.shape == s.shape == (1,)
    np.testing.assert_allclose(float(p[0]), psnr(a, b, **kw), rtol=0, atol=1e-3)
    np.testing.assert_allclose(float(s[0]), ssim(a, b, **kw), rtol=0, atol=1e-4)


def test_batched_per_image_and_jit(golden_pairs):
    pairs, _ = golden_pairs
    a_u8, b_u8 = pairs["rand_37x41x3"]
    a, b = _nhwc01(a_u8), _nhwc01(b_u8)
    x, y = np.concatenate([a, b]), np.concatenate([b, b])
    f = jax.jit(lambda u, v: (psnr_batch(u, v), ssim_batch(u, v)))
    p, s = f(x, y)
    assert p.shape == s.shape == (2,)
    np.testing.assert_allclose(float(p[0]), psnr(a_u8, b_u8),
                               atol=1e-3)
    assert float(p[1]) == float("inf") and float(s[1]) == pytest.approx(1.0, abs=1e-6)
