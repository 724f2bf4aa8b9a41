"""Compares runs by cost: validation PSNR against cumulative FLOPs and wall time, and a table.

    python -m msjax.report runs/single runs/multiscale runs/fullmultiscale [--target 25.5]

Reads each run's ``valid.csv``, ``train.csv`` and ``config.json``; writes ``report.png`` and
``report.md`` in the run directory for one run, and for several ``report-<runs>.png`` and
``.md`` named after the runs in their common parent (or under ``--out``), and prints the table.
The markdown names each run by its path relative to the report. Ratios are to the first run (put the
single-scale run first). Costs are the loop's ledger: wall time of the training steps only
(validation, checkpoints and compiling excluded; compile time is listed apart), work units and
XLA-counted FLOPs. The plot marks the input's own PSNR (the corrupted image, or for SR its
bicubic upsampling), where full-multiscale stages change, and the target if one is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from msjax import rundir, storage
from msjax.errors import MsjaxError, RunDirError
from msjax.logs import read_csv

COSTS = ("seconds", "work_units", "flops")


@dataclasses.dataclass
class Run:
    name: str
    valid: list[dict]
    train: list[dict]
    record: dict                   # the run's flat config (config.json)

    @property
    def label(self) -> str:
        mode = self.record.get("mode")
        return f"{self.name} ({mode})" if mode and mode not in self.name else self.name

    def total(self, cost: str) -> float:
        """The ledger at the run's last logged step (train or valid row, whichever is later)."""
        rows = [r for r in self.train + self.valid if math.isfinite(r.get(cost, math.nan))]
        return max(rows, key=lambda r: (r["step"], r[cost]))[cost] if rows else math.nan


def load_run(run_dir) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; pass run directories written by "
                          "train.py (its --workdir)")
    if not (run_dir / "valid.csv").exists():
        raise RunDirError(f"{run_dir} has no valid.csv: not a training run directory; pass the "
                          "--workdir of a train.py run")
    try:
        train = read_csv(run_dir / "train.csv") if (run_dir / "train.csv").exists() else []
        valid = read_csv(run_dir / "valid.csv")
    except (ValueError, KeyError) as e:
        raise RunDirError(f"{run_dir}'s logs cannot be read ({e}); they were not written by "
                          "train.py, or were damaged") from None
    if not valid:
        raise RunDirError(f"{run_dir} has no validation rows yet; report on it after its first "
                          "evaluation (log.eval_every steps)")
    record = rundir.read_saved(run_dir) or {}
    return Run(run_dir.name, valid, train, record)


def smoothed(valid: list[dict], window: int) -> list[dict]:
    """Validation rows with PSNR replaced by the trailing mean of ``window`` rows (the run's own
    step-to-step noise would otherwise let one lucky evaluation count as reaching a target)."""
    psnr = [r["psnr"] for r in valid]
    rows = []
    for i, r in enumerate(valid):
        recent = psnr[max(0, i + 1 - window):i + 1]
        rows.append({**r, "psnr": sum(recent) / len(recent)})
    return rows


def cost_to_reach(valid: list[dict], target: float, cost: str, smooth: int = 1) -> float:
    """Cumulative ``cost`` at which validation PSNR (trailing mean of ``smooth`` rows) first
    reaches ``target``, interpolated linearly between validation rows; NaN if never reached.
    Before the first row the curve starts at zero cost with the input's own PSNR (an untrained
    residual model returns its input)."""
    valid = smoothed(valid, smooth) if smooth > 1 else valid
    points = [(0.0, valid[0].get("input_psnr", math.nan))] if valid else []
    points += [(r[cost], r["psnr"]) for r in valid]
    for i, (c, psnr) in enumerate(points):
        if psnr >= target:
            if i == 0:
                return c
            c0, p0 = points[i - 1]
            frac = (target - p0) / (psnr - p0) if math.isfinite(p0) and psnr > p0 else 1.0
            return c0 + frac * (c - c0)
    return math.nan


def summary(run: Run, target: float | None = None, smooth: int = 1) -> dict:
    psnr = [r["psnr"] for r in run.valid]
    row = {"run": run.label, "steps": int(run.total("step")) if run.valid else 0,
           "final_psnr": psnr[-1] if psnr else math.nan,
           "best_psnr": max(psnr) if psnr else math.nan,
           "input_psnr": run.valid[0].get("input_psnr", math.nan) if run.valid else math.nan,
           **{cost: run.total(cost) for cost in COSTS},
           "compile_seconds": run.total("compile_seconds")}
    if target is not None:
        row.update({f"{cost}_to_target": cost_to_reach(run.valid, target, cost, smooth)
                    for cost in COSTS})
    return row


def _num(x, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _ratio(x, ref) -> str:
    ok = x is not None and ref and math.isfinite(x) and math.isfinite(ref)
    return f"{x / ref:.2f}" if ok else "-"


def markdown_table(rows: list[dict], target: float | None = None) -> str:
    """One line per run; ratios (x/first) are to the first row."""
    ref = rows[0]
    head = ["run", "steps", "final PSNR", "best PSNR", "input PSNR", "wall s", "compile s",
            "work units",
            "GFLOPs", "time x", "WU x", "FLOPs x"]
    if target is not None:
        head += [f"s to {target:.2f} dB", "WU to target", "GFLOPs to target",
                 "time x", "WU x", "FLOPs x"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], str(r["steps"]), _num(r["final_psnr"], ".2f"),
                 _num(r["best_psnr"], ".2f"), _num(r.get("input_psnr"), ".2f"),
                 _num(r["seconds"], ".1f"),
                 _num(r["compile_seconds"], ".1f"), _num(r["work_units"], ".1f"),
                 _num(r["flops"] / 1e9, ".1f")]
        cells += [_ratio(r[c], ref[c]) for c in COSTS]
        if target is not None:
            to = [r[f"{c}_to_target"] for c in COSTS]
            cells += [_num(to[0], ".1f"), _num(to[1], ".1f"), _num(to[2] / 1e9, ".1f")]
            cells += [_ratio(r[f"{c}_to_target"], ref[f"{c}_to_target"]) for c in COSTS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_costs(run: Run) -> list[dict]:
    """Per stage (full multiscale has several): steps, wall seconds, work units and FLOPs spent in
    it, from the train log's cumulative ledger at each stage's last logged step (the loop always
    logs a stage's last step)."""
    ends = {}
    for r in run.train:
        if math.isfinite(r.get("stage", math.nan)):
            stage = int(r["stage"])
            if stage not in ends or r["step"] > ends[stage]["step"]:
                ends[stage] = r
    rows, before = [], {"step": 0.0, **{c: 0.0 for c in COSTS}}
    for stage in sorted(ends):
        end = ends[stage]
        rows.append({"stage": stage, "steps": int(end["step"] - before["step"]),
                     **{c: end[c] - before[c] for c in COSTS}})
        before = end
    return rows


def stage_table(runs: list[Run]) -> str:
    """What each stage's step costs: seconds per step and per work unit, and the speed of a work
    unit relative to the first run's (1.0: a coarse stage's pixels are as cheap as the fine ones;
    below 1: fixed per-step costs, which do not shrink with the image, dominate). Stages are
    numbered from 1, as the progress line says them (the CSVs keep 0-based indices)."""
    ref = None
    lines = ["| run | stage | steps | wall s | work units | ms / step | ms / work unit | "
             "work-unit speed |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in stage_costs(run):
            per_wu = r["seconds"] / r["work_units"] if r["work_units"] else math.nan
            ref = per_wu if ref is None else ref
            lines.append(f"| {run.label} | {r['stage'] + 1} | {r['steps']} | {r['seconds']:.1f} | "
                         f"{r['work_units']:.1f} | {1e3 * r['seconds'] / max(r['steps'], 1):.1f} | "
                         f"{1e3 * per_wu:.1f} | {_ratio(ref, per_wu)} |")
    return "\n".join(lines)


def title(runs: list[Run]) -> str:
    """What the runs are: task, model and data from their configs, then the runs' names."""
    def describe(c):
        task = c.get("task.name", "?")
        if task == "sr":
            task += f" x{c.get('task.scale', '?')}"
        elif task == "damage" and c.get("task.damage"):
            task += f" ({c['task.damage']})"
        source = c.get("data.name") or {"builtin": "built-in photos"}.get(
            c.get("data.source", ""), c.get("data.source", ""))
        return f"{task}, {c.get('model', '?')}" + (f" on {source}" if source else "")
    kinds = list(dict.fromkeys(describe(r.record) for r in runs))
    names = ", ".join(r.label for r in runs)
    return f"{'; '.join(kinds)}: {names}"


def stage_starts(run: Run, cost: str) -> list[tuple[int, float]]:
    """(stage, cumulative ``cost`` where it begins) for every stage after the first."""
    starts, total = [], 0.0
    for r in stage_costs(run):
        if r["stage"] > 0:
            starts.append((r["stage"], total))
        total += r[cost]
    return starts


def _plain(value: float) -> str:
    """A tick label without exponents: 0.5, 20, 300, 4k, 1.5M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if value >= limit:
            return f"{value / (limit if suffix != 'k' else 1e3):g}{suffix}"
    return f"{value:g}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions on a log axis from ``lo`` to ``hi``: 1-2-5 style steps, fewer per decade
    the more decades there are, so their labels never run into each other."""
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    for subs in ([(1, 2, 3, 5)] if decades < 1.5 else []) + [
            (1, 2, 5) if decades < 3 else (1, 3) if decades < 5 else (1,), range(1, 10)]:
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1,
                                              math.ceil(math.log10(hi)) + 1) for m in subs]
        ticks = sorted(t for t in ticks if lo <= t * (1 + 1e-9) and t <= hi * (1 + 1e-9))
        if len(ticks) >= 2:
            return ticks
    return [float(f"{lo:.2g}"), float(f"{hi:.2g}")]


def plot(runs: list[Run], path, target: float | None = None) -> None:
    """Validation PSNR against cumulative FLOPs (left) and training wall time (right), log axes,
    with the input's PSNR, stage changes and the target marked; titled with what was run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.transforms import blended_transform_factory

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    fig.suptitle(title(runs), fontsize=11)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sr = any(r.record.get("task.name") == "sr" for r in runs)
    inputs = sorted({round(r.valid[0]["input_psnr"], 2) for r in runs
                     if math.isfinite(r.valid[0].get("input_psnr", math.nan))})
    for ax, cost, label, scale in (
            (axes[0], "flops", "cumulative GFLOPs (XLA count, log)", 1e9),
            (axes[1], "seconds", "training wall time in s (compiling excluded, log)", 1.0)):
        xs_all = []
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            rows = [r for r in run.valid if r[cost] > 0]
            xs = [r[cost] / scale for r in rows]
            xs_all += xs
            ax.plot(xs, [r["psnr"] for r in rows], marker="o", markersize=3, color=color,
                    label=run.label)
            mark = blended_transform_factory(ax.transData, ax.transAxes)
            for stage, start in stage_starts(run, cost):
                if start > 0:
                    ax.axvline(start / scale, color=color, linestyle=":", linewidth=1)
                    ax.text(start / scale, 0.98, f"stage {stage + 1} ", transform=mark,
                            color=color, fontsize=7, rotation=90, va="top", ha="right")
                    xs_all.append(start / scale)
        for value in inputs:
            ax.axhline(value, color="black", linestyle="-.", linewidth=1,
                       label=f"input{' (bicubic)' if sr else ''} {value:.2f} dB")
        if target is not None:
            ax.axhline(target, color="gray", linestyle="--", linewidth=1,
                       label=f"target {target:.2f} dB")
        ax.set_xscale("log")  # full multiscale's coarse stages are orders of magnitude cheaper
        if xs_all:
            lo, hi = min(xs_all), max(xs_all)
            ax.set_xlim(lo / 1.15, hi * 1.15)
            ax.xaxis.set_major_locator(ticker.FixedLocator(log_ticks(lo / 1.15, hi * 1.15)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _plain(v)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    storage.write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def default_out(run_dirs) -> Path:
    """The run directory for one run, the runs' common parent for several."""
    paths = [Path(d).expanduser().resolve() for d in run_dirs]
    if len(set(paths)) == 1:
        return paths[0]
    return Path(os.path.commonpath(paths))


def report_stem(run_dirs) -> str:
    """``report`` for one run; for several, ``report-`` and the runs' names (their paths below
    their common parent, '+' between them), so that reports over different runs never replace
    one another; a very long name is cut and ends in a digest of the whole."""
    paths = [Path(d).expanduser().resolve() for d in run_dirs]
    if len(set(paths)) == 1:
        return "report"
    parent = default_out(run_dirs)
    names = ["_".join(p.relative_to(parent).parts) or p.name for p in paths]
    stem = "report-" + "+".join(names)
    if len(stem) > 120:
        import hashlib

        stem = stem[:100] + "-" + hashlib.sha1(stem.encode()).hexdigest()[:8]
    return stem


def report_paths(run_dirs, out=None) -> tuple[Path, Path]:
    """Where ``write_report`` writes: (the markdown, the plot)."""
    out = default_out(run_dirs) if out is None else Path(out)
    stem = report_stem(run_dirs)
    return out / f"{stem}.md", out / f"{stem}.png"


def write_report(run_dirs, out=None, target: float | None = None, smooth: int = 1) -> str:
    """Writes the plot and the markdown (``report_paths``: report.png and report.md for one run,
    named after the runs for several) under ``out`` (default: ``default_out``); the markdown
    names each run by its path relative to it. Returns the markdown table."""
    runs = [load_run(d) for d in run_dirs]
    md_path, png_path = report_paths(run_dirs, out)
    out = md_path.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot write the report into {out} ({e.strerror}); pass --out a "
                          "writable folder") from None
    table = markdown_table([summary(r, target, smooth) for r in runs], target)
    if target is not None and smooth > 1:
        table += (f"\n\nCost to target: first time the trailing mean of {smooth} validation "
                  "PSNRs reaches it.")
    table += "\n\nPer stage:\n\n" + stage_table(runs)
    plot(runs, png_path, target)
    here = out.expanduser().resolve()
    sources = "\n".join(
        f"- {r.label}: `{Path(os.path.relpath(Path(d).expanduser().resolve(), here)).as_posix()}`"
        for r, d in zip(runs, run_dirs))
    storage.write_file(
        md_path,
        f"# {title(runs)}\n\n{sources}\n\n![validation PSNR against cost]({png_path.name})\n\n"
        f"{table}\n")
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="training workdirs; ratios are to the first")
    p.add_argument("--out", default=None, help="where the report goes (default: the run "
                   "directory, or the runs' common parent); for several runs its files are "
                   "named after them, report-<run>+<run>.md and .png")
    p.add_argument("--target", type=float, default=None,
                   help="also report the cost to reach this validation PSNR (dB)")
    p.add_argument("--smooth", type=int, default=1,
                   help="judge the target on the trailing mean of this many validation rows")
    args = p.parse_args(argv)
    try:
        table = write_report(args.run_dirs, args.out, args.target, args.smooth)
    except MsjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    md_path, png_path = report_paths(args.run_dirs, args.out)
    print(table)
    print(f"\nwrote {md_path} and {png_path}")


if __name__ == "__main__":
    main()
