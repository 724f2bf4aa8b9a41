"""End to end: every task x mode trains a step; data paths; resume; evaluation."""

import csv
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from msjax import build, config_check, errors, evaluate, optim, runs, train
from tests.helpers import tiny_config, write_images

REPO = Path(__file__).resolve().parents[1]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", ["single", "multiscale", "fullmultiscale"])
@pytest.mark.parametrize("task", ["denoise", "deblur", "inpaint", "sr"])
def test_every_task_and_mode_trains_end_to_end(tmp_path, task, mode):
    overrides = {"task.name": task, "mode": mode}
    if task == "sr":
        overrides.update({"task.upsample_input": True, "data.patch": 32})
    result = train.train_and_evaluate(tiny_config(**overrides), tmp_path / "run")
    assert np.isfinite(result["psnr"])
    train_rows = _rows(tmp_path / "run" / "train.csv")
    assert [int(r["step"]) for r in train_rows] == [1, 2, 3]
    assert all(np.isfinite(float(r["loss"])) for r in train_rows)
    # The cost ledger grows with every step: work units and compiled FLOPs.
    assert float(train_rows[-1]["work_units"]) > float(train_rows[0]["work_units"]) > 0
    assert float(train_rows[-1]["flops"]) > 0
    valid_rows = _rows(tmp_path / "run" / "valid.csv")
    assert valid_rows[-1]["step"] == "3" and float(valid_rows[-1]["input_psnr"]) > 0


def test_fms_stage_logged_and_work_units_match_the_plan(tmp_path):
    c = tiny_config(mode="fullmultiscale")
    train.train_and_evaluate(c, tmp_path / "run")
    rows = _rows(tmp_path / "run" / "train.csv")
    assert [int(r["stage"]) for r in rows] == [0, 1, 2]
    stages = build.stages(c)
    from msjax import multiscale

    expected = np.cumsum([multiscale.work_units(s.plan, c.batch_size) for s in stages])
    np.testing.assert_allclose([float(r["work_units"]) for r in rows], expected)
    # Each stage compiles at its first step; that time is logged apart from the steps' own.
    compiling = [float(r["compile_seconds"]) for r in rows]
    assert 0 < compiling[0] < compiling[1] < compiling[2]
    # A tiny step takes milliseconds, a compile hundreds: `seconds` holds no compile time.
    assert float(rows[-1]["seconds"]) < compiling[-1] / 2


def test_tfds_source_trains_on_mock_data(tmp_path):
    c = tiny_config(**{"data.source": "tfds", "data.name": "cifar10", "data.patch": 32,
                       "data.data_dir": str(tmp_path / "tfds")})
    with tfds.testing.mock_data(num_examples=8):
        result = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["psnr"])


def test_folder_source_trains_on_written_images(tmp_path):
    write_images(tmp_path / "train", 5)
    write_images(tmp_path / "valid", 2, seed=1)
    c = tiny_config(**{"data.source": "folder", "data.train_dir": str(tmp_path / "train"),
                       "data.valid_dir": str(tmp_path / "valid")})
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["psnr"])


def test_paired_folders_train_sr_with_given_lr(tmp_path):
    from PIL import Image

    for split in ("train", "valid"):
        hr = write_images(tmp_path / f"{split}_hr", 3, size=(32, 32))
        (tmp_path / f"{split}_lr").mkdir()
        for p in hr.iterdir():
            Image.open(p).resize((16, 16), Image.BICUBIC).save(tmp_path / f"{split}_lr" / p.name)
    c = tiny_config(**{"task.name": "sr", "task.upsample_input": True, "data.patch": 32,
                       "data.source": "paired_folders",
                       "data.train_dir": str(tmp_path / "train_hr"),
                       "data.train_lr_dir": str(tmp_path / "train_lr"),
                       "data.valid_dir": str(tmp_path / "valid_hr"),
                       "data.valid_lr_dir": str(tmp_path / "valid_lr")})
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["psnr"])


def test_missing_stl10_fails_fast_with_instructions(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/deblur_stl10.py",
         "--workdir", str(tmp_path / "run"), f"--config.data.data_dir={tmp_path / 'none'}"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    assert "stl10" in proc.stderr and "tfds build stl10 --file_format=array_record" in proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_second_run_resumes_and_best_is_the_best_psnr(tmp_path):
    c = tiny_config(**{"train.steps": 6, "log.eval_every": 2, "mode": "fullmultiscale"})
    c.train.steps = 3
    c.fms.stage_weights = (1, 1, 1)
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    # A workdir written by another config is refused, never mixed.
    other = tiny_config(**{"train.steps": 3, "log.eval_every": 2, "mode": "fullmultiscale",
                           "train.lr": 5e-3})
    with pytest.raises(errors.RunDirError, match="another config"):
        train.train_and_evaluate(other, workdir)
    # Running again finds the run finished and does not train again.
    result = train.train_and_evaluate(c, workdir)
    assert result["step"] == 3
    rows = _rows(workdir / "valid.csv")
    best = max(rows, key=lambda r: float(r["psnr"]))
    assert result["best_step"] == int(best["step"])


def test_eval_matches_training_metrics_for_the_same_checkpoint(tmp_path):
    c = tiny_config(**{"train.steps": 4, "log.eval_every": 2})
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    rows, summary, _ = evaluate.run(str(workdir), which="latest")
    logged = _rows(workdir / "valid.csv")[-1]
    assert summary["step"] == 4
    np.testing.assert_allclose(summary["psnr"], float(logged["psnr"]), atol=1e-4)
    np.testing.assert_allclose(summary["ssim"], float(logged["ssim"]), atol=1e-5)


def test_eval_restores_a_folder_without_ground_truth_by_tiles(tmp_path):
    c = tiny_config()
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    inputs = write_images(tmp_path / "inputs", 2, size=(37, 53))
    rows, summary, out_dir = evaluate.run(str(workdir), input_dir=str(inputs), tile=32)
    assert summary["images"] == 2
    from PIL import Image

    assert Image.open(out_dir / "img00.png").size == (53, 37)


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_adam_weight_decay_is_torch_style_coupled_l2(decay):
    import jax.numpy as jnp

    c = tiny_config(**{"train.weight_decay": decay, "train.lr": 0.01, "train.lr_end": 0.01})
    settings = build.optimizer_settings(c)
    tx = optim.make_optimizer(settings, optim.learning_rate(settings, 10))
    params = {"w": jnp.full(3, 2.0)}
    update, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    # A zero loss gradient: Adam sees g = decay * w = 0.2, and its first step is -lr * g / |g|.
    np.testing.assert_allclose(update["w"], -0.01 if decay else 0.0, rtol=1e-4)


def test_eval_of_a_damage_run_uses_the_fixed_validation_damage(tmp_path):
    # A ground-truth folder is damaged by the task's fixed validation form, not by a random
    # draw that depends on the seed (scores would change with it).
    c = tiny_config(**{"task.name": "damage", "task.damage": "squares", "task.residual": False})
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    targets = write_images(tmp_path / "gt", 2, size=(32, 32))
    state, exp, _ = runs.load_state(workdir, "latest")
    rows = []
    for seed in (0, 1):
        rows.append(evaluate.evaluate_folder(state, dataclasses.replace(exp, seed=seed),
                                             target_dir=str(targets),
                                             output_dir=tmp_path / f"out{seed}"))
    assert rows[0] == rows[1] and np.isfinite(rows[0][0]["psnr"])


def test_per_stage_cosine_restarts_the_rate_at_every_fms_stage():
    c = tiny_config(mode="fullmultiscale", **{"train.steps": 30,
                                              "train.lr_schedule": "cosine_per_stage"})
    ends = tuple(s.end_step for s in build.stages(c))
    assert ends == (10, 20, 30)
    per_stage = optim.learning_rate(build.optimizer_settings(c), 30, ends)
    np.testing.assert_allclose([float(per_stage(s)) for s in (0, 10, 20)], 1e-3, rtol=1e-6)
    assert float(per_stage(9)) < 0.05 * 1e-3 and float(per_stage(19)) < 0.05 * 1e-3
    c.train.lr_schedule = "cosine"  # the official single cosine: the fine stage starts low
    assert float(optim.learning_rate(build.optimizer_settings(c), 30)(20)) < 0.3 * 1e-3
    c.train.lr_schedule = "linear"
    with pytest.raises(config_check.ConfigError, match="train.lr_schedule"):
        config_check.validate(c)


def test_short_side_resize_keeps_the_aspect_and_one_crop_per_image_is_the_centre():
    from msjax.data import pipeline

    face = np.zeros((218, 178, 3), np.uint8)
    face[109 - 2:109 + 2, 89 - 2:89 + 2] = 255              # a bright dot at the centre
    resize = pipeline.whole_image_resize(tiny_config(**{"data.resize_to": 71,
                                                        "data.resize_mode": "short_side"}).data)
    assert resize(face).shape == (87, 71, 3)               # the pyramidal reference's (87, 71)
    assert pipeline.resize_whole(face, 64).shape == (64, 64, 3)   # the official MGE loaders
    crops = pipeline.validation_crops([face], 1, 64, resize=resize)["target"]
    assert crops.shape == (1, 64, 64, 3)
    ys, xs = np.nonzero(crops[0, ..., 0] > 0.5)
    assert abs(ys.mean() - 31.5) < 2 and abs(xs.mean() - 31.5) < 2   # the dot stays central
    with pytest.raises(config_check.ConfigError, match="data.resize_mode"):
        config_check.validate(tiny_config(**{"data.resize_mode": "stretch"}))
