"""Builds tests/golden/ from the full public golden set (BasicSR reference values).

    python tests/golden/make_subset.py /path/to/golden

The full set is 6.7 MB, mostly images. The subset keeps every case and every stored value the
tests check, and leaves out what can be rebuilt bit for bit or is not compared:
- the astronaut photo (and its crop) comes from scikit-image, which ships it; its SHA-256 is kept
  and checked, so a different photo fails the tests instead of changing them;
- the noisy astronaut is rebuilt from its seed (checked by SHA-256);
- the two other photo pairs' second images are stored as lossless PNG;
- float64 inputs of the random cases are their uint8 images / 255 (checked equal here);
- an output larger than 24 pixels on a side keeps its rows and columns at the edges (6 each side,
  where the mirrored border acts) and 8 spread over the interior, with their indices; the
  values kept are the original ones;
- the x4 upscale of the photo crop keeps only its sampled outputs: the tests feed it their own
  x1/4 result, itself checked against the golden x1/4 values.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
EDGE, INNER, WHOLE = 6, 8, 24
SMALL_PAIRS = ("rand_37x41x3", "rand_45x33x3_indep", "gray_40x45")
CROP = (32, 288, 128, 384)


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def sample_index(n: int) -> np.ndarray | None:
    if n <= WHOLE:
        return None
    step = -(-(n - 2 * EDGE) // INNER)
    return np.unique(np.r_[0:EDGE, np.arange(EDGE, n - EDGE, step), n - EDGE:n]).astype(np.int16)


def keep_output(out: dict, key: str, array: np.ndarray) -> dict:
    rows, cols = sample_index(array.shape[0]), sample_index(array.shape[1])
    r = rows if rows is not None else np.arange(array.shape[0])
    c = cols if cols is not None else np.arange(array.shape[1])
    out[key] = array[np.ix_(r, c)]
    where = {}
    if rows is not None:
        out[key + "_rows"], where["rows"] = rows, key + "_rows"
    if cols is not None:
        out[key + "_cols"], where["cols"] = cols, key + "_cols"
    return where


def imresize_subset(src: Path, astronaut: np.ndarray) -> None:
    out, cases = {}, []
    z = np.load(src / "imresize_random.npz")
    for case in json.load(open(src / "imresize_random.json"))["cases"]:
        name = case["input"][:-len("_in")]
        u8 = z[name + "_in_u8"]
        assert np.array_equal(z[case["input"]], u8.astype(np.float64) / 255)
        out[name + "_in_u8"] = u8
        cases.append({"input": name + "_in_u8", "scale": case["scale"],
                      "out_shape": case["out_shape"], "expected_f64": case["expected_f64"],
                      "expected_bsr": case["expected_bsr"],
                      **{f"f64_{k}": v for k, v in keep_output(out, case["expected_f64"],
                                                                z[case["expected_f64"]]).items()},
                      **{f"bsr_{k}": v for k, v in keep_output(out, case["expected_bsr"],
                                                                z[case["expected_bsr"]]).items()}})
    full = np.load(src / "imresize_photo_full.npz")
    crop = np.load(src / "imresize_photo_crop.npz")
    assert np.array_equal(full["astronaut_u8"], astronaut)
    assert np.array_equal(crop["astronaut_crop_u8"], astronaut[CROP[0]:CROP[1], CROP[2]:CROP[3]])
    photo = [("astronaut", full, "astronaut_down4", 0.25, None),
             ("astronaut_crop", crop, "astronaut_crop_down4", 0.25, None),
             ("astronaut_crop", crop, "astronaut_crop_down4_up4", 4.0, "astronaut_crop_down4")]
    for image, zz, key, scale, chained in photo:
        f64, bsr = zz[key + "_f64"], zz[key + "_bsr"]
        cases.append({"input": image, "chained_from": chained, "scale": scale,
                      "out_shape": list(f64.shape), "expected_f64": key + "_f64",
                      "expected_bsr": key + "_bsr",
                      **{f"f64_{k}": v for k, v in keep_output(out, key + "_f64", f64).items()},
                      **{f"bsr_{k}": v for k, v in keep_output(out, key + "_bsr", bsr).items()}})
    np.savez_compressed(HERE / "imresize.npz", **out)
    json.dump({"source": "see README.md", "astronaut_sha256": sha256(astronaut),
               "astronaut_crop": CROP, "cases": cases}, open(HERE / "imresize.json", "w"),
              indent=1)


def metrics_subset(src: Path, astronaut: np.ndarray) -> None:
    z = np.load(src / "metrics.npz")
    meta = json.load(open(src / "metrics.json"))
    out, pairs = {}, []
    crop = astronaut[CROP[0]:CROP[1], CROP[2]:CROP[3]]
    for case in meta["cases"]:
        pair = case["pair"]
        for key in z.files:  # every stored value of the pair (scalars, Y planes)
            if key.startswith(pair + "_") and z[key].ndim == 0:
                out[key] = z[key]
        a, b = z[case["a"]], z[case["b"]]
        entry = {"pair": pair, "a": case["a"], "b": case["b"], "a_sha256": sha256(a),
                 "b_sha256": sha256(b)}
        if pair in SMALL_PAIRS:
            out[case["a"]], out[case["b"]] = a, b
            entry["stored"] = "npz"
        elif pair == "ast_noisy":
            assert np.array_equal(a, astronaut)
            entry.update(a_from="astronaut", b_from="noise", seed=20240602, sigma=10.0)
        else:
            assert np.array_equal(a, crop)
            Image.fromarray(b).save(HERE / f"{case['b']}.png", optimize=True)
            entry.update(a_from="astronaut_crop", b_from="png")
        pairs.append(entry)
    for s in "ab":
        for suffix in ("y_f64", "y_bsr"):
            key = f"rand_37x41x3_{s}_{suffix}"
            out[key] = z[key]
    np.savez_compressed(HERE / "metrics.npz", **out)
    json.dump({"source": "see README.md", "astronaut_sha256": sha256(astronaut),
               "astronaut_crop": CROP, "configs": meta["configs"], "cases": pairs},
              open(HERE / "metrics.json", "w"), indent=1)


if __name__ == "__main__":
    import skimage.data

    source = Path(sys.argv[1])
    photo = skimage.data.astronaut()
    imresize_subset(source, photo)
    metrics_subset(source, photo)
    for f in sorted(HERE.iterdir()):
        print(f"{f.name:32s} {f.stat().st_size:>8d}")
