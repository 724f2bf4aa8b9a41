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
(``case:eigen/ynnpack``: convolutions / reductions; msjax/xla_options.py). ``auto``, msjax's
default, is oneDNN's convolutions (msjax/kernels) on one device and Eigen's on several.
A fresh host batch is transferred every step (as in training); patch sampling is not timed.
images/s counts the training samples a step draws (the sum of its term batches).

JAX_NUM_CPU_DEVICES is read once when JAX starts, so each device count runs in its own
subprocess; this process only collects their JSON lines and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ is not an installed package


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
                   help="runtime.cpu_convolutions values to time (msjax/xla_options.py)")
    p.add_argument("--cpu_reductions", default="ynnpack",
                   help="runtime.cpu_reductions values to time, e.g. ynnpack,xla")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cases", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _csv(text, cast=int):
    return [cast(v) for v in text.split(",") if v]


def build_case(case: str, args):
    """(config, plan) of a case ``name:convolutions/reductions``; the config's model, task,
    optimizer and XLA options are what is timed."""
    from msjax.configs import quickstart
    from msjax import config_check, multiscale

    name, _, kernels = case.partition(":")
    conv, _, reductions = kernels.partition("/")
    c = quickstart.get_config()
    c.runtime.cpu_convolutions = conv or "auto"
    c.runtime.cpu_reductions = reductions or "ynnpack"
    c.data.patch = args.patch
    c.batch_size = args.batch
    if name == "multiscale":  # the finest full-multiscale stage: the quickstart's costliest
        return c, config_check.schedule(c)[-1].plan
    if name == "single":
        return c, multiscale.LevelPlan((args.batch,), operator_per_level=True)
    if name == "resnet":
        c.task.name, c.task.residual = "denoise", False
        c.model, c.model_kwargs = "resnet", {}
        return c, multiscale.LevelPlan((args.resnet_batch,))
    raise ValueError(name)


def time_case(name: str, args) -> dict:
    import functools

    import jax
    import numpy as np

    from msjax import models, parallel, steps, tasks, train, xla_options

    config, plan = build_case(name, args)
    mesh = parallel.make_mesh()
    task = tasks.make_task(config.task, operator_per_level=config.mge.operator_per_level)
    model = models.create_model(config.model, **config.model_kwargs)
    size = args.patch
    state = train.create_state(model, config, np.zeros((1, size, size, 3), np.float32), 1000, mesh)
    rng = np.random.default_rng(0)
    host = [tuple({"target": rng.random((n, size, size, 3), np.float32)} for n in plan.batch_sizes)
            for _ in range(2)]
    key = parallel.put_replicated(jax.random.PRNGKey(0), mesh)
    fn = jax.jit(functools.partial(steps.train_step, plan=plan, task=task), donate_argnums=(0,),
                 out_shardings=parallel.replicated(mesh))
    t0 = time.perf_counter()
    exe = fn.lower(state, parallel.put_batch(host[0], mesh), key).compile(
        xla_options.for_config(config))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = exe(state, parallel.put_batch(host[i % 2], mesh), key)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[args.warmup:])
    images = sum(plan.batch_sizes)  # training samples drawn per step (all terms)
    return {"case": name, "devices": mesh.size, "step_s": step_s, "steps_per_s": 1 / step_s,
            "images_per_s": images / step_s, "compile_s": compile_s}


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
    print(f"{'case':<26}{'devices':>8}{'step ms':>10}{'steps/s':>9}{'images/s':>10}"
          f"{'x vs 1':>8}{'compile s':>11}")
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = sorted((r for r in rows if r["case"] == case), key=lambda r: r["devices"])
        base = next((r for r in mine if r["devices"] == 1), mine[0])
        for r in mine:
            print(f"{case:<26}{r['devices']:>8}{1e3 * r['step_s']:>10.1f}{r['steps_per_s']:>9.2f}"
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
    for d, cases in plan.items():
        for name in cases:
            _, p = build_case(name, args)
            bad = [n for n in p.batch_sizes if n % d]
            if bad:
                raise SystemExit(f"{name}: term batches {p.batch_sizes} do not divide by {d} "
                                 "devices; change --batch / --resnet_batch or the device counts")
    best = {}
    for round_index in range(args.rounds):
        for d in sorted(plan):
            for r in spawn(d, plan[d], argv):
                key = (r["case"], r["devices"])
                if key not in best or r["step_s"] < best[key]["step_s"]:
                    best[key] = r
            print(f"... round {round_index + 1}: {d} device(s) done", file=sys.stderr, flush=True)
    print(f"CPU cores: {os.cpu_count()}; median of {args.steps} steps, fastest of {args.rounds} "
          "round(s); x vs 1: steps/s ratio")
    print_table(list(best.values()))


if __name__ == "__main__":
    from msjax.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/hugepages.py)
    main()
