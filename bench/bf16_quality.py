"""Validation PSNR of a short quickstart run computed in bfloat16 against the same run in float32.

    python bench/bf16_quality.py                     # configs/quickstart.py, 600 steps each
    python bench/bf16_quality.py --steps 200 --workdir /tmp/bf16

Both runs share everything (data, seeds, schedule) but ``config.dtype``; parameters and optimizer
state are float32 in both, and the blur's FFTs run in float32. The target: bf16 within 0.3 dB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ is not installed

from msjax.configs import quickstart  # noqa: E402
from msjax import logs, train  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--workdir", default="", help="where the two runs go (default: a temp dir)")
    args = p.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bf16_quality_"))
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    for dtype in ("float32", "bfloat16"):
        c = quickstart.get_config()
        c.dtype = dtype
        c.train.steps = args.steps
        c.log.eval_every = c.log.checkpoint_every = max(1, args.steps // 6)
        t0 = time.perf_counter()
        result = train.train_and_evaluate(c, root / dtype)
        valid = logs.read_csv(root / dtype / "valid.csv")
        results[dtype] = {"final": result["psnr"], "best": result["best_psnr"],
                          "input": valid[-1]["input_psnr"], "seconds": time.perf_counter() - t0}
    print(f"quickstart, {args.steps} steps, runs in {root}")
    print(f"{'dtype':<10}{'final dB':>10}{'best dB':>10}{'input dB':>10}{'wall s':>9}")
    for dtype, r in results.items():
        print(f"{dtype:<10}{r['final']:>10.2f}{r['best']:>10.2f}{r['input']:>10.2f}"
              f"{r['seconds']:>9.0f}")
    diff = results["bfloat16"]["final"] - results["float32"]["final"]
    print(f"bf16 - f32 final validation PSNR: {diff:+.2f} dB "
          f"({'within' if abs(diff) <= 0.3 else 'OUTSIDE'} the 0.3 dB target)")


if __name__ == "__main__":
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # as train.py runs (msjax/backend/hugepages.py)
    main()
