"""The golden reference data the tests need, in the repository (README.md says what and why).

Photos that scikit-image ships, and the noisy one rebuilt from its seed, are checked against the
SHA-256 of the arrays the reference values were computed on, so a changed photo fails loudly."""

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _checked(a, expected, what):
    got = _sha256(a)
    assert got == expected, (f"{what} differs from the image the golden values were computed "
                             f"on (SHA-256 {got}, expected {expected})")
    return a


def astronaut(meta, crop=False):
    import skimage.data

    photo = _checked(skimage.data.astronaut(), meta["astronaut_sha256"],
                     "skimage.data.astronaut()")
    if crop:
        r0, r1, c0, c1 = meta["astronaut_crop"]
        photo = photo[r0:r1, c0:c1]
    return photo


def imresize():
    """(arrays, meta): every case with its input image (uint8) and its expected outputs, which
    may be sampled: ``case['f64_rows']`` etc. name index arrays when they are."""
    return np.load(HERE / "imresize.npz"), json.load(open(HERE / "imresize.json"))


def sampled(z, case, variant, out):
    """``out`` at the pixels the golden ``variant`` ('f64' or 'bsr') output keeps."""
    rows = z[case[f"{variant}_rows"]] if f"{variant}_rows" in case else slice(None)
    cols = z[case[f"{variant}_cols"]] if f"{variant}_cols" in case else slice(None)
    out = np.asarray(out)
    return out[rows][:, cols]


def imresize_input(z, meta, case):
    """The case's input as uint8 (random images in the npz, photos from scikit-image)."""
    if case["input"] == "astronaut":
        return astronaut(meta)
    if case["input"] == "astronaut_crop":
        return astronaut(meta, crop=True)
    return z[case["input"]]


def metrics():
    """(pairs, meta): pairs maps name -> (a, b) uint8 arrays; meta['values'] maps the golden keys
    ('<pair>_<psnr|ssim>_<cfg>[_f64y]', Y planes) to their arrays."""
    z = np.load(HERE / "metrics.npz")
    meta = json.load(open(HERE / "metrics.json"))
    pairs = {}
    for case in meta["cases"]:
        if case.get("stored") == "npz":
            a, b = z[case["a"]], z[case["b"]]
        else:
            a = astronaut(meta, crop=case["a_from"] == "astronaut_crop")
            if case["b_from"] == "noise":
                noise = np.random.default_rng(case["seed"]).normal(0, case["sigma"], a.shape)
                b = np.clip(np.round(a + noise), 0, 255).astype(np.uint8)
            else:
                b = np.asarray(Image.open(HERE / f"{case['b']}.png"))
        pairs[case["pair"]] = (_checked(a, case["a_sha256"], case["a"]),
                               _checked(b, case["b_sha256"], case["b"]))
    meta["values"] = {k: z[k] for k in z.files}
    return pairs, meta
