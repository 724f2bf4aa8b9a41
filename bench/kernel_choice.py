"""Does ``runtime.cpu_convolutions=auto`` keep the fastest CPU convolution kernel on this machine?

    python bench/kernel_choice.py                 # ResNet b16 64 px single + multiscale, quickstart
    python bench/kernel_choice.py --rounds 5 --cases quickstart

Every case is compiled with each fixed kernel msjax has (onednn where it builds, eigen,
ynnpack) and with ``auto`` (with an empty verdict cache, so it measures its candidates itself and
keeps one); then all of them are timed side by side, one step each in turn for ``--rounds``
rounds, and the table gives the median step, what auto kept and auto's step over the fastest's.
One CPU device, as train.py runs. Cases:
- ``resnet_single``: the MGE ResNet (128 channels), denoising, one term of 16 at 64x64;
- ``resnet_multiscale``: the same with 3 coarse levels, batches 4, 16, 64, 256;
- ``quickstart``: configs/quickstart.py's finest full-multiscale stage (three terms of 8 at 64x64).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package

from bench import common  # noqa: E402

CASES = ("resnet_single", "resnet_multiscale", "quickstart")


def case_config(name: str, conv: str):
    from msjax import defaults
    from msjax.configs import quickstart

    if name == "quickstart":
        c = quickstart.get_config("official")  # three terms of 8 on its finest stage
    else:
        c = defaults.get_config()
        c.task.name, c.model, c.data.patch, c.batch_size = "denoise", "resnet", 64, 16
        c.mode = "single" if name == "resnet_single" else "multiscale"
        c.mge.levels, c.mge.finest_batch, c.mge.batch_growth = 3, 4, 4
    c.runtime.num_devices = 1
    c.runtime.cpu_convolutions = conv
    return c, (-1 if name == "quickstart" else 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--rounds", type=int, default=7, help="timed steps per kernel (median)")
    args = p.parse_args(argv)
    # auto must measure here, not reuse a verdict an earlier run left in the user's cache.
    os.environ["MSJAX_CACHE"] = tempfile.mkdtemp(prefix="msjax-kernel-choice-")
    from msjax.backend import onednn

    try:
        onednn.load()
        fixed = ["onednn", "eigen", "ynnpack"]
    except onednn.OneDNNUnavailable:
        fixed = ["eigen", "ynnpack"]
    print(f"machine: {common.machine()}; one device; median of {args.rounds} steps per kernel, "
          "timed in turn")
    print("| case | " + " | ".join(f"{k} ms" for k in fixed) + " | auto kept | auto ms | "
          "auto / fastest |")
    print("|---" * (len(fixed) + 4) + "|")
    for name in args.cases.split(","):
        steps, kept = {}, ""
        for conv in fixed + ["auto"]:
            config, stage = case_config(name, conv)
            step, _, kernels, _, _ = common.compiled_step(config, stage)
            step()  # warm-up
            steps[conv] = step
            kept = kernels if conv == "auto" else kept
        times = {k: [] for k in steps}
        for _ in range(args.rounds):
            for k, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - t0)
        median = {k: statistics.median(v) for k, v in times.items()}
        fastest = min(median[k] for k in fixed)
        print(f"| {name} | " + " | ".join(f"{1e3 * median[k]:.0f}" for k in fixed)
              + f" | {kept} | {1e3 * median['auto']:.0f} | {median['auto'] / fastest:.3f} |",
              flush=True)


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs
    os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")
    main()
