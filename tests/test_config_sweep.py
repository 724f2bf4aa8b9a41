"""Impossible configs, swept: each check of the validator (``config_check``), of the model
registrations (``minimum``) and of the config file is refused before anything is written or
compiled, as one line (the command line prints it and exits with status 2)."""

import pytest

from msjax import cli, config_file, errors, train
from msjax.models import MODELS
from tests.helpers import tiny_config

# (overrides, what the one line must say). One case per check.
IMPOSSIBLE = [
    ({"mode": "fastest"}, "mode='fastest' is unknown"),
    ({"model": "vgg"}, "model='vgg' is unknown"),
    ({"task.name": "colorize"}, "task.name='colorize' is unknown"),
    ({"task.loss": "perceptual"}, "task.loss='perceptual' is unknown"),
    ({"task.model_range": "huge"}, "task.model_range='huge' is unknown"),
    ({"data.source": "s3"}, "data.source='s3' is unknown"),
    ({"mge.restriction": "lanczos"}, "mge.restriction='lanczos' is unknown"),
    ({"dtype": "float16"}, "dtype='float16' is unknown"),
    ({"train.optimizer": "sgd"}, "train.optimizer='sgd' is unknown"),
    ({"data.bad_images": "fix"}, "data.bad_images='fix' is unknown"),
    ({"data.resize_mode": "crop"}, "data.resize_mode='crop' is unknown"),
    ({"data.resize_method": "lanczos"}, "data.resize_method='lanczos' is unknown"),
    ({"data.on_device": "maybe"}, "data.on_device='maybe' is unknown"),
    ({"data.augment": "vflip"}, "hflip"),
    ({"data.device_fraction": 0.0}, "data.device_fraction=0.0 must lie in"),
    ({"data.host_prefetch": 0}, "data.host_prefetch=0 must be >= 1"),
    ({"data.host_workers": -1}, "data.host_workers and data.host_cache_gib must be >= 0"),
    ({"data.normalize": True, "data.std": (0.5, 0.0, 0.5)}, "three positive stds"),
    ({"runtime.nonfinite": "ignore"}, "runtime.nonfinite='ignore' is unknown"),
    ({"runtime.max_skipped": -1.0}, "runtime.max_skipped=-1.0 must lie in [0, 1]"),
    ({"runtime.transfer_guard": "maybe"}, "runtime.transfer_guard='maybe' is unknown"),
    ({"runtime.num_devices": -1}, "runtime.num_devices=-1 must be >= 0"),
    ({"runtime.compile_ahead": "later"}, "runtime.compile_ahead='later' is unknown"),
    ({"runtime.steps_per_call": "0"}, "runtime.steps_per_call='0' must be auto"),
    ({"train.lr_schedule": "linear"}, "train.lr_schedule='linear' is unknown"),
    ({"fms.lr_schedule": "linear"}, "fms.lr_schedule='linear' is unknown"),
    ({"train.init_checkpoint": "first"}, "train.init_checkpoint='first' is unknown"),
    ({"fms.schedule": "greedy"}, "fms.schedule='greedy' is unknown"),
    ({"fms.schedule": "adaptive"}, "set --config.mode=fullmultiscale"),
    ({"fms.schedule": "adaptive", "mode": "fullmultiscale", "fms.window": 3, "log.every": 2},
     "fms.window=3 must be a positive multiple"),
    ({"fms.schedule": "adaptive", "mode": "fullmultiscale", "fms.window": 2,
      "fms.min_share": 0.0}, "fms.min_share must lie in"),
    ({"train.ema_decay": 1.0}, "train.ema_decay=1.0 must lie in [0, 1)"),
    ({"train.steps": -5}, "train.steps=-5 must be positive"),
    ({"train.lr": 0.0}, "train.lr=0.0 must be positive"),
    ({"train.grad_clip_norm": -1.0}, "train.grad_clip_norm=-1.0 must be >= 0"),
    ({"train.grad_clip_value": -1.0}, "train.grad_clip_value=-1.0 must be >= 0"),
    ({"train.weight_decay": -1.0}, "train.weight_decay=-1.0 must be >= 0"),
    ({"train.beta2": 2.0}, "train.beta2=2.0 must lie in [0, 1)"),
    ({"train.loss_spike_factor": -1.0}, "train.loss_spike_factor=-1.0 must be >= 0"),
    ({"mode": "fullmultiscale", "fms.stage_weights": (1, 0, 1)},
     "fms.stage_weights=(1, 0, 1) has 0 at stage 2"),
    ({"mode": "fullmultiscale", "fms.stage_steps": (5, 5, 0)},
     "fms.stage_steps=(5, 5, 0) has 0 at stage 3"),
    ({"train.init_from": "/nonexistent/run"},
     "train.init_from='/nonexistent/run' holds no trained run"),
    ({"train.lr_end": 1.0}, "train.lr_end=1.0 must lie in"),
    ({"log.every": 0}, "log.every=0 must be positive"),
    ({"log.eval_every": 0}, "log.eval_every=0 must be positive"),
    ({"log.checkpoint_every": 0}, "log.checkpoint_every=0 must be positive"),
    ({"batch_size": 0}, "batch_size=0 must be positive"),
    ({"fms.stage_batch_factor": 0}, "fms.stage_batch_factor=0 must be >= 1"),
    ({"mge.levels": -1}, "mge.levels=-1 must be >= 0"),
    ({"data.patch": 0}, "data.patch=0 must be positive"),
    ({"data.valid_images": 0}, "data.valid_images=0 must be positive"),
    ({"data.resize_to": 32, "data.source": "paired_folders"}, "LR/HR alignment of paired"),
    ({"data.resize_to": 32, "data.source": "official", "data.name": "urban100"},
     "official Urban100"),
    ({"data.source": "tfds", "data.name": ""}, "needs data.name"),
    ({"task.blur_sigma": (0.0, 1.0)}, "blur_sigma"),
    ({"task.name": "damage", "task.damage": "fire"}, "task.damage='fire' is unknown"),
    ({"task.name": "damage", "task.damage": "pixelate", "data.patch": 20, "mge.levels": 0},
     "must divide by 8"),
    ({"task.name": "damage", "task.damage": "jpeg", "mge.operator_per_level": True},
     "task.damage=jpeg runs on the host"),
    ({"task.name": "inpaint", "task.box_count": (3, 1)}, "box_count"),
    ({"task.name": "inpaint", "task.box_size": (0.5, 1.5)}, "box_size"),
    # validate_stages
    ({"task.name": "sr", "task.scale": 5, "task.upsample_input": True}, "task.scale=5"),
    ({"task.name": "sr"}, "keeps image sizes"),
    ({"task.name": "sr", "model": "edsr", "model_kwargs": {"scale": 2}, "task.residual": True},
     "task.residual adds the input"),
    ({"task.name": "sr", "model": "edsr", "model_kwargs": {"scale": 3}, "task.residual": False},
     "model_kwargs.scale=3 differs from task.scale=2"),
    ({"mode": "fullmultiscale", "train.steps": 2}, "too few"),
    ({"task.name": "sr", "task.upsample_input": True, "data.patch": 15}, "must divide by"),
    ({"data.patch": 18}, "does not divide by"),
    ({"model_kwargs": {"width": 3}}, "do not fit model=residual_cnn"),
    ({"model": "unet", "model_kwargs": {}, "data.patch": 8}, "needs image sides divisible by 4"),
    ({"mge.shared_batch": True, "mge.batch_sizes": (4, 8, 16)}, "shared_batch"),
    # the model registrations (residual_cnn: the quickstart's model)
    ({"model_kwargs": {"features": 8, "depth": 0}}, "model_kwargs.depth=0 does not fit"),
    ({"model_kwargs": {"features": -8, "depth": 2}}, "model_kwargs.features=-8 does not fit"),
]


@pytest.mark.parametrize("overrides,message", IMPOSSIBLE, ids=[m for _, m in IMPOSSIBLE])
def test_an_impossible_config_is_one_line_and_nothing_is_written(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    with pytest.raises(errors.ConfigError) as info:
        train.train_and_evaluate(tiny_config(**overrides), workdir)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not workdir.exists()


@pytest.mark.parametrize("name", sorted(MODELS.names()))
def test_every_registered_minimum_is_enforced(tmp_path, name):
    import dataclasses

    minimum = MODELS.info(name).get("minimum", {})
    counts = [f.name for f in dataclasses.fields(MODELS.get(name))
              if type(f.default) is int and f.name not in ("scale", "frozen")]
    assert set(counts) <= set(minimum), f"model {name}: no minimum declared for some options"
    for option, smallest in minimum.items():
        c = tiny_config(**{"model": name, "model_kwargs": {option: smallest - 1}})
        with pytest.raises(errors.ConfigError, match=f"model_kwargs.{option}={smallest - 1} "):
            train.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_init_from_a_run_without_checkpoints_is_refused_before_the_workdir(tmp_path):
    source = tmp_path / "source"
    (source / "checkpoints").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    with pytest.raises(errors.ConfigError, match="holds no trained run"):
        train.train_and_evaluate(tiny_config(**{"train.init_from": str(source)}),
                                 tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_patch_larger_than_the_images_is_one_data_error_before_the_workdir(tmp_path):
    c = tiny_config(**{"data.patch": 2048, "mge.levels": 0, "mode": "single"})
    with pytest.raises(errors.DataError, match="lower data.valid_patch") as info:
        train.train_and_evaluate(c, tmp_path / "run")
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli._check_config_file(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --config ")
    return lines[0]


def test_config_files_that_are_missing_broken_or_empty_are_one_line_exit_2(tmp_path, capsys):
    assert "no such config file" in _cli_error(capsys, ["train.py", "--config",
                                                        "configs/nope.py"])
    assert "quickstart" in _cli_error(capsys, ["train.py", "--config=nope"])
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    assert "at line 1; fix the file" in _cli_error(capsys, ["train.py", f"--config={broken}"])
    failing = tmp_path / "failing.py"
    failing.write_text("def get_config():\n    return 1 / 0\n")
    assert "ZeroDivisionError" in _cli_error(capsys, ["train.py", "--config", str(failing)])
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert "defines no get_config()" in _cli_error(capsys, ["train.py", "--config", str(empty)])
    cli._check_config_file(["train.py", "--config", cli.resolve_config_file("quickstart")])
    assert capsys.readouterr().err == ""


def test_packaged_experiments_are_named_for_a_missing_file():
    names = config_file.packaged_names()
    assert "quickstart" in names and not any(n.startswith("_") for n in names)
