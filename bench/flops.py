"""Achieved FLOP/s of the compiled train step as a fraction of this machine's float32 matmul peak.

    python bench/flops.py                                     # resnet, unet, srnet at 64, batch 4
    python bench/flops.py --models resnet --batch 16 --devices 1,4,8

The step's FLOPs come from XLA's cost analysis of the compiled msjax step (summed over devices);
its time is the median measured by bench/step_time.py (same flags). The peak is the best of a
large float32 matrix product timed with jax.numpy, numpy and (if installed) PyTorch. The PyTorch
step of the same network is rated with the same FLOP count (the same network does the same work).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import step_time  # noqa: E402


def matmul_peaks(n: int, repeats: int) -> dict[str, float]:
    """FLOP/s of an n x n float32 matrix product, per library (median of ``repeats``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    flops = 2.0 * n**3
    a = np.random.default_rng(0).random((n, n), np.float32)
    candidates = {"numpy": lambda: a @ a}
    ja = jax.device_put(a)
    jmatmul = jax.jit(jnp.matmul)
    candidates["jax"] = lambda: jmatmul(ja, ja).block_until_ready()
    try:
        import torch

        ta = torch.from_numpy(a)
        candidates["torch"] = lambda: ta @ ta
    except ImportError:
        pass
    peaks = {}
    for name, fn in candidates.items():
        fn()  # compile / warm caches
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        peaks[name] = flops / statistics.median(times)
    return peaks


def main(argv=None):
    parser = step_time.make_parser(__doc__)
    parser.set_defaults(sizes="64", modes="single")
    parser.add_argument("--matmul", type=int, default=2048, help="matmul side for the peak")
    args = parser.parse_args(argv)
    step_time.check_divisible(args)

    peaks = matmul_peaks(args.matmul, max(args.repeats, 3))
    peak = max(peaks.values())
    print("float32 matmul peak: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items())
          + f" GFLOP/s (n={args.matmul}); using {peak / 1e9:.1f}")

    records = [r for d in step_time.csv_list(args.devices, int)
               for r in step_time.measure_msjax(args, d)]
    torch_records = [] if args.no_torch else step_time.measure_torch(args)
    torch_seconds = {(r["model"], r["size"], r["mode"]): r["seconds"] for r in torch_records}
    print("| model | size | mode | batch | devices | GFLOP/step | msjax GFLOP/s | of peak | "
          "torch GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        achieved = r["flops"] / r["seconds"]
        ref = torch_seconds.get((r["model"], r["size"], r["mode"]))
        torch_cols = (f"{r['flops'] / ref / 1e9:.1f} | {r['flops'] / ref / peak:.0%}" if ref
                      else "- | -")
        print(f"| {r['model']} | {r['size']} | {r['mode']} | {args.batch} | {r['devices']} | "
              f"{r['flops'] / 1e9:.2f} | {achieved / 1e9:.1f} | {achieved / peak:.0%} | "
              f"{torch_cols} |")


if __name__ == "__main__":
    main()
