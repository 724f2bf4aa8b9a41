"""Train a model: ``python train.py --config configs/quickstart.py --workdir runs/quickstart``.

Override any field with ``--config.a.b=value``. Running the same command again resumes.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from msjax import config_check, data, methods, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints and logs (resumes if it exists)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        result = methods.run(FLAGS.config, FLAGS.workdir)
    except (config_check.ConfigError, data.DataError, train.NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except train.Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)
    print(f"done: step {result.get('step')}, valid PSNR {result.get('psnr', float('nan')):.2f} dB"
          f" (best {result['best_psnr']:.2f} dB at step {result['best_step']}), "
          f"input PSNR {result.get('input_psnr', float('nan')):.2f} dB")


if __name__ == "__main__":
    app.run(main)
