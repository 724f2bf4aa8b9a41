"""The command lines: ``train.py`` / ``msjax-train``, ``eval.py`` / ``msjax-eval`` and
``python -m msjax.export`` / ``msjax-export``.

Each parses its flags, calls the library and turns every ``errors.MsjaxError`` (and a mistyped
config field) into one line on stderr with exit status 2. Training and evaluation import jax
only after the process has restarted itself with huge pages (``backend/hugepages.py``); an
export is short and does not.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from msjax import config_file as config_files

TRAIN_USAGE = """Train a model with multiscale gradient estimation.

  python train.py --config configs/quickstart.py
  python train.py --config configs/deblur_stl10.py --config.mode=fullmultiscale

The workdir defaults to runs/<config name> (plus _<argument> for --config <file>.py:<argument>
and for a config's default variant, then _<model> and _<mode> when --config.model and
--config.mode are given, and _seed<N> for a seed other than the config's); running the same
command again resumes there with the run's own step budget; an explicit larger
--config.train.steps extends it (a full-multiscale run in its finest stage).
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
        get_config = config_files.load_module(path).get_config
        config = get_config(argument) if argument else get_config()
    except Exception:  # the flag parser has said what is wrong with the file itself
        config = defaults.get_config()
    return set(rundir.flat(config))


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
        get_config = config_files.load_module(path).get_config
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
        return default_variant(config_files.load_module(path).get_config)
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
    _check_config_file(argv)
    sys.argv = argv  # ml_collections reads the --config.* overrides from sys.argv
    _key_flags(["config", "workdir"], argv)

    def main(_):
        logging.set_verbosity(logging.WARNING)
        _train(flags.FLAGS, config_flags)

    app.run(main, argv=argv, flags_parser=_parse)


def _check_config_file(argv) -> None:
    from msjax import config_file, errors

    name = next((a[len("--config="):] for a in argv if a.startswith("--config=")), None)
    if name is None and "--config" in argv[:-1]:
        name = argv[argv.index("--config") + 1]
    if name is not None:
        try:
            config_file.check(name)
        except errors.MsjaxError as e:
            _error(str(e))


def _train(FLAGS, config_flags) -> None:
    from msjax import errors

    config = FLAGS.config
    overridden = config_flags.get_override_values(FLAGS["config"])
    budget_over_stages(config, overridden)
    workdir = FLAGS.workdir or str(default_workdir(
        config_flags.get_config_filename(FLAGS["config"]), config, overridden))
    from msjax import backend, config_check

    try:  # before jax starts its backends with a device count the config may get wrong
        config_check.validate(config)
    except errors.MsjaxError as e:
        _error(str(e))
    backend.set_cpu_devices(config.runtime)
    import jax

    from msjax import build, logs, storage, train

    print(f"workdir: {workdir}", flush=True)
    extend = "train.steps" in overridden  # extending a run is asked for explicitly
    try:
        if not extend:
            note = build.keep_own_budget(config, workdir)
            if note:
                print(note, flush=True)
                logs.append_to_log(workdir, note)
        result = train.run(config, workdir, extend=extend)
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


# ---- python -m msjax.import_torch -----------------------------------------------------------

def official_variant(config_file: str, scheme: str) -> str:
    """``config_file`` with ``:official`` where the weights are an official MGE checkpoint, the
    config has that variant and no other was named."""
    path, _, argument = config_file.partition(":")
    if scheme != "official" or argument:
        return config_file
    try:
        get_config = config_files.load_module(path).get_config
        # A config whose argument is something else (sr_urban100's is the model) is no variant.
        same_model = get_config("official").model == get_config().model
    except Exception:  # the config takes no argument, or refuses this one
        return config_file
    return f"{path}:official" if same_model else config_file


IMPORT_USAGE = """Import trained PyTorch weights into an msjax run directory.

  python -m msjax.import_torch FILE --config CONFIG [--workdir RUN] [--scheme official|edsr|basicsr]

FILE: a .pt / .pth state dict (zip or legacy format), a .safetensors file, an official MGE
checkpoint (best_model.pt) or a BasicSR params / params_ema file. CONFIG names the msjax model
and its hyperparameters (--config.model_kwargs.* overrides as for train.py); an official
checkpoint takes its config's :official variant unless another is named. The run directory
defaults to runs/<config name>_<file stem>; eval.py, train.init_from and eco.teacher_workdir
take it, and train.py --workdir on it fine-tunes from the imported weights.
"""


def _weights_file(argv) -> str | None:
    """The first argument that is neither a flag nor a flag's value."""
    for i, a in enumerate(argv[1:], 1):
        if not a.startswith("-") and not (i > 1 and argv[i - 1] in ("--config", "--workdir",
                                                                   "--scheme")):
            return a
    return None


def import_torch(argv=None) -> None:
    """``python -m msjax.import_torch``: weights file + config -> a run directory."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    from msjax import errors
    from msjax import import_torch as importer
    from msjax.models import torch_keys

    argv = list(sys.argv if argv is None else argv)
    sys.modules["__main__"].__doc__ = IMPORT_USAGE
    file = _weights_file(argv)
    # The scheme picks the config's variant, so it is known before the flags are parsed.
    scheme = next((a.split("=", 1)[1] for a in argv if a.startswith("--scheme=")), None)
    if scheme is None and "--scheme" in argv[:-1]:
        scheme = argv[argv.index("--scheme") + 1]
    if file is not None and scheme is None:
        try:
            scheme = torch_keys.detect_scheme(importer.read_state_dict(file)[0])
        except errors.MsjaxError as e:
            _error(str(e))
    for i, a in enumerate(argv):
        name = a[len("--config="):] if a.startswith("--config=") else (
            argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
        if name is not None:
            resolved = resolve_config_file(name)
            chosen = resolved if ":" in name else official_variant(resolved, scheme or "")
            if chosen != resolved:
                print(f"official checkpoint: importing with {chosen}", flush=True)
            if a == "--config":
                argv[i + 1] = chosen
            else:
                argv[i] = "--config=" + chosen
            break
    config_flags.DEFINE_config_file("config", None, "msjax config of the model (configs/*.py)",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory to write (default: runs/<config "
                        "name>_<file stem>); must not hold a run")
    flags.DEFINE_enum("scheme", None, list(torch_keys.SCHEMES), "the file's key names (default: "
                      "detected from them)")
    flags.mark_flags_as_required(["config"])
    sys.argv = argv
    _key_flags(["config", "workdir", "scheme"], argv)

    def run(args):
        logging.set_verbosity(logging.WARNING)
        F = flags.FLAGS
        if len(args) != 2:
            _error("name one weights file: python -m msjax.import_torch FILE --config CONFIG "
                   "(--help for more)")
        config_file = config_flags.get_config_filename(F["config"])
        stem = re.sub(r"[^\w.-]", "_", Path(args[1]).stem)
        workdir = F.workdir or str(rundir_default(config_file, stem))
        from msjax import backend

        backend.set_cpu_devices(F.config.runtime)
        try:
            importer.import_file(args[1], F.config, workdir, scheme=F.scheme)
        except errors.MsjaxError as e:
            _error(str(e))
        print(f"evaluate: python eval.py --workdir {workdir}; fine-tune: python train.py "
              f"--config {config_file} (with the same --config.* overrides) --workdir "
              f"{workdir}, or start another run from it with --config.train.init_from={workdir}")

    app.run(run, argv=argv, flags_parser=_parse)


def rundir_default(config_file: str, stem: str) -> Path:
    """``runs/<config name>[_<argument>]_<weights file stem>``."""
    from msjax import rundir

    base = rundir.default_workdir(config_file)
    return base.with_name(f"{base.name}_{stem}")


# ---- python -m msjax.export ------------------------------------------------------------------

EXPORT_USAGE = """Export a trained run's restorer: a jax.export artefact (StableHLO) or an ONNX
model, with a JSON card beside it (RUN/export/<model>-step<N>.<format> and <file>.json by
default).

  python -m msjax.export runs/quickstart --format onnx
  python -m msjax.export runs/quickstart --format stablehlo --checkpoint latest

The file takes NHWC float32 images in [0, 1] (and t for time-conditioned tasks), padded by
mirroring to a multiple of 8 as run.restore pads them; it is checked against run.restore on a
photo as it is written. ONNX needs the export extra: pip install 'msjax[export]'.
"""


def export(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m msjax.export", description=EXPORT_USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run directory written by train.py")
    parser.add_argument("--format", required=True, choices=["stablehlo", "onnx"])
    parser.add_argument("--checkpoint", default="best",
                        help="best (default), latest or a step number")
    parser.add_argument("--out", default="", help="file to write (the card goes to FILE.json)")
    parser.add_argument("--size", default="", help="HxW: a fixed input size (multiples of 8) "
                        "instead of free ones")
    parser.error = lambda message: _error(f"{message} (python -m msjax.export --help)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from msjax import errors
    from msjax import export as exporting

    try:
        done = exporting.export_run(args.run, args.format, args.checkpoint, args.out or None,
                                    exporting.parse_size(args.size))
    except errors.MsjaxError as e:
        _error(str(e))
    print(f"wrote {done.path} (step {done.card['step']}), checked against run.restore: max abs "
          f"difference {done.max_abs_diff:.3g} (tolerance {exporting.TOLERANCE:g})")
    print(f"card: {done.card_path}")
