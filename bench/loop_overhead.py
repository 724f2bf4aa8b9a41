"""What the training loop adds to each full-multiscale stage's compiled step, at one step per
compiled call and at ``runtime.steps_per_call=auto``.

    python bench/loop_overhead.py                        # the quickstart, 600 steps
    python bench/loop_overhead.py --steps 1800 --set fms.stage_batch_factor=1 \\
        --set fms.stage_weights=16,2,1                   # cost_to_quality's b1_w1621 stages

For each stage it prints: the compiled one-step program alone (median seconds per call on the
device-resident data, called back to back on the state it returns, as the loop calls it, waiting
for each call) and its FLOP rate, relative to the finest
stage's (a coarse step dearer per FLOP shows there); then the loop's seconds per step at k=1 and
at k=auto (wall time from the stage's second call to its last but one, every hook included,
validation and checkpoints moved to the stage ends), with what it adds to the compiled step.
The runs use Eigen convolutions (one kernel for every program) and a fresh compilation cache folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="quickstart", help="a config in configs/")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a config field (tuples comma-separated), repeatable")
    return p.parse_args(argv)


def make_config(args, steps_per_call: str):
    import importlib

    config = importlib.import_module(f"msjax.configs.{args.config}").get_config()
    config.train.steps = args.steps
    config.runtime.cpu_convolutions = "eigen"
    config.runtime.steps_per_call = steps_per_call
    config.log.eval_every = config.log.checkpoint_every = args.steps
    for item in args.set:
        field, value = item.split("=", 1)
        node, (*parents, leaf) = config, field.split(".")
        for part in parents:
            node = node[part]
        old = node[leaf]
        node[leaf] = (tuple(type(old[0])(v) if old else float(v) for v in value.split(","))
                      if isinstance(old, tuple) else type(old)(value))
    return config


def loop_seconds(config, workdir: Path) -> tuple[list, list]:
    """(per stage: seconds per step in the loop, steps per call) of a run of ``config``."""
    from msjax import train
    from msjax.hooks import Hook

    marks: list = []  # (stage, step reached, time)

    class Clock(Hook):
        def after_steps(self, loop):
            marks.append((loop.stage, loop.step, time.perf_counter()))

    train.train_and_evaluate(config, workdir, hooks=[Clock()])
    per_step, per_call = [], []
    for stage in sorted({s for s, _, _ in marks}):
        mine = [(step, t) for s, step, t in marks if s == stage]
        # From the second call (the first compiles) to the last but one (the last ends the
        # stage with a checkpoint, and the run with validation).
        (s0, t0), (s1, t1) = mine[1], mine[-2]
        per_step.append((t1 - t0) / max(s1 - s0, 1))
        per_call.append(round((s1 - s0) / max(len(mine) - 3, 1)))
    return per_step, per_call


def compiled_alone(config) -> list[tuple[float, float]]:
    """(seconds, FLOPs) of each stage's one-step program on the device-resident data."""
    import jax

    from msjax import build, data, parallel
    from msjax.backend import measure

    exp = build.experiment(config)
    spec = exp.input
    source = data.open_source(spec, "train", scale=exp.task.scale)
    dataset = data.device.load(source, exp.mesh, patch=spec.patch,
                               resize=data.pipeline.whole_image_resize(spec),
                               scale=exp.task.scale)
    valid = build.make_validation(exp)
    state = build.initial_state(exp, valid.batch["input"].shape)
    key = parallel.put_replicated(jax.random.PRNGKey(exp.seed), exp.mesh)
    out = []
    for stage in range(len(exp.stages)):
        program = build.compile_train_step(exp, stage, state, dataset, key, dataset=dataset)
        seconds = measure.step_seconds(program, (state, dataset, key), 1, calls=200,
                                       budget_s=5.0)
        out.append((seconds, program.flops))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msjax_loop_") as tmp:
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tmp) / "xla"))
        from msjax import build

        exp = build.experiment(make_config(args, "1"))
        alone = compiled_alone(make_config(args, "1"))
        one, _ = loop_seconds(make_config(args, "1"), Path(tmp) / "one")
        auto, ks = loop_seconds(make_config(args, "auto"), Path(tmp) / "auto")
    side = exp.input.patch // exp.task.scale
    finest_rate = alone[-1][1] / alone[-1][0]
    print(f"{args.config}, {args.steps} steps{'; ' + ', '.join(args.set) if args.set else ''}")
    print("| stage | grid | compiled step | GFLOP/s (vs finest) | loop, 1 per call | "
          "loop, auto | steps per call |")
    print("|---|---|---|---|---|---|---|")
    for j, s in enumerate(exp.stages):
        grid = side // 2 ** s.plan.finest_level
        seconds, flops = alone[j]
        rate = flops / seconds
        print(f"| {j + 1} | {grid}x{grid} | {seconds * 1e3:.2f} ms | {rate / 1e9:.1f} "
              f"({rate / finest_rate:.2f}x) | {one[j] * 1e3:.2f} ms "
              f"({one[j] / seconds - 1:+.0%}) | {auto[j] * 1e3:.2f} ms "
              f"({auto[j] / seconds - 1:+.0%}) | {ks[j]} |")
    print(f"on {common.machine()}; medians of the compiled step alone, wall time in the loop")
    return 0


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    sys.exit(main())
