"""Median train-step time of msjax against the same network and step in PyTorch (CPU).

    python bench/step_time.py                                # unet, resnet, srnet at 64 and 128
    python bench/step_time.py --models resnet --sizes 64 --batch 16 --devices 1,4,8

A step is what training repeats: corrupt (denoise, t-interpolation), the MGE loss of the mode,
backward, Adam. ``single`` is one term of ``--batch``; ``multiscale`` is ``--levels`` difference
terms with batches ``batch/growth * growth^k`` (the paper's growing batches), area restriction.
The batch is fixed and already on the device: this times the step, not the data pipeline.

msjax runs in a subprocess per ``--devices`` count (JAX_NUM_CPU_DEVICES must be set before JAX
starts): the batch is sharded over that many simulated CPU devices. PyTorch (the optional
``bench`` extra, CPU build) runs in this process with its default threads. Ratios below 1.0 mean
msjax is faster. ``--cpu_convolutions auto,onednn,eigen,ynnpack`` times the convolution kernels
(``runtime.cpu_convolutions``; auto measures the others on the step and keeps the fastest,
msjax/backend/cpu.py; eigen and ynnpack are XLA:CPU's own, ynnpack its default),
``--cpu_reductions ynnpack,xla`` both reduction kernels. The step is compiled by
``msjax.build.compile_train_step``, as in training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package

from bench import common  # noqa: E402


def make_parser(description=__doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="unet,resnet,srnet")
    p.add_argument("--sizes", default="64,128", help="image sides")
    p.add_argument("--modes", default="single,multiscale")
    p.add_argument("--batch", type=int, default=4, help="single-scale batch")
    p.add_argument("--levels", type=int, default=3, help="multiscale: coarse levels")
    p.add_argument("--growth", type=int, default=4, help="multiscale: batch growth per level")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    p.add_argument("--devices", default="1", help="simulated CPU device counts for msjax, e.g. 1,4")
    p.add_argument("--cpu_convolutions", default="onednn,eigen",
                   help="runtime.cpu_convolutions values to time, e.g. onednn,eigen,ynnpack")
    p.add_argument("--cpu_reductions", default="ynnpack",
                   help="runtime.cpu_reductions values to time, e.g. ynnpack,xla")
    p.add_argument("--no_torch", action="store_true", help="time msjax only")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


# The flags a worker needs (other scripts reuse measure_msjax with their own parsers' values).
WORKER_FLAGS = ("models", "sizes", "modes", "batch", "levels", "growth", "repeats", "warmup",
                "cpu_convolutions", "cpu_reductions")


def csv_list(text, cast=str):
    return [cast(v) for v in text.split(",") if v]


def cases(args):
    for model in csv_list(args.models):
        for size in csv_list(args.sizes, int):
            for mode in csv_list(args.modes):
                yield model, size, mode


def plan_batches(args, mode) -> tuple[int, ...]:
    from msjax import multiscale

    stages = multiscale.make_schedule(
        mode, steps=1, batch_size=args.batch, levels=args.levels,
        finest_batch=max(1, args.batch // args.growth), batch_growth=args.growth)
    return stages[0].plan.batch_sizes


# --- msjax -------------------------------------------------------------------------------------

def msjax_config(model_name: str, size: int, mode: str, args, conv: str = "auto",
                 reductions: str = "ynnpack"):
    """The step as a config: denoising (t-interpolation), area restriction, Adam."""
    from msjax import defaults

    c = defaults.get_config()
    c.task.name, c.model, c.mode = "denoise", model_name, mode
    c.data.patch, c.batch_size = size, args.batch
    c.mge.levels, c.mge.batch_growth = args.levels, args.growth
    c.mge.finest_batch = max(1, args.batch // args.growth)
    c.train.steps = 1000
    c.runtime.cpu_convolutions, c.runtime.cpu_reductions = conv, reductions
    return c


def worker(args):
    """Times every case on this process's devices; one JSON line per case."""
    import jax

    for model, size, mode in cases(args):
        for conv in csv_list(args.cpu_convolutions):
            for red in csv_list(args.cpu_reductions):
                run, flops, kernels, _, _ = common.compiled_step(
                    msjax_config(model, size, mode, args, conv, red))
                timing = common.median_seconds(run, args.warmup, args.repeats)
                print(json.dumps(dict(model=model, size=size, mode=mode,
                                      devices=jax.device_count(), conv=kernels or conv,
                                      reductions=red, flops=flops, **timing)), flush=True)


def measure_msjax(args, devices: int) -> list[dict]:
    """Runs the worker with ``devices`` simulated CPU devices; its records."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    argv = [f"--{k}={getattr(args, k)}" for k in WORKER_FLAGS]
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *argv],
                         env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# --- PyTorch -----------------------------------------------------------------------------------

def check_same_network(model_name: str):
    """Asserts the torch and Flax models have the same parameter tensors (sizes, as a multiset)."""
    import jax
    import jax.numpy as jnp

    from bench import torch_models
    from msjax import models

    flax_model = models.create_model(model_name)
    shapes = jax.eval_shape(lambda: flax_model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))))["params"]
    flax_sizes = sorted(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    torch_model = torch_models.build(model_name)
    torch_sizes = sorted(p.numel() for p in torch_model.parameters())
    if flax_sizes != torch_sizes:
        raise AssertionError(f"{model_name}: torch and Flax parameter tensors differ")
    return torch_model


def torch_step(model_name: str, size: int, mode: str, args):
    """The same step in PyTorch: per term corrupt, fine and coarse losses, backward, Adam."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = check_same_network(model_name).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    targets = [torch.rand(n, 3, size, size) for n in plan_batches(args, mode)]

    def restrict(x, level):  # area: 2x2 means, once per level
        for _ in range(level):
            x = F.avg_pool2d(x, 2)
        return x

    def run():
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        last = len(targets) - 1
        for k, x in enumerate(targets):
            t = torch.rand(x.shape[0])
            y = t[:, None, None, None] * x + (1 - t[:, None, None, None]) * torch.randn_like(x)
            y, x = restrict(y, k), restrict(x, k)
            loss = loss + F.mse_loss(model(y, t), x)
            if k < last:
                loss = loss - F.mse_loss(model(restrict(y, 1), t), restrict(x, 1))
        loss.backward()
        opt.step()

    return run


def measure_torch(args) -> list[dict]:
    import torch

    records = []
    for model, size, mode in cases(args):
        timing = common.median_seconds(torch_step(model, size, mode, args), args.warmup,
                                       args.repeats)
        records.append(dict(model=model, size=size, mode=mode, threads=torch.get_num_threads(),
                            **timing))
    return records


def table(jax_records, torch_records, batch: int) -> str:
    """Markdown: wall seconds, cores kept busy (CPU s / wall s) and the msjax / PyTorch ratio."""
    torch_by_case = {(r["model"], r["size"], r["mode"]): r for r in torch_records}
    lines = ["| model | size | mode | batch | devices | convolutions / reductions | msjax s | "
             "cores | torch s | cores | msjax/torch |", "|---" * 11 + "|"]
    for r in jax_records:
        ref = torch_by_case.get((r["model"], r["size"], r["mode"]))
        ours = f"{r['seconds']:.3f} | {r['cpu_seconds'] / r['seconds']:.2f}"
        theirs = (f"{ref['seconds']:.3f} | {ref['cpu_seconds'] / ref['seconds']:.2f} | "
                  f"{r['seconds'] / ref['seconds']:.2f}") if ref else "- | - | -"
        lines.append(f"| {r['model']} | {r['size']} | {r['mode']} | {batch} | {r['devices']} | "
                     f"{r['conv']} / {r['reductions']} | {ours} | {theirs} |")
    return "\n".join(lines)


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    torch_records = [] if args.no_torch else measure_torch(args)
    jax_records = [r for d in csv_list(args.devices, int) for r in measure_msjax(args, d)]
    print(f"machine: {common.machine()}")
    print(table(jax_records, torch_records, args.batch))


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    main()
