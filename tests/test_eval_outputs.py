"""eval.py's outputs: one folder per target, never overwritten unasked; inputs scored beside the
outputs and saved with them; unreadable files handled by the bad-image policy, with the CSV and
summary always written for what was done."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msjax import evaluate, metrics, resize, train
from msjax.errors import DataError, RunDirError
from tests.helpers import tiny_config, write_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("deblur") / "run"
    train.train_and_evaluate(tiny_config(**{"train.steps": 2, "log.eval_every": 2}), workdir)
    return workdir


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _truncated_png(path: Path):
    """A PNG cut in half, as an interrupted copy leaves it."""
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (24, 28, 3), np.uint8)).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


def test_validation_scores_and_restored_crops_go_to_their_own_folder(run):
    rows, summary, out = evaluate.run(str(run), which="latest")
    assert out == run / "eval" / "latest-2" / "valid"
    assert [r["image"] for r in rows] == [f"valid_{i:03d}" for i in range(4)]
    assert {"psnr", "input_psnr", "ssim", "input_ssim"} <= set(_csv(out / "per_image.csv")[0])
    logged = _csv(run / "valid.csv")[-1]
    np.testing.assert_allclose(summary["input_psnr"], float(logged["input_psnr"]), atol=1e-4)
    for i in range(4):
        assert Image.open(out / f"valid_{i:03d}.png").size == (16, 16)
        assert (out / "input" / f"valid_{i:03d}.png").exists()
        assert (out / "compare" / f"valid_{i:03d}.png").exists()
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_a_second_evaluation_never_overwrites_the_first(run, tmp_path):
    inputs = write_images(tmp_path / "LR", 2, size=(20, 24))
    _, _, first = evaluate.run(str(run), input_dir=str(inputs))
    before = (first / "summary.json").read_text()
    _, _, valid = evaluate.run(str(run))          # another target: another folder
    _, _, again = evaluate.run(str(run), input_dir=str(inputs))  # the same target: a new name
    assert first.name == "folder-LR" and again.name == "folder-LR-2"
    assert valid.parent == first.parent and valid.name.startswith("valid")
    assert (first / "summary.json").read_text() == before
    # Asked explicitly, the folder holding this very target is replaced, no new one made.
    _, summary, replaced = evaluate.run(str(run), input_dir=str(inputs), overwrite=True)
    assert replaced == first and summary["replaced_earlier"] is True
    assert not (first.parent / "folder-LR-3").exists()


def test_an_evaluation_with_other_options_is_named_by_what_differs(run, tmp_path):
    inputs = str(write_images(tmp_path / "photos", 1, size=(20, 24)))
    _, _, plain = evaluate.run(str(run), input_dir=inputs)
    _, _, tiled = evaluate.run(str(run), input_dir=inputs, tile=32)
    _, _, ensemble = evaluate.run(str(run), input_dir=inputs, self_ensemble=True)
    _, _, metric = evaluate.run(str(run), input_dir=inputs, crop_border=2, y_channel=True)
    _, _, tiled_again = evaluate.run(str(run), input_dir=inputs, tile=32)
    assert plain.name == "folder-photos"
    assert tiled.name == "folder-photos-tile32" and ensemble.name == "folder-photos-ensemble"
    assert metric.name == "folder-photos-crop2-y"
    # Only an exact repeat takes a number, and nothing is replaced unasked.
    assert tiled_again.name == "folder-photos-tile32-2"
    assert json.loads((tiled / "target.json").read_text())["identity"]["variant"] == ["tile32"]
    _, summary, replaced = evaluate.run(str(run), input_dir=inputs, tile=32, overwrite=True)
    assert replaced == tiled and summary["replaced_earlier"] is True
    # The validation set is scored as training did, whatever the options: one name.
    assert evaluate.run(str(run), which="latest", tile=32)[2].name.startswith("valid")
    assert "tile" not in evaluate.run(str(run), which="latest", tile=32)[2].name


def test_two_different_folders_with_one_name_never_share_an_output(run, tmp_path):
    a = write_images(tmp_path / "a" / "LR", 1, size=(20, 20), seed=1)
    b = write_images(tmp_path / "b" / "LR", 1, size=(20, 20), seed=2)
    _, _, out_a = evaluate.run(str(run), input_dir=str(a), output_dir="")
    _, _, out_b = evaluate.run(str(run), input_dir=str(b), overwrite=True)
    assert out_a != out_b
    ids = [json.loads((o / "target.json").read_text())["identity"]["input_dir"]
           for o in (out_a, out_b)]
    assert ids == [str(a.resolve()), str(b.resolve())]


def test_an_explicit_output_dir_holding_results_needs_overwrite(run, tmp_path):
    inputs = write_images(tmp_path / "in", 1, size=(20, 20))
    evaluate.run(str(run), input_dir=str(inputs), output_dir=str(tmp_path / "out"))
    with pytest.raises(RunDirError, match="--overwrite"):
        evaluate.run(str(run), input_dir=str(inputs), output_dir=str(tmp_path / "out"))
    evaluate.run(str(run), input_dir=str(inputs), output_dir=str(tmp_path / "out"),
                 overwrite=True)


def test_folder_rows_score_the_input_beside_the_output(run, tmp_path):
    targets = write_images(tmp_path / "gt", 2, size=(24, 20), seed=3)
    inputs = tmp_path / "noisy"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for p in sorted(targets.iterdir()):
        x = np.asarray(Image.open(p), np.float64)
        y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
        Image.fromarray(y).save(inputs / p.name)
    rows, summary, out = evaluate.run(str(run), input_dir=str(inputs), target_dir=str(targets))
    assert list(rows[0]) == ["image", "psnr", "ssim", "input_psnr", "input_ssim"]
    for row in rows:
        y = np.asarray(Image.open(inputs / row["image"]), np.float64)
        x = np.asarray(Image.open(targets / row["image"]), np.float64)
        np.testing.assert_allclose(row["input_psnr"], metrics.psnr(y, x), atol=1e-6)
        restored = np.asarray(Image.open(out / row["image"]), np.float64)
        np.testing.assert_allclose(row["psnr"], metrics.psnr(restored, x), atol=1e-6)
        stem = Path(row["image"]).stem
        np.testing.assert_array_equal(np.asarray(Image.open(out / "input" / f"{stem}.png")),
                                      y.astype(np.uint8))
        side_by_side = Image.open(out / "compare" / f"{stem}.png")
        assert side_by_side.size[0] > 3 * restored.shape[1]  # input, output, target
    assert summary["input_psnr"] == pytest.approx(np.mean([r["input_psnr"] for r in rows]))


def test_sr_input_is_scored_as_its_matlab_bicubic_upsampling(tmp_path):
    c = tiny_config(**{"task.name": "sr", "task.residual": False, "model": "edsr",
                       "data.patch": 32, "mode": "single", "train.steps": 1,
                       "log.eval_every": 1})
    c.model_kwargs = dict(scale=2, n_resblocks=1, n_feats=8)
    train.train_and_evaluate(c, tmp_path / "sr")
    targets = write_images(tmp_path / "hr", 1, size=(20, 24), seed=4)
    rows, _, out = evaluate.run(str(tmp_path / "sr"), target_dir=str(targets), which="latest")
    x = np.asarray(Image.open(targets / "img00.png"), np.float64) / 255
    lr = np.asarray(Image.open(out / "input" / "img00.png"), np.float64) / 255
    assert lr.shape[:2] == (10, 12)
    bicubic = np.round(np.clip(resize.imresize(lr, 2.0), 0, 1) * 255)
    # The input PNG is the 8-bit rounding of the float LR the model saw: within a rounding step.
    assert abs(rows[0]["input_psnr"] - metrics.psnr(bicubic, x * 255)) < 0.1
    assert Image.open(out / "compare" / "img00.png").size[0] > 4 * 24  # nearest, bicubic, ...


def test_unreadable_files_are_skipped_by_name(run, tmp_path):
    inputs = write_images(tmp_path / "mixed", 2, size=(20, 20))
    _truncated_png(inputs / "broken.png")
    (inputs / "notes.png").write_text("not an image")
    rows, summary, out = evaluate.run(str(run), input_dir=str(inputs), bad_images="skip")
    assert [r["image"] for r in rows] == ["img00.png", "img01.png"]
    assert sorted(Path(p).name for p in summary["skipped"]) == ["broken.png", "notes.png"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["images"] == 2 and len(saved["skipped"]) == 2 and saved["complete"]
    assert [r["image"] for r in _csv(out / "per_image.csv")] == ["img00.png", "img01.png"]


def test_with_the_error_policy_what_was_done_is_still_written(run, tmp_path):
    inputs = write_images(tmp_path / "strict", 1, size=(20, 20))  # img00.png is good
    _truncated_png(inputs / "img01.png")
    write_images(tmp_path / "more", 1, size=(20, 20), seed=9)
    (tmp_path / "more" / "img00.png").rename(inputs / "img02.png")
    with pytest.raises(DataError) as error:
        evaluate.run(str(run), input_dir=str(inputs), bad_images="error")
    message = str(error.value)
    assert "img01.png" in message and "--bad_images=skip" in message and "\n" not in message
    out = run / "eval" / "best-2" / "folder-strict"
    assert [r["image"] for r in _csv(out / "per_image.csv")] == ["img00.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and "img01.png" in summary["error"]


def test_eval_cli_errors_are_one_line_with_exit_2(run, tmp_path):
    inputs = write_images(tmp_path / "cli", 1, size=(20, 20))
    _truncated_png(inputs / "zz.png")
    proc = subprocess.run(
        [sys.executable, "eval.py", "--workdir", str(run), "--input_dir", str(inputs),
         "--bad_images", "error"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "zz.png" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_checkpoint_is_chosen_by_step_and_a_step_not_kept_names_the_kept(run):
    rows, summary, out = evaluate.run(str(run), which="1")
    assert summary["step"] == 1 and out == run / "eval" / "step-1" / "valid" and rows
    with pytest.raises(RunDirError) as info:
        evaluate.run(str(run), which="7")
    assert str(info.value) == (f"--checkpoint 7: {run / 'checkpoints'} keeps no checkpoint of "
                               "that step; it keeps 1, 2 (or pass best, latest)")


def test_a_folder_of_only_unreadable_images_is_an_error_naming_eval_flags(run, tmp_path):
    inputs = tmp_path / "broken"
    inputs.mkdir()
    _truncated_png(inputs / "a.png")
    (inputs / "b.png").write_text("not an image")
    with pytest.raises(DataError) as info:
        evaluate.run(str(run), input_dir=str(inputs), bad_images="skip")
    assert str(info.value).startswith(f"none of the 2 images in --input_dir {inputs} could be "
                                      "read (the first: a.png cannot be read")
    assert str(info.value).endswith("pass --input_dir a folder of readable images")
    for flag in ("input_dir", "target_dir"):
        with pytest.raises(DataError) as info:
            evaluate.run(str(run), **{flag: str(tmp_path / "nowhere")})
        assert str(info.value) == (f"--{flag} {tmp_path / 'nowhere'} is not a folder; pass "
                                   f"--{flag} a folder of images")


def test_a_failed_output_write_is_one_storage_error_leaving_no_partial_file(run, tmp_path,
                                                                             monkeypatch):
    import errno
    import os

    from msjax.errors import StorageError

    inputs = write_images(tmp_path / "full", 2, size=(20, 20))
    real, saved = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        if len(saved) == 3:  # the second image's output: made, then the disk is full
            open(fp, "wb").close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(fp)
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(StorageError) as info:
        evaluate.run(str(run), input_dir=str(inputs))
    out = run / "eval" / "best-2" / "folder-full"
    assert str(info.value).startswith(f"writing {out / 'img01.png'} failed (No space left on "
                                      "device, ENOSPC)")
    assert "\n" not in str(info.value)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.stat().st_size > 0 and not p.name.endswith(".tmp") for p in files)
    assert not (out / "img01.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["images"] == 1


def test_eval_flag_mistakes_are_answered_with_eval_flags(run, tmp_path):
    bad = subprocess.run([sys.executable, "eval.py", "--workdir", str(run), "--checkpoint",
                          "newest"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "--checkpoint takes best, latest or a step number" in bad.stderr
    missing = subprocess.run([sys.executable, "eval.py", "--workdir", str(run), "--input_dir",
                              str(tmp_path / "nowhere")], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "--input_dir" in missing.stderr and "--config" not in missing.stderr
