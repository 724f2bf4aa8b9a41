"""Achieved FLOP/s of the compiled train step as a fraction of this machine's float32 matmul peak.

    python bench/flops.py                                     # resnet, unet, srnet at 64, batch 4
    python bench/flops.py --models resnet --batch 16 --devices 1,4,8

The step's FLOPs come from XLA's cost analysis of the compiled msjax step (summed over devices);
its time is the median measured by bench/step_time.py (same flags). The peak is the best of a
large float32 matrix product timed with jax.numpy, numpy and (if installed) PyTorch. The PyTorch
step of the same network is rated with the same FLOP count (the same network does the same work).
Beside the wall-time fraction, "per CPU s" compares FLOP per CPU second of the step with the
matmul's: it ignores idle cores and is the steadier figure on a machine shared with other jobs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, step_time  # noqa: E402


def matmul_peaks(n: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(FLOP per wall second, FLOP per CPU second) of an n x n float32 matrix product, per
    library (medians of ``repeats``)."""
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
        timing = common.median_seconds(fn, 0, repeats)
        peaks[name] = (flops / timing["seconds"], flops / timing["cpu_seconds"])
    return peaks


def main(argv=None):
    parser = step_time.make_parser(__doc__)
    parser.set_defaults(sizes="64", modes="single")
    parser.add_argument("--matmul", type=int, default=2048, help="matmul side for the peak")
    args = parser.parse_args(argv)

    peaks = matmul_peaks(args.matmul, max(args.repeats, 3))
    peak = max(wall for wall, _ in peaks.values())
    cpu_peak = max(cpu for _, cpu in peaks.values())
    print(f"float32 matmul n={args.matmul}, GFLOP/s (per CPU s): " + ", ".join(
        f"{k} {w / 1e9:.1f} ({c / 1e9:.1f})" for k, (w, c) in peaks.items()))

    records = [r for d in step_time.csv_list(args.devices, int)
               for r in step_time.measure_msjax(args, d)]
    torch_records = [] if args.no_torch else step_time.measure_torch(args)
    torch_by_case = {(r["model"], r["size"], r["mode"]): r for r in torch_records}
    # "of peak" is wall time against the best matmul's wall rate: idle cores count against it.
    # "per CPU s" compares work per CPU second, steadier when other jobs share the machine.
    print(f"peak {peak / 1e9:.1f} GFLOP/s, {cpu_peak / 1e9:.1f} GFLOP per CPU s")
    print("| model | size | mode | batch | devices | convolutions / reductions | GFLOP/step | "
          "msjax GFLOP/s | of peak | per CPU s | torch GFLOP/s | of peak | per CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def rates(flops, r):
        return (f"{flops / r['seconds'] / 1e9:.1f} | {flops / r['seconds'] / peak:.0%} | "
                f"{flops / r['cpu_seconds'] / cpu_peak:.0%}")

    for r in records:
        ref = torch_by_case.get((r["model"], r["size"], r["mode"]))
        print(f"| {r['model']} | {r['size']} | {r['mode']} | {args.batch} | {r['devices']} | "
              f"{r['conv']} / {r['reductions']} | {r['flops'] / 1e9:.2f} | "
              f"{rates(r['flops'], r)} | "
              f"{rates(r['flops'], ref) if ref else '- | - | -'} |")


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    main()
