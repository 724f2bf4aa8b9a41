"""Cost to reach a validation PSNR: single, multiscale and full-multiscale from the same seed.

    python bench/cost_to_quality.py --out runs/cost_to_quality            # quickstart, 1800 steps
    python bench/cost_to_quality.py --steps 200 --eval_every 25 --out /tmp/ctq   # a quick check

Each mode trains the quickstart problem (deblurring the built-in photos with a residual CNN) via
``msjax.train.train_and_evaluate`` for its step budget, in ``OUT/<mode>``. The cost to reach the
target (default: the single-scale run's final PSNR minus 0.1 dB) is interpolated from the
validation rows; wall time counts training steps only (compile time is listed apart). Writes
OUT/report.png and OUT/report.md (msjax.report) and prints the table with ratios to single, and
per stage the cost of a work unit: where it exceeds single's, fixed per-step costs that do not
shrink with the image limit the wall-time gain below the work-unit gain. A rerun with the same
flags resumes or reuses finished runs.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ is not an installed package

MODES = ("single", "multiscale", "fullmultiscale")
# Within this of the single-scale run's final PSNR counts as reaching it.
DEFAULT_MARGIN_DB = 0.1


def make_config(mode: str, args):
    from msjax.configs import quickstart

    c = quickstart.get_config()
    c.mode = mode
    c.seed = args.seed
    c.train.steps = args.fms_steps if mode == "fullmultiscale" and args.fms_steps else args.steps
    c.log.eval_every = args.eval_every
    c.log.every = min(c.log.every, args.eval_every)
    c.log.checkpoint_every = c.train.steps  # checkpoints are not the point here
    for item in args.set:
        field, _, text = item.partition("=")
        node, *path = c, *field.split(".")
        for key in path[:-1]:
            node = node[key]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string such as fixed
        node[path[-1]] = value
    return c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/cost_to_quality")
    p.add_argument("--modes", default=",".join(MODES), help="the first is the reference")
    p.add_argument("--steps", type=int, default=1800, help="step budget of every mode")
    p.add_argument("--fms_steps", type=int, default=0, help="full multiscale's budget if not --steps")
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--target", type=float, default=None,
                   help=f"validation PSNR (dB); default: the first run's final minus "
                        f"{DEFAULT_MARGIN_DB}")
    p.add_argument("--smooth", type=int, default=3,
                   help="judge the target on the trailing mean of this many validation PSNRs "
                        "(training noise moves single evaluations by tenths of a dB)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override for every mode, e.g. task.level_blur=fixed (repeatable)")
    p.add_argument("--devices", type=int, default=0,
                   help="simulated CPU devices (sets JAX_NUM_CPU_DEVICES); 0: JAX's default")
    args = p.parse_args(argv)
    if args.devices:  # must precede JAX's start
        os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)

    from msjax import report, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = []
    for mode in args.modes.split(","):
        print(f"--- {mode}", flush=True)
        train.train_and_evaluate(make_config(mode, args), out / mode)
        run_dirs.append(out / mode)
    target = args.target
    if target is None:
        target = report.load_run(run_dirs[0]).valid[-1]["psnr"] - DEFAULT_MARGIN_DB
    print(report.write_report(run_dirs, out, target, args.smooth))
    print(f"\nplot and table: {out / 'report.png'}, {out / 'report.md'}")


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    main()
