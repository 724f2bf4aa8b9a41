"""Peak memory and time of restoring one large image whole and in tiles, on the CPU.

    python bench/tiled_memory.py                      # 4096 x 4096, tiles of 512
    python bench/tiled_memory.py --size 2048 --tile 256

The model is the quickstart's residual CNN (48 channels, 5 layers) with random weights. Each mode
runs in its own subprocess, so each one's peak resident memory (``resource.getrusage``'s
ru_maxrss, which includes jax itself and the input / output images) is its own; a mode the
machine cannot hold shows as a failed row. Each child's address space is capped
(``resource.setrlimit(RLIMIT_AS)``, ``--cap-gib``, by default three quarters of the machine's
memory) so that a mode too big for the machine fails alone instead of pushing the whole machine
into swapping or the kernel's OOM killer. When both fit, the sums of their outputs are compared
(the images themselves are not passed between the processes). A jax process reserves more
address space than it touches (tiles of 512 at 2048 px: 1.9 GiB resident, failing under a
3 GiB cap), so a cap near a mode's peak resident memory fails it early.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine_gib() -> float:
    """Physical memory in GiB, from the page count the kernel reports."""
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def capped(gib: float):
    """A preexec function limiting the child's address space to ``gib`` GiB."""
    def limit():
        cap = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return limit


def child(size: int, tile: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from msjax import evaluate, models

    model = models.create_model("residual_cnn")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape)
                                       for a, k in zip(leaves, keys)])
    program = jax.jit(lambda y: y + model.apply(params, y))
    image = np.random.default_rng(0).random((size, size, 3), np.float32)
    start = time.perf_counter()
    out = evaluate.restore_image(lambda y, t: program(y), image, tile=tile)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "checksum": float(out.sum())}))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096, help="image side in pixels")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--cap-gib", type=float, default=round(0.75 * machine_gib(), 1),
                   help="address-space cap of each mode's process (default: 3/4 of the memory)")
    p.add_argument("--child", choices=("whole", "tiled"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.size, args.tile if args.child == "tiled" else 0)
        return
    print(f"restoring a {args.size} x {args.size} image on the CPU (quickstart residual CNN, "
          "random weights), each mode in its own process capped at "
          f"{args.cap_gib:g} GiB of address space; time includes compiling")
    print(f"{'mode':<14} {'peak RSS MiB':>12} {'seconds':>9}  note")
    results = {}
    for mode in ("whole", "tiled"):
        proc = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--tile",
                               str(args.tile), "--child", mode], capture_output=True, text=True,
                              check=False, preexec_fn=capped(args.cap_gib))
        name = mode if mode == "whole" else f"tiles of {args.tile}"
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode != 0 or not lines:
            # Under the cap an allocation that fails surfaces as whatever the library that
            # asked for memory reports (XLA, YNNPACK, numpy), so the last line is shown as is.
            err = (proc.stderr.strip().splitlines() or ["failed"])[-1][-80:]
            oom = proc.returncode < 0 or any(
                w in proc.stderr for w in ("RESOURCE_EXHAUSTED", "MemoryError", "bad_alloc",
                                           "Out of memory", "out of memory"))
            why = ("out of memory" if oom else err) + f" under the {args.cap_gib:g} GiB cap"
            print(f"{name:<14} {'-':>12} {'-':>9}  {why} (exit {proc.returncode})")
            continue
        r = results[mode] = json.loads(lines[-1])
        print(f"{name:<14} {r['peak_mib']:>12.0f} {r['seconds']:>9.1f}")
    if len(results) == 2:
        same = abs(results["whole"]["checksum"] - results["tiled"]["checksum"])
        print(f"sum of all output pixels differs by {same:.3g} between the modes")


if __name__ == "__main__":
    main()
