"""Does this checkout train to the same bits as another revision? Both run side by side.

    python bench/same_result.py --rev f62a31a              # the whole quickstart, 600 steps
    python bench/same_result.py --rev HEAD~3 --steps 120

The revision is checked out into a temporary git worktree; ``train.py --config
configs/quickstart.py`` runs there and here, one after the other on this machine, with the same
CPU convolution kernels (``--kernels``, Eigen by default: ``auto`` may pick different kernels in
two processes, and kernels round differently). The final checkpoints' state digests (SHA-256
of every array, saved with each checkpoint) are compared, and so are the logged training losses.
Prints both digests, "bitwise equal" or "DIFFERENT", each run's wall time and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(checkout: Path, workdir: Path, steps: int, kernels: str) -> float:
    cmd = [sys.executable, "train.py", "--config", "configs/quickstart.py", "--workdir",
           str(workdir), f"--config.train.steps={steps}",
           f"--config.runtime.cpu_convolutions={kernels}"]
    env = dict(os.environ, PYTHONPATH=str(checkout))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=checkout, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def digest(workdir: Path) -> tuple[int, str]:
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    meta = json.loads((workdir / "checkpoints" / str(steps[-1]) / "meta" / "metadata").read_text())
    return steps[-1], meta["state_sha256"]


def losses(workdir: Path) -> list[str]:
    lines = (workdir / "train.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [header.index(k) for k in ("step", "loss", "finest_loss", "grad_norm")]
    return [",".join(line.split(",")[i] for i in keep) for line in lines[1:]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", required=True, help="the git revision to compare with")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--kernels", default="eigen", help="runtime.cpu_convolutions for both runs")
    args = p.parse_args(argv)
    from bench import common

    with tempfile.TemporaryDirectory(prefix="msjax_same_") as tmp:
        other = Path(tmp) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.rev], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            seconds = {name: run(checkout, Path(tmp) / name, args.steps, args.kernels)
                       for name, checkout in (("other", other), ("this", ROOT))}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT,
                           capture_output=True)
        (step_a, a), (step_b, b) = digest(Path(tmp) / "other"), digest(Path(tmp) / "this")
        same_losses = losses(Path(tmp) / "other") == losses(Path(tmp) / "this")
    same = a == b and step_a == step_b
    print(f"{args.rev}: step {step_a}, state {a[:16]} in {seconds['other']:.0f} s")
    print(f"this checkout: step {step_b}, state {b[:16]} in {seconds['this']:.0f} s")
    print(f"{'bitwise equal' if same else 'DIFFERENT'}; training losses "
          f"{'identical' if same_losses else 'differ'}; time ratio this / {args.rev} "
          f"{seconds['this'] / seconds['other']:.2f} (compiles included) on {common.machine()}")
    return 0 if same and same_losses else 1


if __name__ == "__main__":
    sys.exit(main())
