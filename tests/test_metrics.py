"""PSNR / SSIM against the BasicSR goldens (metrics.npz), and the jnp batched versions."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from msjax.metrics import psnr, psnr_batch, rgb_to_y, ssim, ssim_batch

GOLDEN = Path(os.environ.get(
    "MSJAX_GOLDEN", Path(__file__).resolve().parents[1].parent / "shared" / "golden"))
pytestmark = pytest.mark.skipif(
    not (GOLDEN / "metrics.npz").exists(),
    reason=f"golden data not found at {GOLDEN} (set MSJAX_GOLDEN to the golden/ folder)")


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "metrics.npz"), json.load(open(GOLDEN / "metrics.json"))


def _cfg(cfg):
    return {"crop_border": int(cfg.split("_cb")[1]), "y_channel": cfg.startswith("y")}


def test_every_pair_and_config(golden):
    z, meta = golden
    assert len(meta["cases"]) == 6 and len(meta["configs"]) == 6
    for case in meta["cases"]:
        a, b = z[case["a"]], z[case["b"]]  # uint8 RGB HWC, or 2-D gray
        for cfg in meta["configs"]:
            got = {"psnr": psnr(a, b, **_cfg(cfg)), "ssim": ssim(a, b, **_cfg(cfg))}
            for name, atol_bsr, atol_f64 in [("psnr", 1e-5, 1e-9), ("ssim", 1e-7, 1e-10)]:
                key = f"{case['pair']}_{name}_{cfg}"
                msg = f"{key}: {got[name]!r}"
                np.testing.assert_allclose(got[name], float(z[key]), rtol=0, atol=atol_bsr,
                                           err_msg=msg)
                if key + "_f64y" in z:  # Y in float64, as ours: must agree far tighter
                    np.testing.assert_allclose(got[name], float(z[key + "_f64y"]), rtol=0,
                                               atol=atol_f64, err_msg=msg)


def test_y_planes(golden):
    z, _ = golden
    for s in "ab":
        img = z[f"rand_37x41x3_{s}"]
        np.testing.assert_allclose(rgb_to_y(img), z[f"rand_37x41x3_{s}_y_f64"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(rgb_to_y(img), z[f"rand_37x41x3_{s}_y_bsr"], rtol=0, atol=1e-4)
        # Same Y, rescaled, for images on [0, 1].
        np.testing.assert_allclose(rgb_to_y(img / 255.0, 1.0) * 255, rgb_to_y(img), atol=1e-12)


def test_data_range_one_matches_uint8(golden):
    z, _ = golden
    a, b = z["rand_37x41x3_a"], z["rand_37x41x3_b"]
    for kw in ({}, {"crop_border": 2, "y_channel": True}):
        assert psnr(a / 255.0, b / 255.0, data_range=1.0, **kw) == pytest.approx(psnr(a, b, **kw),
                                                                                abs=1e-9)
        assert ssim(a / 255.0, b / 255.0, data_range=1.0, **kw) == pytest.approx(ssim(a, b, **kw),
                                                                                abs=1e-12)


def test_identical_images(golden):
    z, _ = golden
    for key in ("rand_37x41x3_a", "gray_40x45_a"):
        a = z[key]
        for kw in ({}, {"crop_border": 4, "y_channel": True}):
            assert psnr(a, a, **kw) == float("inf")
            assert ssim(a, a, **kw) == pytest.approx(1.0, abs=1e-15)


def _nhwc01(img):
    x = img.astype(np.float32) / 255
    return (x[..., None] if x.ndim == 2 else x)[None]


@pytest.mark.parametrize("pair,cfg", [("rand_37x41x3", "rgb_cb0"), ("rand_37x41x3", "y_cb4"),
                                      ("gray_40x45", "rgb_cb2"), ("ast_blur", "y_cb4")])
def test_batched_jax_matches_numpy(golden, pair, cfg):
    z, _ = golden
    a, b = z[f"{pair}_a"], z[f"{pair}_b"]
    kw = _cfg(cfg)
    p = psnr_batch(_nhwc01(a), _nhwc01(b), **kw)
    s = ssim_batch(_nhwc01(a), _nhwc01(b), **kw)
    assert p.shape == s.shape == (1,)
    np.testing.assert_allclose(float(p[0]), psnr(a, b, **kw), rtol=0, atol=1e-3)
    np.testing.assert_allclose(float(s[0]), ssim(a, b, **kw), rtol=0, atol=1e-4)


def test_batched_per_image_and_jit(golden):
    z, _ = golden
    a, b = _nhwc01(z["rand_37x41x3_a"]), _nhwc01(z["rand_37x41x3_b"])
    x, y = np.concatenate([a, b]), np.concatenate([b, b])
    f = jax.jit(lambda u, v: (psnr_batch(u, v), ssim_batch(u, v)))
    p, s = f(x, y)
    assert p.shape == s.shape == (2,)
    np.testing.assert_allclose(float(p[0]), psnr(z["rand_37x41x3_a"], z["rand_37x41x3_b"]),
                               atol=1e-3)
    assert float(p[1]) == float("inf") and float(s[1]) == pytest.approx(1.0, abs=1e-6)
