"""Training throughput against the number of simulated CPU devices, side by side in one run.

    python bench/devices.py                        # quickstart step on 1,2,4; ResNet on 1,2,4,8
    python bench/devices.py --steps 5 --devices 1,2 --resnet_devices ""   # quick look

Cases (each a compiled msjax train step, the batch sharded over the devices, parameters
replicated, XLA's all-reduce; every step waited for, as the loop does on CPU):
- quickstart ``multiscale``: configs/quickstart.py's finest full-multiscale stage (deblur with the
  operator per level, residual CNN 48 x 5, 64x64 patches, three terms of 8).
- quickstart ``single``: the same network and task, one term of 8.
- ``resnet``: the MGE ResNet (128 channels), single-scale denoising, batch 16 of 64x64.
Each case runs with every ``--cpu_convolutions`` and ``--cpu_reductions`` choice
(``case:eigen/ynnpack``: convolutions / reductions; msjax/backend). ``auto``, msjax's default,
measures its candidates on the step (oneDNN and Eigen on one device, Eigen and YNNPACK on
several) and keeps the fastest; the table names what it kept. The batch stays on the device: this
times the step, not the input (bench/input_pipeline.py times that).
images/s counts the training samples a step draws (the sum of its term batches).

JAX_NUM_CPU_DEVICES is read once when JAX starts, so each device count runs in its own
subprocess; this process only collects their JSON lines and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1,2,4", help="device counts for the quickstart step")
    p.add_argument("--resnet_devices", default="1,2,4,8", help="device counts for the ResNet "
                   "step ('' skips it)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the device counts in turn and "
                   "keep each one's fastest round (on a busy machine, load drifts over minutes)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    p.add_argument("--patch", type=int, default=64, help="image side of every case")
    p.add_argument("--batch", type=int, default=8, help="quickstart batch per term")
    p.add_argument("--resnet_batch", type=int, default=16)
    p.add_argument("--cpu_convolutions", default="auto,eigen",
                   help="runtime.cpu_convolutions values to time (msjax/backend)")
    p.add_argument("--cpu_reductions", default="ynnpack",
                   help="runtime.cpu_reductions values to time, e.g. ynnpack,xla")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cases", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _csv(text, cast=int):
    return [cast(v) for v in text.split(",") if v]


def build_case(case: str, args):
    """(config, stage index) of a case ``name:convolutions/reductions``; the config's model,
    task, optimizer and kernels are what is timed."""
    from msjax.configs import quickstart

    name, _, kernels = case.partition(":")
    conv, _, reductions = kernels.partition("/")
    c = quickstart.get_config("official")  # the three-grid schedule the cases describe
    c.runtime.cpu_convolutions = conv or "auto"
    c.runtime.cpu_reductions = reductions or "ynnpack"
    c.runtime.num_devices = 0
    c.data.patch = args.patch
    c.batch_size = args.batch
    if name == "multiscale":  # the finest full-multiscale stage: the quickstart's costliest
        return c, -1
    if name == "single":
        c.mode = "single"
        return c, 0
    if name == "resnet":
        c.task.name, c.task.residual, c.mode = "denoise", False, "single"
        c.model, c.model_kwargs, c.batch_size = "resnet", {}, args.resnet_batch
        return c, 0
    raise ValueError(name)


def time_case(name: str, args) -> dict:
    import jax

    from bench import common

    config, stage = build_case(name, args)
    step, _, kernels, compile_s, sizes = common.compiled_step(config, stage)
    timing = common.median_seconds(step, args.warmup, args.steps)
    return {"case": name, "devices": jax.device_count(), "kernels": kernels,
            "step_s": timing["seconds"], "steps_per_s": 1 / timing["seconds"],
            "images_per_s": sum(sizes) / timing["seconds"], "compile_s": compile_s}


def run_worker(args):
    for name in _csv(args.cases, str):
        print(json.dumps(time_case(name, args)), flush=True)


def spawn(devices: int, cases: list[str], argv: list[str]) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    env.pop("XLA_FLAGS", None)  # a forced host device count there would override ours
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", str(devices),
                           "--cases", ",".join(cases)], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"worker with {devices} devices failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def print_table(rows: list[dict]):
    print(f"{'case':<26}{'devices':>8}{'kernels':>9}{'step ms':>10}{'steps/s':>9}"
          f"{'images/s':>10}{'x vs 1':>8}{'compile s':>11}")
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = sorted((r for r in rows if r["case"] == case), key=lambda r: r["devices"])
        base = next((r for r in mine if r["devices"] == 1), mine[0])
        for r in mine:
            print(f"{case:<26}{r['devices']:>8}{r['kernels']:>9}{1e3 * r['step_s']:>10.1f}"
                  f"{r['steps_per_s']:>9.2f}"
                  f"{r['images_per_s']:>10.1f}{r['steps_per_s'] / base['steps_per_s']:>8.2f}"
                  f"{r['compile_s']:>11.1f}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    plan = {}
    kernels = [f"{c}/{r}" for c in _csv(args.cpu_convolutions, str)
               for r in _csv(args.cpu_reductions, str)]
    for d in _csv(args.devices):
        plan.setdefault(d, []).extend(f"{n}:{c}" for n in ("multiscale", "single") for c in kernels)
    for d in _csv(args.resnet_devices):
        plan.setdefault(d, []).extend(f"resnet:{c}" for c in kernels)
    best = {}
    for round_index in range(args.rounds):
        for d in sorted(plan):
            for r in spawn(d, plan[d], argv):
                key = (r["case"], r["devices"])
                if key not in best or r["step_s"] < best[key]["step_s"]:
                    best[key] = r
            print(f"... round {round_index + 1}: {d} device(s) done", file=sys.stderr, flush=True)
    from bench import common

    print(f"machine: {common.machine()}; median of {args.steps} steps, fastest of {args.rounds} "
          "round(s); x vs 1: steps/s ratio")
    print_table(list(best.values()))


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    main()
