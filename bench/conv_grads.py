"""The three convolutions of one 3x3 layer's training step, timed alone: forward, input gradient,
kernel gradient, in JAX (XLA:CPU) and PyTorch, as GFLOP per wall second and per CPU second.

    python bench/conv_grads.py --batch 4 --size 64 --channels 128

JAX runs with each ``--cpu_convolutions`` choice (msjax/backend): ``onednn`` (msjax's FFI
handlers), ``eigen`` and ``ynnpack`` (XLA:CPU's own; YNNPACK is XLA's default). This is where
a CPU train step spends its time; which kernel is fastest differs between CPUs
(docs/benchmarks.md, with the machine each figure came from).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_time import median_seconds  # noqa: E402


def rate(fn, flops: float, repeats: int) -> str:
    timing = median_seconds(fn, 3, repeats)  # the first calls of a process run slow
    w, c = timing["seconds"], timing["cpu_seconds"]
    return f"{w * 1e3:8.1f} ms {flops / w / 1e9:6.1f} GFLOP/s {flops / c / 1e9:6.1f} GFLOP/cpu-s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cpu_convolutions", default="eigen,ynnpack,onednn",
                   help="runtime.cpu_convolutions values to time")
    args = p.parse_args(argv)
    n, s, c = args.batch, args.size, args.channels
    flops = 2.0 * n * s * s * c * c * 9

    import jax
    import numpy as np

    from msjax.backend import convolutions, xla_cpu

    rng = np.random.default_rng(0)
    x, g = (rng.random((n, s, s, c), np.float32) for _ in range(2))
    w = rng.random((3, 3, c, c), np.float32)

    def conv(x, w):
        return convolutions.dispatch(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def parts_for():  # new functions per kind: jax caches a trace by function
        return {"forward": (lambda x, w: conv(x, w), (x, w)),
                "input grad": (lambda g, w: jax.vjp(lambda x: conv(x, w), x)[1](g)[0], (g, w)),
                "kernel grad": (lambda g, x: jax.vjp(lambda w: conv(x, w), w)[1](g)[0], (g, x))}
    for conv_kind in args.cpu_convolutions.split(","):
        options = xla_cpu.options(conv_kind)
        for name, (fn, operands) in parts_for().items():
            operands = [jax.device_put(a) for a in operands]
            with convolutions.use(conv_kind):
                exe = jax.jit(fn).lower(*operands).compile(options)
            print(f"jax {conv_kind:8s} {name:12s}",
                  rate(lambda: exe(*operands).block_until_ready(), flops, args.repeats))
    try:
        import torch
    except ImportError:
        return
    tx, tg = (torch.from_numpy(a.transpose(0, 3, 1, 2).copy()) for a in (x, g))
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
    tparts = {"forward": lambda: torch.nn.functional.conv2d(tx, tw, padding=1),
              "input grad": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, padding=1),
              "kernel grad": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tg, padding=1)}
    with torch.no_grad():
        for name, fn in tparts.items():
            print(f"torch        {name:12s}", rate(fn, flops, args.repeats))


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    main()
