"""Cost to reach single-scale quality: single vs full-multiscale settings, over seeds and budgets.

    python bench/cost_to_quality.py --out runs/ctq_deblur --set task.level_blur=fixed
    python bench/cost_to_quality.py --out runs/ctq_denoise --set task.name=denoise
    python bench/cost_to_quality.py --budgets 1800,7200 --seeds 42,43,44 ...  # the measured runs
    python bench/cost_to_quality.py --budgets 200 --seeds 1 --eval_every 25 --out /tmp/ctq  # quick

The measured runs and their commands are in docs/cost_to_quality.md. Every setting trains the
quickstart network (a residual CNN on 64x64 patches of the built-in photos) through
``msjax.train.train_and_evaluate`` with the same step budget and seed, starting from ``STUDY_BASE``
(three grids, 4:2:1: the schedule every published study started from; the setting ``quickstart``
is configs/quickstart.py as it ships), into
``OUT/<budget>/<seed>/<setting>``; a setting's ``steps_scale=F`` gives it F times the budget
instead. The first setting is the reference (single scale). Its target
is its final validation PSNR minus ``--margin`` dB; the cost of a run to reach it is the first
point where the trailing mean of ``--smooth`` validation PSNRs does, interpolated between
evaluations. Wall time counts training steps only (compiling is listed apart). A second,
lower target (``--lower``, default 0.9) is the corrupted input's PSNR plus that share of single's
final gain over it: where full multiscale leads by an order of magnitude, and where the lead ends.
The summary names each setting's receptive field (``receptive_field``): a network that sees less
than the blur's support cannot learn the deblurring from coarse grids alone.

Per budget and seed, OUT/<budget>/<seed>/report-<runs>.{md,png} (msjax.report: PSNR against wall time
and FLOPs, the target marked); over seeds, OUT/summary.md: per budget and setting the median and
range of the final PSNR against single's, and of the wall-time and FLOP gains to the target. A
rerun with the same flags reuses finished runs, so budgets and seeds can be added later.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> overrides. fms: the official one cosine over the run, stages 4:2:1 of the budget on
# 16/32/64 px. The rest hold the full rate with a cosine over the last fifth (constant_decay).
# c2f: fms.max_terms=1, each stage one single-scale term on its grid. b1: fms.stage_batch_factor=1,
# the same batch on every grid (official: doubling per coarser stage). xF: F times the budget.
_CD = {"mode": "fullmultiscale", "train.lr_schedule": "constant_decay"}
_C2F = {**_CD, "fms.max_terms": 1}
_B1 = {**_C2F, "fms.stage_batch_factor": 1}
_ADAPTIVE = {"fms.schedule": "adaptive", "fms.window": 100}
# The schedule every setting starts from, and the base of every published study: the quickstart's
# network and data on three grids, 4:2:1, every MGE term, one cosine, each grid's own blur scaled
# with it (the quickstart before it took the two grids these studies found for deblurring).
STUDY_BASE = {"mode": "fullmultiscale", "mge.levels": 2, "fms.stage_weights": (4, 2, 1),
              "fms.max_terms": 0, "fms.lr_schedule": "", "mge.operator_per_level": True,
              "task.level_blur": "scaled"}
SETTINGS = {
    "single": {"mode": "single"},
    "fms": {"mode": "fullmultiscale"},
    "fms_cd": _CD,
    "fms_restarts": {"mode": "fullmultiscale", "train.lr_schedule": "stage_restarts"},
    "fms_adaptive": {**_CD, **_ADAPTIVE, "fms.min_share": 0.25},
    "fms_w16": {**_CD, "fms.stage_weights": (16, 4, 1)},
    "fms_w16_c2f": {**_C2F, "fms.stage_weights": (16, 4, 1)},
    "fms_w16_adaptive": {**_CD, **_ADAPTIVE, "fms.stage_weights": (16, 4, 1),
                         "fms.min_share": 0.25},
    "c2f_w1621": {**_C2F, "fms.stage_weights": (16, 2, 1)},
    "c2f_w842": {**_C2F, "fms.stage_weights": (8, 4, 2)},
    "c2f_w844": {**_C2F, "fms.stage_weights": (8, 4, 4)},
    "c2f_l1_w41": {**_C2F, "mge.levels": 1, "fms.stage_weights": (4, 1)},
    "fms_l1_w41": {**_CD, "mge.levels": 1, "fms.stage_weights": (4, 1)},  # with the MGE terms
    # configs/quickstart.py as it ships: c2f_l1_w41 with the blur fixed in pixels on both grids.
    "quickstart": {**_C2F, "mge.levels": 1, "fms.stage_weights": (4, 1),
                   "task.level_blur": "fixed"},
    "c2f_adaptive": {**_C2F, **_ADAPTIVE, "fms.stage_weights": (16, 2, 1), "fms.min_share": 0.5,
                     "fms.min_improvement": 0.005},
    "b1_w1621": {**_B1, "fms.stage_weights": (16, 2, 1)},
    "b1_w1621_x1.5": {**_B1, "fms.stage_weights": (16, 2, 1), "steps_scale": 1.5},
    "b1_w1621_x2": {**_B1, "fms.stage_weights": (16, 2, 1), "steps_scale": 2},
    "b1_w842_x2": {**_B1, "fms.stage_weights": (8, 4, 2), "steps_scale": 2},
}
DEFAULT_SETTINGS = "single,fms_w16_c2f,b1_w1621_x1.5,c2f_adaptive"
DEFAULT_MARGIN_DB = 0.1
DEFAULT_LOWER = 0.9
LOCAL_SHARE = 1e-3  # receptive_field: a gradient below this share of the largest is not local


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as fixed


def parse_overrides(items) -> dict:
    out = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"error: override {item!r} is not FIELD=VALUE")
        out[field.strip()] = _value(text.strip())
    return out


def parse_setting(item: str) -> tuple[str, dict]:
    """NAME:FIELD=VALUE,... -> (NAME, overrides)."""
    name, _, body = item.partition(":")
    # Commas inside a value, as in fms.stage_weights=(8,2,1), do not start a new field.
    return name, parse_overrides(re.split(r",(?=\s*[A-Za-z_][\w.]*=)", body) if body else [])


def make_config(overrides: dict, steps: int, seed: int, eval_every: int):
    from msjax import cli, rundir
    from msjax.configs import quickstart

    overrides = dict(overrides)
    # Not a config field: the setting's own step budget as a multiple of single's.
    scale = float(overrides.pop("steps_scale", 1.0))
    if scale <= 0:
        raise SystemExit(f"error: steps_scale={scale} must be positive")
    c = quickstart.get_config()
    for field, value in STUDY_BASE.items():
        _set(c, field, value)
    c.seed = seed
    c.train.steps = max(int(round(steps * scale)), 1)
    c.log.eval_every = eval_every
    c.log.every = min(c.log.every, eval_every)
    c.log.checkpoint_every = steps  # checkpoints are not the point here
    c.log.image_count = 0
    if "model" in overrides:  # another network: its own defaults unless given
        c.model_kwargs = dict(overrides.pop("model_kwargs", {}))
    known = set(rundir.flat(c))
    for field, value in overrides.items():
        if field not in known and not field.startswith("model_kwargs."):
            raise SystemExit(f"error: {field}: no such config field"
                             f"{cli.nearest_field_hint(field, known)} (msjax/defaults.py has "
                             "every field)")
        _set(c, field, value)
    return c


def _set(config, field: str, value) -> None:
    node, *path = config, *field.split(".")
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _stats(values) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f} to {max(values):.2f})"


def lower_target(ref_row: dict, share: float) -> float:
    """The PSNR at ``share`` of single's final gain over the corrupted input."""
    return ref_row["input_psnr"] + share * (ref_row["final_psnr"] - ref_row["input_psnr"])


def receptive_field(config, probe: int = 96) -> str:
    """The side of the input square one output pixel depends on, measured: the support of the
    gradient of the centre output pixel with respect to the input, parameters drawn at random
    (the zero-initialised last layer would hide every path). Per-sample layer norm makes every
    pixel count a little: then the local reach is named beside "image-wide statistics";
    "image-wide" when even the strong part of the gradient reaches the probe's border
    (attention, GroupNorm over a UNet's coarse levels, or a field beyond the probe)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from msjax import build

    exp = build.experiment(config, num_devices=1)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(keys[0], (1, probe, probe, 3))
    t = jnp.full((1,), 0.5)
    variables = exp.model.init(keys[1], x, t)
    leaves, tree = jax.tree_util.tree_flatten(variables)
    noise = jax.random.split(keys[2], len(leaves))
    variables = jax.tree_util.tree_unflatten(tree, [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, noise)])
    c = probe * exp.task.scale // 2

    def centre(image):
        return exp.model.apply(variables, image, t)[0, c, c].sum()

    grad = np.abs(np.asarray(jax.grad(centre)(x)[0])).max(axis=-1)

    def extent(support):
        rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
        if min(rows[0], cols[0]) == 0 or max(rows[-1], cols[-1]) == probe - 1:
            return None
        side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1  # thresholds can cut a corner
        return f"{side}x{side}"

    whole = extent(grad > 0)
    if whole:
        return whole
    # Image-wide statistics spread a weak gradient (about 1/pixels) over the whole probe; the
    # convolutions' own reach stands out of it by orders of magnitude.
    local = extent(grad > LOCAL_SHARE * grad.max())
    return f"{local} + image-wide statistics" if local else "image-wide"


def summarize(results: dict, settings: list[str], margin: float, lower: float | None = None,
              fields: dict | None = None) -> str:
    """results[(budget, seed, setting)] = msjax.report.summary row with the target costs; with
    ``lower``, results[(budget, seed, setting, "lower")] the same against the lower target.
    ``fields``: setting -> receptive field, a column when given."""
    targets = [("final", f"single's final validation PSNR minus {margin} dB", "")]
    if lower is not None:
        targets.append(("lower", f"the corrupted input's PSNR plus {lower:.0%} of single's "
                                 "final gain over it", "lower"))
    lines = []
    for _, text, tag in targets:
        lines += _table(results, settings, tag, text, fields)
    return "\n".join(lines)


def _table(results, settings, tag, text, fields) -> list[str]:
    def get(key):
        return results.get(key + (tag,) if tag else key)

    budgets = sorted({k[0] for k in results})
    field_head, field_rule = (" receptive field |", "---|") if fields else ("", "")
    lines = [f"Target: {text}. Gains: single's cost to the target over the setting's; median "
             "(range) over seeds.\n",
             f"| budget | setting |{field_head} seeds | reached | final PSNR - single's (dB) | "
             "wall s to target | wall-time gain | FLOP gain |",
             f"|---|---|{field_rule}---|---|---|---|---|---|"]
    for budget in budgets:
        seeds = sorted({k[1] for k in results if k[0] == budget})
        for name in settings:
            have = [s for s in seeds if get((budget, s, name)) and get((budget, s, settings[0]))]
            if not have:
                continue
            ref = {s: get((budget, s, settings[0])) for s in have}
            row = {s: get((budget, s, name)) for s in have}
            reached = sum(math.isfinite(row[s]["seconds_to_target"]) for s in have)
            delta = [row[s]["final_psnr"] - ref[s]["final_psnr"] for s in have]
            secs = [row[s]["seconds_to_target"] for s in have]
            gain = {c: [ref[s][f"{c}_to_target"] / row[s][f"{c}_to_target"]
                        if math.isfinite(row[s][f"{c}_to_target"]) else math.nan for s in have]
                    for c in ("seconds", "flops")}
            missed = [f"{d:+.2f}" for s, d in zip(have, delta)
                      if not math.isfinite(row[s]["seconds_to_target"])]
            note = f" (missed: {', '.join(missed)} dB)" if missed else ""
            field = f" {fields.get(name, '-')} |" if fields else ""
            lines.append(f"| {budget} | {name} |{field} {len(have)} | {reached}/{len(have)}{note} | "
                         f"{_stats(delta)} | {_stats(secs)} | {_stats(gain['seconds'])} | "
                         f"{_stats(gain['flops'])} |")
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/cost_to_quality")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="comma-separated, the first is the reference; known: "
                        + ", ".join(SETTINGS))
    p.add_argument("--setting", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                   help="define or redefine a setting, e.g. fms_long:mode=fullmultiscale,"
                        "train.lr_schedule=constant_decay,fms.stage_weights=(8,2,1)")
    p.add_argument("--budgets", default="1800", help="step budgets, comma-separated")
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--eval_every", type=int, default=0,
                   help="validation interval (default: budget / 36)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN_DB)
    p.add_argument("--lower", type=float, default=DEFAULT_LOWER,
                   help="the lower target's share of single's final gain over the input")
    p.add_argument("--smooth", type=int, default=3,
                   help="judge the target on the trailing mean of this many validation PSNRs "
                        "(training noise moves single evaluations by tenths of a dB)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override for every setting, e.g. task.level_blur=fixed")
    p.add_argument("--no_train", action="store_true",
                   help="only summarize the finished runs under --out (missing ones are left out)")
    p.add_argument("--devices", type=int, default=0,
                   help="simulated CPU devices (sets JAX_NUM_CPU_DEVICES); 0: JAX's default")
    args = p.parse_args(argv)
    if args.devices:  # must precede JAX's start
        os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    settings = dict(SETTINGS)
    settings.update(parse_setting(item) for item in args.setting)
    names = args.settings.split(",")
    unknown = [n for n in names if n not in settings]
    if unknown:
        raise SystemExit(f"error: unknown setting {unknown[0]!r}; known: {', '.join(settings)} "
                         "(or define it with --setting NAME:FIELD=VALUE,...)")
    common = parse_overrides(args.set)

    from msjax import report, train

    out = Path(args.out)
    results = {}
    fields = {name: receptive_field(make_config({**common, **settings[name]}, 100, 0, 100))
              for name in names}
    started = time.perf_counter()
    for budget in [int(b) for b in args.budgets.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            run_dirs = []
            for name in names:
                run_dir = out / str(budget) / str(seed) / name
                if args.no_train:
                    if (run_dir / "valid.csv").exists():
                        run_dirs.append(run_dir)
                    continue
                print(f"--- budget {budget}, seed {seed}: {name}", flush=True)
                config = make_config({**common, **settings[name]}, budget, seed,
                                     args.eval_every or max(budget // 36, 10))
                train.train_and_evaluate(config, run_dir)
                run_dirs.append(run_dir)
            if not run_dirs or run_dirs[0].name != names[0]:
                continue  # nothing to compare without the reference run
            target = report.load_run(run_dirs[0]).valid[-1]["psnr"] - args.margin
            print(report.write_report(run_dirs, out / str(budget) / str(seed), target,
                                      args.smooth))
            ref = report.summary(report.load_run(run_dirs[0]))
            lower = lower_target(ref, args.lower)
            for d in run_dirs:
                run = report.load_run(d)
                results[(budget, seed, d.name)] = report.summary(run, target, args.smooth)
                results[(budget, seed, d.name, "lower")] = report.summary(run, lower, args.smooth)
    table = summarize(results, names, args.margin, args.lower, fields)
    common_text = ", ".join(args.set) or "none"
    took = time.perf_counter() - started
    (out / "summary.md").write_text(f"# Cost to single-scale quality\n\nOverrides for every "
                                    f"setting: {common_text}\n\n{table}\n\nThis invocation "
                                    f"took {took / 60:.1f} min.\n")
    print(f"\n{table}\n\nsummary: {out / 'summary.md'}; per budget and seed: "
          f"{out}/<budget>/<seed>/report-<runs>.md")


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    main()
