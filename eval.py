"""Evaluate a trained run: ``python eval.py --workdir runs/quickstart``.

Without folders it scores the run's validation set exactly as training did and saves the restored
crops. With ``--input_dir`` it restores every image there (no ground truth needed); with
``--target_dir`` it scores them and their inputs, or, alone, corrupts the ground truth with the
run's task (e.g. HR benchmark folders, MATLAB-bicubic LR). With ``--benchmark_root`` it scores SR
benchmark sets (Set5/Set14/B100/Urban100/Manga109 layout: one HR folder per set, or <set>/HR +
<set>/LR_bicubic/X<scale>) on Y with crop = scale:

    python eval.py --workdir runs/edsr_x2 --benchmark_root /data/benchmark [--self_ensemble]

Each target gets its own folder, RUN/eval/<checkpoint>-<step>/<target> (valid, folder-<dir>,
targets-<dir>, bench-<dir>): per_image.csv, summary.json, the outputs, input/ and compare/ (side
by side). Evaluating the same target again writes <target>-2, ... unless --overwrite.
"""

import sys

if __name__ == "__main__":  # before jax starts (msjax/hugepages.py)
    from msjax.hugepages import restart_with_huge_pages

    restart_with_huge_pages()

from absl import app, flags, logging

from msjax import evaluate
from msjax.errors import MsjaxError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "run directory written by train.py")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint to restore")
flags.DEFINE_string("input_dir", "", "folder of degraded images to restore")
flags.DEFINE_string("target_dir", "", "folder of ground-truth images (same file stems)")
flags.DEFINE_string("output_dir", "", "where to write (default: RUN/eval/<checkpoint>-<step>/"
                    "<target>)")
flags.DEFINE_bool("overwrite", False, "replace the earlier evaluation of the same target instead "
                  "of writing a new <target>-<n> folder")
flags.DEFINE_enum("bad_images", None, ["skip", "error"], "unreadable input files: skip (listed "
                  "in the summary) or stop (default: the run's data.bad_images)")
flags.DEFINE_integer("tile", None, "tile side for large images (0: whole images)")
flags.DEFINE_bool("self_ensemble", None, "average the x8 flips / rotations")
flags.DEFINE_float("t", None, "noise level t fed to time-conditioned models for folder inputs")
flags.DEFINE_integer("crop_border", None, "border crop for metrics (default: the run's)")
flags.DEFINE_bool("y_channel", None, "PSNR/SSIM on the Y channel (default: the run's)")
flags.DEFINE_string("benchmark_root", "", "SR benchmark sets: one HR folder per set, or "
                    "<set>/HR (+ <set>/LR_bicubic/X<scale>); per-image and per-set tables")
flags.mark_flag_as_required("workdir")


def _fmt(row: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items())


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    try:
        rows, summary, out_dir = evaluate.run(
            FLAGS.workdir, which=FLAGS.checkpoint, input_dir=FLAGS.input_dir,
            target_dir=FLAGS.target_dir, output_dir=FLAGS.output_dir, tile=FLAGS.tile,
            self_ensemble=FLAGS.self_ensemble, t=FLAGS.t, crop_border=FLAGS.crop_border,
            y_channel=FLAGS.y_channel, benchmark_root=FLAGS.benchmark_root,
            overwrite=FLAGS.overwrite, bad_images=FLAGS.bad_images)
    except (MsjaxError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if "sets" in summary:  # benchmark sets: markdown tables, per image and per set
        print(evaluate.markdown_table(rows) + "\n\n" + evaluate.markdown_table(summary["sets"]))
    else:
        for row in rows:
            print(_fmt(row))
    for path, problem in summary["skipped"].items():
        print(f"skipped {path}: it {problem}")
    means = {k: v for k, v in summary.items() if isinstance(v, (int, float))
             and not isinstance(v, bool)}
    print(f"summary ({summary['checkpoint']} checkpoint, step {summary['step']}): "
          + _fmt({k: v for k, v in means.items() if k != "step"}))
    replaced = "replaced the earlier evaluation in" if summary.get("replaced_earlier") else "in"
    print(f"results {replaced} {out_dir} (per_image.csv, summary.json, compare/)")


if __name__ == "__main__":
    app.run(main)
