"""Input rate of each data path against what the train step consumes on one H100 (on paper).

    python bench/input_pipeline.py                    # both datasets, ~3 minutes on 2 cores
    python bench/input_pipeline.py --seconds 2 --no_flops

Datasets, built in a temporary folder from the built-in photos:
- STL-10-shaped: 96 x 96 crops as a TFDS ArrayRecord dataset, prepared by TFDS's own writer
  (the tests' builder ``msjax_photo_patches/stl10_shaped``), read with ``tfds.data_source``.
- DIV2K-shaped: 2040 x 1356 PNGs in a folder (``data.source=folder``).

Paths, each cutting 96-pixel patches with flips and rotations:
- today: ``data.term_batch`` on the main thread, decoding the source image for every sample;
- host threads: ``data.HostBatches`` (images decoded once into the LRU cache, worker threads;
  setup: decoding every image once up front, as it does when they fit in the cache);
- host grain: the same step function on grain worker processes (``mp_prefetch``), each with its
  own cache filled as drawn (after a warm-up of at most 5 s), for comparison;
- device: ``data.device.step_batches`` jitted on this machine's CPU device from the uint8 dataset
  (setup: decoding every image and placing the array).

The step's consumption: FLOPs of the compiled deblur_stl10 ResNet step (XLA's cost analysis,
single-scale and each full-multiscale stage) at an assumed 200 TFLOP/s; the device sampler's own
cost on an H100 on paper is the bytes its gather moves at 3.35 TB/s (HBM3).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' TFDS builder

import numpy as np  # noqa: E402

H100_FLOPS = 200e12
H100_BYTES_PER_S = 3.35e12
PATCH = 96


def machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        text = ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("Model name")), platform.processor() or "unknown CPU")
    isa = "AVX-512" if " avx512f" in text else ("AVX2 only" if " avx2" in text else "no AVX2")
    return f"{model}, {os.cpu_count()} cores, {isa}"


# --- datasets ---------------------------------------------------------------------------------

def stl10_shaped(root: Path):
    import tensorflow_datasets as tfds

    import tfds_builders  # noqa: F401  (registers msjax_photo_patches)

    builder = tfds.builder("msjax_photo_patches/stl10_shaped", data_dir=str(root / "tfds"))
    builder.download_and_prepare(file_format="array_record")
    from msjax.data.sources import TfdsImages

    return TfdsImages(tfds.data_source("msjax_photo_patches/stl10_shaped", split="train",
                                       data_dir=str(root / "tfds"), download=False))


def div2k_shaped(root: Path, count: int):
    from PIL import Image

    from msjax import data
    from msjax.data.sources import BUILTIN_TRAIN, _skimage_photo

    folder = root / "div2k"
    folder.mkdir()
    for i in range(count):
        photo = np.asarray(_skimage_photo(BUILTIN_TRAIN[i % len(BUILTIN_TRAIN)]))
        photo = photo if photo.ndim == 3 else np.repeat(photo[..., None], 3, -1)
        img = Image.fromarray(np.ascontiguousarray(photo[..., :3])).resize((2040, 1356),
                                                                          Image.BICUBIC)
        if i >= len(BUILTIN_TRAIN):  # more images than photos: mirrored copies differ in bytes
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(folder / f"{i:04d}.png")
    return data.scan_folder(str(folder), min_side=PATCH)


# --- the paths ----------------------------------------------------------------------------------

def timed(fn, seconds: float, at_least: int = 2) -> tuple[int, float]:
    """Calls fn(i) for i = 0, 1, ... until ``seconds`` pass (at least ``at_least`` calls)."""
    start, i = time.perf_counter(), 0
    while i < at_least or time.perf_counter() - start < seconds:
        fn(i)
        i += 1
    return i, time.perf_counter() - start


def rate_today(source, sizes, seconds):
    from msjax import data

    def step(s):
        for k, n in enumerate(sizes):
            data.term_batch(source, seed=0, step=s, term=k, batch=n, patch=PATCH)
    n, t = timed(step, seconds)
    return n / t


def rate_host_threads(source, sizes, seconds):
    """(seconds to set up: decoding every image once when they fit in the cache, steps/s)."""
    from msjax import data

    start = time.perf_counter()
    with data.HostBatches(source, seed=0, patch=PATCH, batch_sizes=lambda s: sizes, start=0,
                          stop=10**6, prefetch=8) as batches:
        setup = time.perf_counter() - start
        n, t = timed(batches.get, seconds)
    return setup, n / t


_WORKER_IMAGES = {}


def _grain_step(step, source, sizes):
    from msjax import data

    images = _WORKER_IMAGES.setdefault(id(source), data.DecodedImages(source))
    return tuple(data.term_batch(images, seed=0, step=step, term=k, batch=n, patch=PATCH)
                 for k, n in enumerate(sizes))


def rate_host_grain(source, sizes, seconds, workers):
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; this script has none
        flags.FLAGS.mark_as_parsed()

    dataset = grain.MapDataset.range(10**6).map(
        functools.partial(_grain_step, source=source, sizes=sizes))
    iterator = iter(dataset.to_iter_dataset().mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=4)))
    # Warm up: every worker decodes every image it needs once.
    timed(lambda i: next(iterator), min(seconds, 5.0), at_least=4 * workers)
    n, t = timed(lambda i: next(iterator), seconds)
    return n / t


def device_dataset(source):
    """(the dataset on this machine's device, seconds to decode and place it)."""
    from msjax import parallel
    from msjax.data import device

    start = time.perf_counter()
    dataset = device.load(source, parallel.make_mesh(1), patch=PATCH)
    return dataset, time.perf_counter() - start


def rate_device(dataset, sizes, seconds):
    import jax
    import jax.numpy as jnp

    from msjax.data import device

    cut = jax.jit(functools.partial(device.step_batches, batch_sizes=tuple(sizes), patch=PATCH))
    key, step = jax.random.PRNGKey(0), jnp.int32(0)
    jax.block_until_ready(cut(dataset, key, step))
    n, t = timed(lambda i: jax.block_until_ready(cut(dataset, key, step + i)), seconds,
                 at_least=5)
    return n / t


def device_sampler_on_paper(sizes) -> float:
    """Seconds one step's sampling takes on an H100 on paper: the gather reads each patch's uint8
    pixels and writes them as float32 (XLA's cost analysis counts the whole dataset as read by a
    gather, which a GPU gather does not do)."""
    return sum(sizes) * PATCH * PATCH * 3 * (1 + 4) / H100_BYTES_PER_S


# --- what the step consumes -----------------------------------------------------------------------

def step_flops(mode: str) -> list[tuple[str, tuple[int, ...], float]]:
    """(stage label, term batches, FLOPs of one compiled step) of deblur_stl10 in ``mode``."""
    from bench import common
    from msjax import build
    from msjax.configs import deblur_stl10

    config = deblur_stl10.get_config()
    config.mode = mode
    config.runtime.cpu_convolutions = "eigen"  # XLA's own convolutions: all FLOPs visible
    config.runtime.num_devices = 1
    out = []
    for j, stage in enumerate(build.stages(config)):
        _, flops, _, _, sizes = common.compiled_step(config, j)
        grid = PATCH // 2**stage.plan.finest_level
        label = "single" if mode == "single" else f"FMS {j} ({grid}px)"
        out.append((label, tuple(sizes), flops))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="timing per row")
    p.add_argument("--div2k_images", type=int, default=8)
    p.add_argument("--grain_workers", type=int, default=2)
    p.add_argument("--no_flops", action="store_true", help="skip compiling the train steps")
    p.add_argument("--no_grain", action="store_true")
    args = p.parse_args(argv)

    print(f"machine: {machine()}")
    schedules = [("single", (16,))]
    if not args.no_flops:
        print("compiling deblur_stl10's ResNet steps for their FLOPs ...", flush=True)
        schedules = [(label, sizes, flops) for mode in ("single", "fullmultiscale")
                     for label, sizes, flops in step_flops(mode)]
    else:
        schedules = [("single", (16,), float("nan")), ("FMS 0 (12px)", (128,), float("nan"))]

    root = Path(tempfile.mkdtemp(prefix="msjax_input_bench_"))
    rows = []
    try:
        print("building the datasets ...", flush=True)
        stl = stl10_shaped(root)
        div2k = div2k_shaped(root, args.div2k_images)
        cases = [("STL-10-shaped ArrayRecord", stl, schedules),
                 ("DIV2K-shaped folder", div2k, [("batch 16", (16,), float("nan"))])]
        for name, source, stage_rows in cases:
            dataset, device_setup = device_dataset(source)
            for label, sizes, flops in stage_rows:
                print(f"timing {name}, {label} ...", flush=True)
                today = rate_today(source, sizes, args.seconds)
                host_setup, host_rate = rate_host_threads(source, sizes, args.seconds)
                grain_rate = (float("nan") if args.no_grain else
                              rate_host_grain(source, sizes, args.seconds, args.grain_workers))
                rows.append(dict(name=name, label=label, sizes=sizes, today=today,
                                 host_setup=host_setup, host=host_rate, grain=grain_rate,
                                 device_setup=device_setup,
                                 device=rate_device(dataset, sizes, args.seconds),
                                 paper=1.0 / device_sampler_on_paper(sizes),
                                 consume=H100_FLOPS / flops if flops == flops else float("nan")))
            del dataset
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"Input rate, steps (all terms' batches) per second, on {machine()}; "
          f"patches {PATCH}x{PATCH}; H100 on paper at {H100_FLOPS / 1e12:.0f} TFLOP/s, "
          f"{H100_BYTES_PER_S / 1e12:.2f} TB/s")
    print("| dataset | schedule | term batches | today | host threads (setup s) | x today | "
          "host grain | device, this CPU (setup s) | device sampler, H100 paper | "
          "step consumes, H100 paper | device input-bound on H100? |")
    print("|---" * 11 + "|")
    for r in rows:
        # The sampler runs inside the step: its share of the step's time on paper.
        bound = "-" if r["consume"] != r["consume"] else (
            f"{'no' if r['paper'] > r['consume'] else 'yes'} "
            f"(sampler {r['consume'] / r['paper']:.2%} of the step)")
        print(f"| {r['name']} | {r['label']} | {'+'.join(map(str, r['sizes']))} | "
              f"{r['today']:.2f} | {r['host']:.1f} ({r['host_setup']:.1f}) | "
              f"{r['host'] / r['today']:.0f}x | {r['grain']:.1f} | "
              f"{r['device']:.1f} ({r['device_setup']:.1f}) | {r['paper']:.0f} | "
              f"{r['consume']:.0f} | {bound} |")
    sums = ", ".join(f"{r['label']}: {sum(r['sizes'])}" for r in rows)
    print(f"\npatches per second = steps per second x the term batches' sum ({sums})")


if __name__ == "__main__":
    main()
