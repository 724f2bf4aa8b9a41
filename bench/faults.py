"""SIGKILL at random moments, resume, compare bitwise with a run that was never interrupted.

    python bench/faults.py                 # 10 trials
    python bench/faults.py --trials 3 --seed 1
    python bench/faults.py --all_hooks     # every loop hook active (see ALL_HOOKS)
    python bench/faults.py --storage 5     # and 5 trials of a disk filling mid-run

A short ``train.py --config configs/quickstart.py`` run, shrunk by overrides (32x32 patches, a
2-layer 8-channel CNN, three full-multiscale stages, a checkpoint every step, validation twice)
is run once uninterrupted. Each trial then starts the same command in a fresh workdir, waits for
a checkpoint drawn (seeded) among all of them, and SIGKILLs it a random fraction of a second
later, so kills land in steps, saves, validation and the shutdown alike. The same command is
then rerun until it exits 0, and the final state (step, parameters, optimizer state, model
state) is compared bit for bit with the reference's. ``--jobs`` trials run side by side.

A storage trial (``--storage N``, as root: a private mount namespace) runs the same command in a
tmpfs whose size is drawn (seeded) between 15% and 90% of what the reference run writes, so the
disk fills at a random moment and under any writer (checkpoint, CSV, TensorBoard, image,
train.log). The run must stop with exit 2 and one line on stderr; the tmpfs is then grown (the
space freed) and the command rerun until it exits 0, and the final state compared bit for bit.

Every process shares one JAX compilation cache (filled by the reference run), so a restart costs
its start-up, not a recompile; the cached programs are the ones a fresh compile makes.
Prints one line per trial, then "N of N bitwise equal" and the machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = ["--config.data.patch=32", "--config.model_kwargs.features=8",
             "--config.model_kwargs.depth=2", "--config.batch_size=4",
             "--config.data.valid_images=2", "--config.mge.levels=2",
             "--config.fms.stage_weights=(1,1,1)",
             "--config.log.every=1", "--config.log.checkpoint_every=1"]
# Every hook of the loop at work, so its state is saved and restored with each checkpoint: the
# adaptive schedule (decisions), the target stop (recent PSNRs; a target never reached), the
# skip policy (its window), validation (the best PSNR), and a warm start from a short run
# trained first (the hook that shapes a fresh run).
ALL_HOOKS = ["--config.fms.schedule=adaptive", "--config.fms.window=2",
             "--config.fms.min_improvement=0.5", "--config.fms.min_share=0.25",
             "--config.train.target_psnr=99", "--config.runtime.nonfinite=skip"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--jobs", type=int, default=2, help="trials run side by side")
    p.add_argument("--keep", action="store_true", help="keep the workdirs")
    p.add_argument("--all_hooks", action="store_true", help="every loop hook active")
    p.add_argument("--storage", type=int, default=0,
                   help="trials of a disk filling at a random moment (needs root)")
    return p.parse_args(argv)


EXTRA: list[str] = []  # --all_hooks: ALL_HOOKS and the warm start's source


def command(workdir: Path, steps: int) -> list[str]:
    return [sys.executable, "train.py", "--config", "configs/quickstart.py", "--workdir",
            str(workdir), f"--config.train.steps={steps}",
            f"--config.log.eval_every={max(1, steps // 2)}", *OVERRIDES, *EXTRA]


def machine() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        info = ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("Model name", platform.processor() or platform.machine()).strip()
    isa = "avx512f present" if "avx512f" in fields.get("Flags", "") else "AVX2 only"
    return f"{name}, {os.cpu_count()} cores, {isa}"


def checkpoint_steps(workdir: Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                      if p.name.isdigit())
    except OSError:
        return []


def run_to_end(cmd, env, tries=4) -> list[int]:
    """Reruns ``cmd`` until it exits 0; returns every exit status."""
    codes = []
    for _ in range(tries):
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            return codes
        print(f"    rerun exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
              flush=True)
    return codes


def final_state(workdir: Path, steps: int | None = None) -> list[np.ndarray]:
    """The final state's arrays (``steps``: the step it must be at; an adaptive schedule's
    end is where its decisions put it)."""
    from msjax import runs

    state, _, step = runs.load_state(workdir, "latest")
    assert steps is None or (step == steps and int(state.step) == steps), (step, int(state.step))
    import jax

    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "model_state": state.model_state}
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def bitwise_equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(a, b))


# In one private mount namespace: the tmpfs, the run until its disk fills, the tmpfs grown, the
# same command until it exits 0, the workdir copied out before the namespace (and tmpfs) ends.
ON_TMPFS = """
mount -t tmpfs -o size=$SIZE tmpfs "$MOUNT" || exit 99
"$@" > /dev/null 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
mount -o remount,size=256m "$MOUNT"
for i in 1 2 3 4; do
  "$@" > /dev/null 2> "$OUT/rerun.err"; rc=$?; echo $rc >> "$OUT/rerun.rc"
  [ $rc = 0 ] && break
done
cp -a "$MOUNT/run" "$OUT/run"
"""


def disk_size_kb(workdir: Path) -> int:
    return sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file()) // 1024


def storage_trial(index: int, size_kb: int, root: Path, steps: int, env) -> dict:
    """The run in a ``size_kb`` tmpfs until its disk fills, then rerun with space."""
    base = root / f"storage{index}"
    mount, out = base / "mnt", base / "out"
    mount.mkdir(parents=True), out.mkdir()
    subprocess.run(["unshare", "-m", "sh", "-c", ON_TMPFS, "sh",
                    *command(mount / "run", steps)], cwd=ROOT,
                   env={**env, "SIZE": f"{size_kb}k", "MOUNT": str(mount), "OUT": str(out)},
                   check=True)
    err = (out / "first.err").read_text().strip().splitlines()
    return {"workdir": out / "run", "base": base, "first": int((out / "first.rc").read_text()),
            "lines": err, "codes": [int(c) for c in (out / "rerun.rc").read_text().split()]}


def run_storage_trials(args, rng, root: Path, env, expected, reference: Path) -> int:
    """Prints one line per storage trial and the count; returns the bitwise-equal count."""
    full = disk_size_kb(reference)
    sizes = [int(full * rng.uniform(0.15, 0.9)) for _ in range(args.storage)]
    equal = one_line = 0
    for i, size in enumerate(sizes):
        out = storage_trial(i, size, root, args.steps, env)
        clean = out["first"] == 2 and len(out["lines"]) == 1
        same = out["codes"][-1] == 0 and bitwise_equal(
            expected, final_state(out["workdir"], None if args.all_hooks else args.steps))
        equal += same
        one_line += clean
        what = out["lines"][-1].split(" failed (")[0].removeprefix("error: ").replace(
            f"{out['base']}/mnt/run", "RUN") if out["lines"] else "nothing"
        print(f"storage trial {i}: disk of {size} KB (the run writes {full} KB): exit "
              f"{out['first']}, {len(out['lines'])} stderr line(s), at {what}; reruns exit "
              f"{out['codes']}; {'bitwise equal' if same else 'DIFFERENT'}", flush=True)
        if not args.keep:
            shutil.rmtree(out["base"], ignore_errors=True)
    print(f"storage: {equal} of {args.storage} bitwise equal after a full disk; {one_line} of "
          f"{args.storage} stopped with exit 2 and one line")
    return equal + one_line


def trial(index: int, kill_after: int, delay: float, root: Path, steps: int, env) -> dict:
    """Starts the run, SIGKILLs it ``delay`` s after checkpoint ``kill_after`` appears, then
    reruns it until it exits 0. A run that ends before its kill starts again, killed sooner."""
    workdir = root / f"trial{index}"
    for _ in range(3):
        shutil.rmtree(workdir, ignore_errors=True)
        proc = subprocess.Popen(command(workdir, steps), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not any(s >= kill_after for s in checkpoint_steps(workdir)):
            time.sleep(0.01)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if killed:
            break
        delay /= 4
    newest = checkpoint_steps(workdir)
    codes = run_to_end(command(workdir, steps), env)
    return {"workdir": workdir, "killed": killed, "delay": delay,
            "newest": newest[-1] if newest else None, "codes": codes}


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="msjax_faults_"))
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONPATH=str(ROOT),
               JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    os.environ["JAX_NUM_CPU_DEVICES"] = "1"  # for the comparisons in this process
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    rng = np.random.default_rng(args.seed)
    # Kill moments: after a random checkpoint (1..steps), then a random fraction of a second,
    # which lands in the next step, its save, validation, or the shutdown after the last one.
    plan = [(int(rng.integers(1, args.steps + 1)), float(rng.uniform(0, 0.5)))
            for _ in range(args.trials)]
    start = time.time()
    try:
        if args.all_hooks:
            source = root / "warm_start_source"
            subprocess.run(command(source, 6), cwd=ROOT, env=env, check=True,
                           capture_output=True)
            EXTRA[:] = ALL_HOOKS + [f"--config.train.init_from={source}"]
        reference = root / "reference"
        subprocess.run(command(reference, args.steps), cwd=ROOT, env=env, check=True,
                       capture_output=True)
        expected = final_state(reference, None if args.all_hooks else args.steps)
        # An adaptive schedule ends where its decisions put it: kills land before that end.
        last = int(expected[-1]) if args.all_hooks else args.steps  # "step" sorts last
        plan = [(min(k, last), d) for k, d in plan]
        print(f"reference: {last} uninterrupted steps in {time.time() - start:.0f} s "
              f"(compiles fill the cache){'; every hook active' if args.all_hooks else ''}",
              flush=True)
        equal = killed = 0
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(trial, i, k, d, root, args.steps, env): (i, k, d)
                       for i, (k, d) in enumerate(plan)}
            for future in concurrent.futures.as_completed(futures):
                i, k, d = futures[future]
                out = future.result()
                same = out["codes"][-1] == 0 and bitwise_equal(
                    expected, final_state(out["workdir"], None if args.all_hooks else args.steps))
                equal += same
                killed += out["killed"]
                what = (f"SIGKILL {out['delay']:.2f} s after checkpoint {k} (newest on disk then: "
                        f"{out['newest']})" if out["killed"]
                        else f"finished before its kill {d:.2f} s after checkpoint {k}")
                print(f"trial {i}: {what}; reruns exit {out['codes']}; "
                      f"{'bitwise equal' if same else 'DIFFERENT'}", flush=True)
                if not args.keep:
                    shutil.rmtree(out["workdir"], ignore_errors=True)
        print(f"{equal} of {args.trials} bitwise equal ({killed} of them killed mid-run) in "
              f"{time.time() - start:.0f} s on {machine()}", flush=True)
        storage_ok = args.storage == 0 or run_storage_trials(
            args, rng, root, env, expected, reference) == 2 * args.storage
        if args.storage:
            print(f"storage trials done in {time.time() - start:.0f} s on {machine()}")
        return 0 if equal == args.trials and killed == args.trials and storage_ok else 1
    finally:
        if args.keep:
            print(f"workdirs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
