"""A run's life in its workdir, as the loop handles it: damaged and non-finite checkpoints,
nothing readable, a second trainer, storage failing mid-run, skipped steps, extending a
finished run, bad input named in one line, and the device input path moving nothing."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import build, checkpoints, errors, rundir, runs, train
from msjax.lock import WorkdirLock
from tests.helpers import tiny_config, write_images

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides):
    return tiny_config(**{"mode": "single", "train.steps": 4, "log.eval_every": 2,
                          "log.checkpoint_every": 1, **overrides})


def _data_files(folder: Path) -> list[Path]:
    """The files holding a checkpoint's array data (TensorStore's ``d/`` chunks)."""
    return [p for p in folder.rglob("*") if p.is_file() and p.parent.name == "d"]


def test_a_garbled_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(tmp_path,
                                                                                   capsys):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_config(), workdir)
    for data_file in _data_files(workdir / "checkpoints" / "4" / "state"):
        raw = bytearray(data_file.read_bytes())
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # same size, other bytes
        data_file.write_bytes(bytes(raw))
    result = train.train_and_evaluate(_config(**{"train.steps": 5}), workdir, extend=True)
    out = capsys.readouterr().out
    assert "checkpoint 4" in out and "falling back to checkpoint 3" in out
    assert [p.name for p in (workdir / "checkpoints").glob("damaged-4-*")]
    assert result["step"] == 5 and np.isfinite(result["psnr"])


def test_a_checkpoint_with_non_finite_weights_is_set_aside_on_resume(tmp_path, capsys):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_config(), workdir)
    # A checkpoint whose numbers are bad but self-consistent (its digest matches): NaN weights.
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints")
    template = runs.load_state(workdir, "latest")[0]
    state, meta = ckpt.restore(4, template)
    ckpt.manager.delete(4)
    ckpt.save(4, state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params)), meta)
    ckpt.close()
    result = train.train_and_evaluate(_config(**{"train.steps": 6}), workdir, extend=True)
    out = capsys.readouterr().out
    assert "its parameters are not finite" in out and "falling back to checkpoint 3" in out
    assert result["step"] == 6 and np.isfinite(result["psnr"])
    assert list((workdir / "checkpoints").glob("damaged-4-*"))


def test_nothing_readable_is_refused_and_the_logs_are_left_alone(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_config(), workdir)
    for step in checkpoints.Checkpoints(workdir / "checkpoints", read_only=True).steps():
        for data_file in _data_files(workdir / "checkpoints" / str(step) / "state"):
            data_file.write_bytes(b"x")
    before = {p: p.read_bytes() for p in (workdir / "train.csv", workdir / "valid.csv")}
    with pytest.raises(errors.RunDirError, match="no usable checkpoint") as info:
        train.train_and_evaluate(_config(**{"train.steps": 5}), workdir, extend=True)
    assert "Nothing was changed" in str(info.value)
    assert {p: p.read_bytes() for p in before} == before


def test_a_second_trainer_on_a_workdir_in_use_is_refused_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with WorkdirLock(workdir):
        with pytest.raises(errors.RunDirError, match=f"pid {os.getpid()}"):
            train.train_and_evaluate(_config(), workdir)
    assert np.isfinite(train.train_and_evaluate(_config(), workdir)["psnr"])  # free again


def test_a_filesystem_turning_read_only_stops_the_run_with_one_line(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    real = os.makedirs
    saves = []

    def makedirs(path, *args, **kwargs):
        if re.search(r"/\d+\.orbax-checkpoint-tmp$", str(path)):  # a step's folder
            saves.append(path)
        if ".orbax-checkpoint-tmp" in str(path) and len(saves) > 2:
            # checkpoints 1 and 2 go through, then the disk refuses
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)
    with pytest.raises(errors.StorageError) as info:
        train.train_and_evaluate(_config(**{"train.steps": 6}), workdir)
    message = str(info.value)
    assert "Read-only file system" in message and "last good checkpoint is step 2" in message
    assert "\n" not in message
    monkeypatch.undo()
    assert checkpoints.Checkpoints(workdir / "checkpoints", read_only=True).steps() == [1, 2]


def test_skipped_steps_are_reported_and_too_many_stop_the_run(tmp_path, capsys):
    c = _config(**{"train.steps": 60, "log.every": 10, "log.eval_every": 60,
                   "log.checkpoint_every": 60, "runtime.nonfinite": "skip", "train.lr": 1e12,
                   "task.name": "denoise"})
    with pytest.raises(errors.NonFiniteError, match="of the last 50 steps were non-finite") as e:
        train.train_and_evaluate(c, tmp_path / "run")
    assert "no good checkpoint was saved before it" in str(e.value)
    assert "non-finite step(s) skipped" in capsys.readouterr().out


def test_a_non_finite_stop_names_only_checkpoints_that_exist(tmp_path):
    c = _config(**{"train.lr": 1e12, "task.name": "denoise", "train.steps": 3})
    with pytest.raises(errors.NonFiniteError) as info:
        train.train_and_evaluate(c, tmp_path / "run")
    message = str(info.value)
    assert "step 0" not in message.split("checkpoint")[-1]
    steps = checkpoints.Checkpoints(tmp_path / "run" / "checkpoints", read_only=True).steps()
    good = [s for s in steps if rundir.checkpoint_meta(tmp_path / "run", s).get("good")]
    assert (f"(step {max(good)})" in message) if good else ("no good checkpoint" in message)


def test_a_finished_run_reports_without_training_and_a_larger_budget_extends_it(tmp_path,
                                                                               capsys):
    workdir = tmp_path / "run"
    first = train.train_and_evaluate(_config(), workdir)
    capsys.readouterr()
    again = train.train_and_evaluate(_config(), workdir)
    out = capsys.readouterr().out
    assert again["finished"] and again["step"] == 4 and "compiling" not in out
    assert again["psnr"] == pytest.approx(first["psnr"])
    with pytest.raises(errors.RunDirError, match="extending a run is explicit"):
        train.train_and_evaluate(_config(**{"train.steps": 6}), workdir)
    longer = train.train_and_evaluate(_config(**{"train.steps": 6}), workdir, extend=True)
    out = capsys.readouterr().out
    assert "extending the run from 4 to 6 steps" in out and longer["step"] == 6
    with pytest.raises(errors.RunDirError, match="can be extended, not shortened"):
        train.train_and_evaluate(_config(**{"train.steps": 3}), workdir)


def test_a_patch_larger_than_every_image_is_one_data_error(tmp_path):
    folder = write_images(tmp_path / "imgs", 2, size=(12, 12))
    c = _config(**{"data.source": "folder", "data.train_dir": str(folder)})
    with pytest.raises(errors.DataError,
                       match="no usable images .* lower --config.data.patch") as info:
        train.train_and_evaluate(c, tmp_path / "run")
    assert "\n" not in str(info.value)


def _cli(tmp_path, *args):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", MSJAX_HUGE_PAGES="0")
    return subprocess.run([sys.executable, "train.py", "--config", "configs/quickstart.py",
                           "--workdir", str(tmp_path / "run"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_mistyped_config_field_is_one_line_with_the_nearest_field_and_exit_2(tmp_path):
    out = _cli(tmp_path, "--config.train.stpes=5")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --config.train.stpes: no such config field; did you mean train.steps?; python "
        "train.py --help lists the sections, msjax/defaults.py has every field"]
    bad_value = _cli(tmp_path, "--config.train.steps=abc")
    assert bad_value.returncode == 2 and len(bad_value.stderr.strip().splitlines()) == 1
    help_text = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO,
                               capture_output=True, text=True).stdout
    assert "runtime   devices, processes" in help_text and "msjax/defaults.py" in help_text


def test_a_short_run_prints_plain_lines_without_library_warnings(tmp_path):
    out = _cli(tmp_path, "--config.train.steps=6", "--config.log.every=2",
               "--config.log.eval_every=3", "--config.data.patch=32",
               "--config.model_kwargs.features=8", "--config.model_kwargs.depth=2",
               "--config.batch_size=4", "--config.data.valid_images=2",
               "--config.runtime.cpu_convolutions=eigen")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (out.stdout + out.stderr).splitlines()
    assert not [l for l in lines if "WARNING" in l or l[:1] in ("W", "E") and l[1:5].isdigit()]
    assert any(l.startswith("step 2/6 (33%)  stage 1/2") for l in lines)
    assert "\r" not in out.stdout  # not a terminal: one plain line per log step
    assert "finished: step 6 in" in out.stdout
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 6/6 (100%)" in log and "valid PSNR" in log


def test_the_device_input_path_moves_nothing_from_the_host_during_training(tmp_path, capsys):
    # disallow_explicit forbids even explicit transfers: the device path makes none.
    c = _config(**{"data.on_device": "true", "runtime.transfer_guard": "disallow_explicit",
                   "mode": "fullmultiscale"})
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["psnr"]) and "input: on device" in capsys.readouterr().out
    with pytest.raises(Exception, match="host-to-device transfer"):
        train.train_and_evaluate(_config(**{"data.on_device": "false",
                                            "runtime.transfer_guard": "disallow_explicit"}),
                                 tmp_path / "host")


def test_a_run_written_before_a_field_existed_resumes_at_that_fields_default(tmp_path):
    import json

    c = tiny_config()
    rundir.write_config(tmp_path, build.experiment(c).record)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["fms.max_terms"]  # as written by an msjax without the field
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert build.resume(tmp_path, build.experiment(c)).kind == "same"
    c.fms.max_terms = 1  # the field away from its default is another experiment
    with pytest.raises(errors.RunDirError, match="fms.max_terms: 0 -> 1"):
        build.resume(tmp_path, build.experiment(c))
