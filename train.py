"""Train a model: ``python train.py --config configs/quickstart.py --workdir runs/quickstart``.

Override any field with ``--config.a.b=value``. Running the same command again resumes.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from msjax import config_check, data, methods, train

FLAGS = flags.FLAGS
# Simulated CPU devices the batch is sharded over when the user sets none: XLA:CPU leaves cores
# idle inside one convolution, and 8 was the fastest count in every case bench/devices.py measured
# (up to 1.45x one device on 2 cores). A constant, not the core count, so a run gives the same
# numbers (and resumes exactly) on any machine. Only the CPU platform reads it.
DEFAULT_CPU_DEVICES = 8
config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints and logs (resumes if it exists)")
flags.mark_flags_as_required(["config", "workdir"])


def set_cpu_devices(config):
    """config.num_devices, else DEFAULT_CPU_DEVICES, unless JAX_NUM_CPU_DEVICES or XLA_FLAGS'
    --xla_force_host_platform_device_count already say (before JAX starts its backends)."""
    if ("JAX_NUM_CPU_DEVICES" in os.environ
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return
    import jax

    jax.config.update("jax_num_cpu_devices", config.num_devices or DEFAULT_CPU_DEVICES)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    set_cpu_devices(FLAGS.config)
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
