"""The command lines: ``train.py`` / ``msjax-train`` and ``eval.py`` / ``msjax-eval``.

Both parse flags, call the library and turn every ``errors.MsjaxError`` (and a mistyped config
field) into one line on stderr with exit status 2. jax is imported only after the process has
restarted itself with huge pages (``backend/hugepages.py``).
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

TRAIN_USAGE = """Train a model with multiscale gradient estimation.

  python train.py --config configs/quickstart.py
  python train.py --config configs/deblur_stl10.py --config.mode=fullmultiscale

The workdir defaults to runs/<config name> (plus _<mode> when --config.mode is given); running
the same command again resumes there, a larger --config.train.steps extends a finished run.
Override any field with --config.<section>.<field>=value. Sections:
{sections}
Every field, its default and a one-line comment: msjax/defaults.py; the experiments: configs/.
"""

# Simulated CPU devices when the user sets none. One device: XLA:CPU's and oneDNN's convolution
# kernels each spread over every core, and splitting a batch over simulated devices only added
# collectives (README, benchmarks: one device was the fastest or within a few percent in every
# case measured). A constant, not the core count, so a run gives the same numbers (and resumes
# exactly) on any machine.
DEFAULT_CPU_DEVICES = 1


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_fields() -> list[str]:
    from msjax import defaults, rundir

    return list(rundir.flat(defaults.get_config()))


def _unknown_field_message(argv) -> str:
    """The first --config.<field> override that names no field, with the nearest real one."""
    known = set(_config_fields())
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in known and not field.startswith("model_kwargs."):
                near = difflib.get_close_matches(field, known, n=1)
                hint = f"; did you mean {near[0]}?" if near else ""
                return (f"--config.{field}: no such config field{hint} (python train.py --help "
                        "lists the sections; msjax/defaults.py has every field)")
    return "a --config override names no config field (msjax/defaults.py has every field)"


def _parse(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _error(str(e).splitlines()[0])
    except (AttributeError, KeyError):  # ml_collections: an override of a field that is not there
        _error(_unknown_field_message(argv))


def set_cpu_devices(config):
    """runtime.num_devices, else DEFAULT_CPU_DEVICES, unless JAX_NUM_CPU_DEVICES or XLA_FLAGS'
    --xla_force_host_platform_device_count already say (before JAX starts its backends)."""
    if ("JAX_NUM_CPU_DEVICES" in os.environ
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return
    import jax

    jax.config.update("jax_num_cpu_devices", config.runtime.num_devices or DEFAULT_CPU_DEVICES)


def resolve_config_file(name: str) -> str:
    """A config path as given, or the name of a packaged experiment ('deblur_stl10')."""
    path, _, argument = name.partition(":")
    if Path(path).exists() or "/" in path or path.endswith(".py"):
        return name
    import msjax.configs

    packaged = Path(msjax.configs.__file__).parent / f"{path}.py"
    return str(packaged) + (f":{argument}" if argument else "") if packaged.exists() else name


def train(argv=None) -> None:
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()
    from absl import app, flags, logging
    from ml_collections import config_flags

    from msjax import defaults

    sections = "\n".join(f"  {k:<9} {v}" for k, v in defaults.SECTIONS.items())
    sys.modules["__main__"].__doc__ = TRAIN_USAGE.format(sections=sections)
    config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py), or "
                                    "the name of one (deblur_stl10)", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory for checkpoints and logs (default: "
                        "runs/<config name>[_<mode>]); resumes if it holds the run")
    flags.mark_flags_as_required(["config"])
    argv = list(sys.argv if argv is None else argv)
    argv = [a if not a.startswith("--config=") else "--config=" + resolve_config_file(a[9:])
            for a in argv]
    if "--config" in argv[:-1]:
        i = argv.index("--config")
        argv[i + 1] = resolve_config_file(argv[i + 1])

    def main(_):
        logging.set_verbosity(logging.WARNING)
        _train(flags.FLAGS, config_flags)

    app.run(main, argv=argv, flags_parser=_parse)


def _train(FLAGS, config_flags) -> None:
    from msjax import errors, rundir

    config = FLAGS.config
    overridden = config_flags.get_override_values(FLAGS["config"])
    if ("train.steps" in overridden and config.mode == "fullmultiscale"
            and tuple(config.fms.stage_steps)):
        # An explicit step budget wins over the config's stage steps, split in their proportions.
        with config.unlocked():
            config.fms.stage_weights = tuple(config.fms.stage_steps)
            config.fms.stage_steps = ()
    workdir = FLAGS.workdir or str(rundir.default_workdir(
        config_flags.get_config_filename(FLAGS["config"]), config, overridden))
    set_cpu_devices(config)
    from msjax import methods, train

    print(f"workdir: {workdir}", flush=True)
    try:
        result = methods.run(config, workdir)
    except errors.MsjaxError as e:
        _error(str(e))
    except train.Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)
    print(f"done: step {result.get('step')}, valid PSNR {result.get('psnr', float('nan')):.2f} dB"
          f" (best {result['best_psnr']:.2f} dB at step {result['best_step']}), "
          f"input PSNR {result.get('input_psnr', float('nan')):.2f} dB")
    print(f"workdir: {workdir}\n  evaluate: python eval.py --workdir {workdir}\n"
          f"  report:   python -m msjax.report {workdir}")
