"""Train a model: ``python train.py --config configs/quickstart.py --workdir runs/quickstart``.

Override any field with ``--config.a.b=value``. Running the same command again resumes.
"""

import os
import sys

if __name__ == "__main__":  # before jax starts (msjax/hugepages.py)
    from msjax.hugepages import restart_with_huge_pages

    restart_with_huge_pages()

from absl import app, flags, logging
from ml_collections import config_flags

from msjax import config_check, data, methods, train

FLAGS = flags.FLAGS
# Simulated CPU devices the batch is sharded over when the user sets none. msjax's default CPU
# convolutions are oneDNN's (msjax/kernels), which run on one device and use every core; with
# Eigen's (msjax/xla_options.py) one device also kept both cores busy and was the fastest or within
# 10% of it in every case bench/devices.py measured (2026-11-22, 2 cores: quickstart FMS step 159
# ms on 1 device, 180 on 2, 356 on 8; ResNet b16 1.11 s on 1, 1.10 s on 2, 1.84 s on 8; oneDNN on
# one device: 0.83 s). Simulated devices only paid off with YNNPACK convolutions, which leave cores
# idle. A constant, not the core count, so a run gives the same numbers (and resumes exactly) on
# any machine.
DEFAULT_CPU_DEVICES = 1
config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints and logs (resumes if it exists)")
flags.mark_flags_as_required(["config", "workdir"])


def set_cpu_devices(config):
    """config.runtime.num_devices, else DEFAULT_CPU_DEVICES, unless JAX_NUM_CPU_DEVICES or XLA_FLAGS'
    --xla_force_host_platform_device_count already say (before JAX starts its backends)."""
    if ("JAX_NUM_CPU_DEVICES" in os.environ
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return
    import jax

    jax.config.update("jax_num_cpu_devices", config.runtime.num_devices or DEFAULT_CPU_DEVICES)


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
