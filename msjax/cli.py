"""The command lines: ``train.py`` / ``msjax-train`` and ``eval.py`` / ``msjax-eval``.

Both parse flags, call the library and turn every ``errors.MsjaxError`` (and a mistyped config
field) into one line on stderr with exit status 2. jax is imported only after the process has
restarted itself with huge pages (``backend/hugepages.py``).
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

TRAIN_USAGE = """Train a model with multiscale gradient estimation.

  python train.py --config configs/quickstart.py
  python train.py --config configs/deblur_stl10.py --config.mode=fullmultiscale

The workdir defaults to runs/<config name> (plus _<argument> for --config <file>.py:<argument>
and for a config's default variant, then _<model> and _<mode> when --config.model and
--config.mode are given, and _seed<N> for a seed other than the config's); running the same
command again resumes there, a larger --config.train.steps extends a finished run.
Override any field with --config.<section>.<field>=value. Sections:
{sections}
Every field, its default and a one-line comment: msjax/defaults.py; the experiments: configs/.
"""

def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_fields(argv) -> set[str]:
    """The fields of the config file named in ``argv`` (the defaults if it cannot be loaded)."""
    from msjax import defaults, rundir

    name = next((a[len("--config="):] for a in argv if a.startswith("--config=")), None)
    if name is None and "--config" in argv[:-1]:
        name = argv[argv.index("--config") + 1]
    try:
        path, _, argument = (name or "").partition(":")
        get_config = _load_config_module(path).get_config
        config = get_config(argument) if argument else get_config()
    except Exception:  # the flag parser has said what is wrong with the file itself
        config = defaults.get_config()
    return set(rundir.flat(config))


def _load_config_module(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("msjax_cli_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nearest_field_hint(field: str, known) -> str:
    """'; did you mean <the closest real field>?' for a field that is not in ``known``, or ''."""
    near = difflib.get_close_matches(field, known, n=1)
    return f"; did you mean {near[0]}?" if near else ""


def _unknown_field_message(argv) -> str:
    """The first --config.<field> override that names no field, with the nearest real one."""
    known = _config_fields(argv)
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in known:
                hint = nearest_field_hint(field, known)
                extra = (" (an override changes a field the config sets; add new model_kwargs "
                         "to the config file)" if field.startswith("model_kwargs.") else "")
                return (f"--config.{field}: no such config field{hint}{extra}; python train.py "
                        "--help lists the sections, msjax/defaults.py has every field")
    return "a --config override names no config field (msjax/defaults.py has every field)"


def _parse(argv):
    from absl import flags

    from msjax.errors import MsjaxError

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        # A config file's own error (an unknown config argument) arrives wrapped twice; its
        # message is the line to show.
        cause = e
        while cause.__cause__ or cause.__context__:
            cause = cause.__cause__ or cause.__context__
        _error(str(cause) if isinstance(cause, MsjaxError) else str(e).splitlines()[0])
    except (AttributeError, KeyError):  # ml_collections: an override of a field that is not there
        _error(_unknown_field_message(argv))


def budget_over_stages(config, overridden: dict) -> None:
    """An explicit --config.train.steps wins over the config's own step counts: full-multiscale
    stage steps, and a multiblock run's phase steps (``multiblock.*_steps``). The budget is
    split in their proportions instead (the multiblock run says so in its first line)."""
    if "train.steps" not in overridden:
        return
    if config.mode == "fullmultiscale" and tuple(config.fms.stage_steps):
        with config.unlocked():
            config.fms.stage_weights = tuple(config.fms.stage_steps)
            config.fms.stage_steps = ()
    if config.method == "multiblock" and "multiblock.total_steps" not in overridden:
        config.multiblock.total_steps = config.train.steps


def default_workdir(config_file: str, config, overridden: dict):
    """The run directory of a command without --workdir (``rundir.default_workdir``): the
    model and mode where the command line gives them, the seed where it differs from the config
    file's, so two experiments of one config never share a directory."""
    from msjax import rundir

    seed = None
    if "seed" in overridden:
        path, _, argument = config_file.partition(":")
        get_config = _load_config_module(path).get_config
        default = (get_config(argument) if argument else get_config()).seed
        seed = config.seed if config.seed != default else None
    return rundir.default_workdir(config_file, config.mode if "mode" in overridden else "",
                                  config.model if "model" in overridden else "", seed)


def resolve_config_file(name: str) -> str:
    """A config path as given, or the name of a packaged experiment ('deblur_stl10'), with the
    default variant of a config made with ``msjax.configs.variants`` when none is given
    ('configs/edsr_div2k.py' -> 'configs/edsr_div2k.py:x2'), so its run directory names it."""
    path, _, argument = name.partition(":")
    if not (Path(path).exists() or "/" in path or path.endswith(".py")):
        import msjax.configs

        packaged = Path(msjax.configs.__file__).parent / f"{path}.py"
        if not packaged.exists():
            return name
        path = str(packaged)
    argument = argument or _default_variant(path)
    return path + (f":{argument}" if argument else "")


def _default_variant(path: str) -> str:
    from msjax.configs import default_variant

    try:
        return default_variant(_load_config_module(path).get_config)
    except Exception:  # the flag parser says what is wrong with the file itself
        return ""


def _key_flags(names, argv) -> None:
    """``names`` (defined here, in msjax.cli) as key flags of the script that runs: absl's
    ``--help`` lists only the main module's key flags (the rest only under ``--helpfull``)."""
    from absl import flags

    for module in {sys.argv[0], argv[0]} if argv else {sys.argv[0]}:
        for name in names:
            flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])


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
                        "runs/<config name>[_<argument>][_<model>][_<mode>][_seed<N>]); "
                        "resumes if it holds the run")
    flags.mark_flags_as_required(["config"])
    argv = list(sys.argv if argv is None else argv)
    argv = [a if not a.startswith("--config=") else "--config=" + resolve_config_file(a[9:])
            for a in argv]
    if "--config" in argv[:-1]:
        i = argv.index("--config")
        argv[i + 1] = resolve_config_file(argv[i + 1])
    sys.argv = argv  # ml_collections reads the --config.* overrides from sys.argv
    _key_flags(["config", "workdir"], argv)

    def main(_):
        logging.set_verbosity(logging.WARNING)
        _train(flags.FLAGS, config_flags)

    app.run(main, argv=argv, flags_parser=_parse)


def _train(FLAGS, config_flags) -> None:
    from msjax import errors

    config = FLAGS.config
    overridden = config_flags.get_override_values(FLAGS["config"])
    budget_over_stages(config, overridden)
    workdir = FLAGS.workdir or str(default_workdir(
        config_flags.get_config_filename(FLAGS["config"]), config, overridden))
    from msjax import backend

    backend.set_cpu_devices(config.runtime)
    import jax

    from msjax import logs, storage, train

    print(f"workdir: {workdir}", flush=True)
    try:
        result = train.run(config, workdir)
    except errors.MsjaxError as e:
        # train.log ends as the terminal does; the traceback behind the line goes there only.
        note = storage.noise_note(logs.append_to_log(workdir, f"error: {e}", e.__cause__))
        storage.divert_until_exit(Path(workdir) / "train.log", jax.process_index() == 0)
        _error(str(e) + note)
    except train.Preempted as e:
        logs.append_to_log(workdir, str(e))
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)
    summary = logs.final_summary(workdir, result)
    logs.append_to_log(workdir, summary)
    print(summary)


EVAL_USAGE = """Evaluate a trained run: ``python eval.py --workdir runs/quickstart``.

Without folders it scores the run's validation set exactly as training did and saves the restored
crops. With ``--input_dir`` it restores every image there (no ground truth needed); with
``--target_dir`` it scores them and their inputs, or, alone, corrupts the ground truth with the
run's task (e.g. HR benchmark folders, MATLAB-bicubic LR). With ``--benchmark_root`` it scores SR
benchmark sets (Set5/Set14/B100/Urban100/Manga109 layout: one HR folder per set, or <set>/HR +
<set>/LR_bicubic/X<scale>) on Y with crop = scale:

    python eval.py --workdir runs/edsr_x2 --benchmark_root /data/benchmark [--self_ensemble]

Each target gets its own folder, RUN/eval/<checkpoint>-<step>/<target> (valid, folder-<dir>,
targets-<dir>, bench-<dir>): per_image.csv, summary.json, the outputs, input/ and compare/ (side
by side); the name also says what differs from the run's default evaluation (valid-tile128,
valid-ensemble, valid-crop4-y). Repeating an evaluation exactly writes <target>-2, ... unless
--overwrite.
"""


def evaluate(argv=None) -> None:
    from msjax.backend.hugepages import restart_with_huge_pages

    restart_with_huge_pages()
    from absl import app, flags, logging

    sys.modules["__main__"].__doc__ = EVAL_USAGE
    flags.DEFINE_string("workdir", None, "run directory written by train.py")
    flags.DEFINE_string("checkpoint", "best", "which checkpoint to restore: best, latest or a "
                        "step number the run keeps")
    flags.register_validator("checkpoint", lambda v: v in ("best", "latest") or v.isdigit(),
                             "--checkpoint takes best, latest or a step number")
    flags.DEFINE_string("input_dir", "", "folder of degraded images to restore")
    flags.DEFINE_string("target_dir", "", "folder of ground-truth images (same file stems)")
    flags.DEFINE_string("output_dir", "", "where to write (default: RUN/eval/<checkpoint>-<step>/"
                        "<target>)")
    flags.DEFINE_bool("overwrite", False, "replace the earlier evaluation of the same target "
                      "instead of writing a new <target>-<n> folder")
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
    argv = list(sys.argv if argv is None else argv)
    _key_flags(["workdir", "checkpoint", "input_dir", "target_dir", "output_dir", "overwrite",
                "bad_images", "tile", "self_ensemble", "t", "crop_border", "y_channel",
                "benchmark_root"], argv)

    def main(_):
        logging.set_verbosity(logging.ERROR)
        _evaluate(flags.FLAGS)

    app.run(main, argv=argv, flags_parser=_parse)


def _fmt(row: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items())


def _evaluate(F) -> None:
    from msjax import errors, evaluate

    try:
        rows, summary, out_dir = evaluate.run(
            F.workdir, which=F.checkpoint, input_dir=F.input_dir,
            target_dir=F.target_dir, output_dir=F.output_dir, tile=F.tile,
            self_ensemble=F.self_ensemble, t=F.t, crop_border=F.crop_border,
            y_channel=F.y_channel, benchmark_root=F.benchmark_root,
            overwrite=F.overwrite, bad_images=F.bad_images)
    except (errors.MsjaxError, FileNotFoundError) as e:
        _error(str(e))
    if "sets" in summary:  # benchmark sets: markdown tables, per image and per set
        print(evaluate.markdown_table(rows) + "\n\n"
              + evaluate.markdown_table(summary["sets"]))
    else:
        for row in rows:
            print(_fmt(row))
    for path, problem in summary["skipped"].items():
        print(f"skipped {path}: it {problem}")
    means = {k: v for k, v in summary.items() if isinstance(v, (int, float))
             and not isinstance(v, bool)}
    which = summary["checkpoint"]
    which = "checkpoint" if which.isdigit() else f"{which} checkpoint"
    print(f"summary ({which}, step {summary['step']}): "
          + _fmt({k: v for k, v in means.items() if k != "step"}))
    replaced = "replaced the earlier evaluation in" if summary.get("replaced_earlier") else "in"
    print(f"results {replaced} {out_dir} (per_image.csv, summary.json, compare/)")
