"""Nothing is lost and every failure is explained: resume, preemption, damage, NaN, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from msjax import build, checkpoints, config_check, data, errors, runs, train
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _final_state(workdir, step):
    state, _, _ = runs.load_state(workdir, "latest")
    assert int(state.step) == step
    return jax.tree.map(np.asarray, {"params": state.params, "opt_state": state.opt_state})


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)  # bitwise: same programs, same inputs on CPU


def _train_cli(workdir, *overrides):
    return [sys.executable, "train.py", "--config", "configs/quickstart.py",
            "--workdir", str(workdir), "--config.train.steps=12", "--config.data.patch=32",
            "--config.model_kwargs.features=8", "--config.model_kwargs.depth=2",
            "--config.log.eval_every=6", "--config.log.every=1",
            "--config.log.checkpoint_every=1", "--config.batch_size=4",
            "--config.data.valid_images=2", "--config.mge.levels=2",
            "--config.fms.stage_weights=(1,1,1)",
            "--config.runtime.cpu_convolutions=eigen", *overrides]


def _wait_for_checkpoint(workdir, step, proc, timeout=240):
    ckpt_dir = Path(workdir) / "checkpoints"
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        done = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
        if any(s >= step for s in done):
            return max(done)
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("on_device", ["true", "false"])
def test_sigkill_mid_stage_then_resume_is_bitwise_exact(tmp_path, on_device):
    """On both input paths: batches cut inside the step from the device-resident photos, and
    host workers."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    path = f"--config.data.on_device={on_device}"
    straight = tmp_path / "straight"
    subprocess.run(_train_cli(straight, path), cwd=REPO, env=env, check=True,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cli(killed, path), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _wait_for_checkpoint(killed, 5, proc)  # stage 1 runs steps 4..7: killed inside it
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_train_cli(killed, path), cwd=REPO, env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stderr + resumed.stdout
    _assert_trees_equal(_final_state(straight, 12), _final_state(killed, 12))


def test_sigterm_saves_and_exits_with_how_to_resume(tmp_path):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    workdir = tmp_path / "run"
    proc = subprocess.Popen(_train_cli(workdir, "--config.log.checkpoint_every=1000",
                                       "--config.log.eval_every=1000",
                                       "--config.train.steps=400"),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    train_csv = workdir / "train.csv"
    start = time.time()
    while time.time() - start < 240:
        if train_csv.exists() and len(train_csv.read_text().splitlines()) > 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Run the same command again to resume" in err
    steps = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True).steps()
    assert steps and 0 < steps[-1] < 400


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    c = tiny_config(**{"train.steps": 4, "log.eval_every": 2})
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    latest = workdir / "checkpoints" / "4"
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
            with open(f, "r+b") as fh:
                fh.truncate(f.stat().st_size // 2)
    messages = []
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True)
    template = runs.load_state(workdir, "best")[0]
    restored = ckpt.restore_latest(template, on_fallback=messages.append)
    assert restored is not None and restored[2] == 3
    assert messages and "checkpoint 4" in messages[0] and "falling back" in messages[0]


def test_best_checkpoint_is_never_replaced_by_a_worse_one(tmp_path):
    c = tiny_config(**{"train.steps": 6, "log.eval_every": 1, "train.lr": 3e-2})
    workdir = tmp_path / "run"
    result = train.train_and_evaluate(c, workdir)
    import csv

    rows = list(csv.DictReader(open(workdir / "valid.csv")))
    psnrs = {int(r["step"]): float(r["psnr"]) for r in rows}
    best = max(psnrs, key=psnrs.get)
    assert result["best_step"] == best
    kept = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True).steps()
    assert best in kept and 6 in kept


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    c = tiny_config(**{"train.steps": 6, "train.lr": 1e30, "train.lr_end": 1e29,
                       "task.name": "denoise"})
    with pytest.raises(errors.NonFiniteError, match=r"non-finite loss or gradient at step \d"):
        train.train_and_evaluate(c, tmp_path / "run")
    kept = checkpoints.Checkpoints(tmp_path / "run" / "checkpoints", read_only=True).steps()
    if kept:  # whatever was saved before the failure is finite
        state, _, _ = runs.load_state(tmp_path / "run", "latest")
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_nan_steps_can_be_skipped_and_are_counted(tmp_path):
    c = tiny_config(**{"train.steps": 4, "train.lr": 1e30, "train.lr_end": 1e29,
                       "task.name": "denoise", "runtime.nonfinite": "skip"})
    train.train_and_evaluate(c, tmp_path / "run")
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "train.csv")))
    assert int(float(rows[-1]["skipped"])) >= 1


def _bad_folder(folder: Path, patch: int) -> dict:
    """One file of every kind a real folder holds; returns name -> expected fate."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "good.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / "rgba.png")
    Image.fromarray((rng.random((32, 32)) * 65535).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rgb[:8, :8]).save(folder / "small.png")
    (folder / "notes.png").write_text("this is not an image")
    Image.fromarray(rgb).save(folder / "truncated.png")
    raw = (folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(raw[: len(raw) // 2])
    return {"good.png": "used", "gray.png": "used", "rgba.png": "used", "deep16.png": "used",
            "small.png": "skipped", "notes.png": "skipped", "truncated.png": "skipped"}


def test_bad_images_are_converted_or_skipped_and_counted(tmp_path):
    fates = _bad_folder(tmp_path / "imgs", 16)
    source = data.scan_folder(str(tmp_path / "imgs"), min_side=16, bad_images="skip")
    used = {p.name for p in source.files}
    assert used == {n for n, f in fates.items() if f == "used"}
    assert {Path(p).name for p in source.skipped} == {n for n, f in fates.items() if f == "skipped"}
    for i in range(len(source)):
        img = source[i]
        assert img.shape == (32, 32, 3)
        assert data.to_float(img).max() <= 1.0


@pytest.mark.parametrize("name", ["small.png", "notes.png", "truncated.png"])
def test_bad_images_can_be_rejected_naming_the_file(tmp_path, name):
    _bad_folder(tmp_path / "imgs", 16)
    for other in ("small.png", "notes.png", "truncated.png"):
        if other != name:
            (tmp_path / "imgs" / other).unlink()
    with pytest.raises(data.DataError, match=name):
        data.scan_folder(str(tmp_path / "imgs"), min_side=16, bad_images="error")


IMPOSSIBLE = [
    ({"mode": "fastest"}, "mode='fastest' is unknown"),
    ({"model": "vgg"}, "model='vgg' is unknown"),
    ({"task.name": "colorize"}, "task.name='colorize' is unknown"),
    ({"data.source": "s3"}, "data.source='s3' is unknown"),
    ({"mge.restriction": "lanczos"}, "mge.restriction='lanczos' is unknown"),
    ({"data.patch": 18}, "does not divide by"),
    ({"train.steps": -5}, "train.steps=-5 must be positive"),
    ({"train.lr": 0.0}, "train.lr=0.0 must be positive"),
    ({"train.lr_end": 1.0}, "train.lr_end=1.0 must lie in"),
    ({"log.eval_every": 0}, "log.eval_every=0 must be positive"),
    ({"dtype": "float16"}, "dtype='float16' is unknown"),
    ({"mge.batch_sizes": (4, 4)}, "needs 3"),
    ({"mode": "fullmultiscale", "fms.stage_weights": (1, 1)}, "needs 3"),
    ({"mode": "fullmultiscale", "train.steps": 2}, "too few"),
    ({"batch_size": 0}, "batch_size=0 must be positive"),
    ({"task.name": "sr", "task.scale": 5, "task.upsample_input": True}, "task.scale=5"),
    ({"task.name": "sr"}, "keeps image sizes"),
    ({"task.loss": "perceptual"}, "task.loss='perceptual' is unknown"),
    ({"runtime.nonfinite": "ignore"}, "runtime.nonfinite='ignore' is unknown"),
    ({"train.optimizer": "sgd"}, "train.optimizer='sgd' is unknown"),
    ({"data.source": "tfds", "data.name": ""}, "needs data.name"),
    ({"model": "unet", "model_kwargs": {}, "data.patch": 8}, "needs image sides divisible by 4"),
    ({"task.blur_sigma": (0.0, 1.0)}, "blur_sigma"),
    ({"task.name": "inpaint", "task.box_count": (3, 1)}, "box_count"),
    ({"mge.shared_batch": True, "mge.batch_sizes": (4, 8, 16)}, "shared_batch"),
    ({"data.bad_images": "fix"}, "data.bad_images='fix' is unknown"),
]


@pytest.mark.parametrize("overrides,message", IMPOSSIBLE,
                         ids=[m for _, m in IMPOSSIBLE])
def test_impossible_config_fails_before_compiling_with_one_clear_line(overrides, message):
    c = tiny_config(**overrides)
    with pytest.raises(config_check.ConfigError, match=message.replace("(", r"\(")) as info:
        build.experiment(c)
    assert "\n" not in str(info.value)


def test_missing_workdir_parents_are_created_and_a_file_is_refused(tmp_path):
    train.train_and_evaluate(tiny_config(**{"train.steps": 1}), tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run" / "config.json").exists()
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(errors.RunDirError, match="is a file, not a directory"):
        train.train_and_evaluate(tiny_config(), tmp_path / "file")


def test_model_options_that_do_not_exist_are_a_config_error():
    with pytest.raises(config_check.ConfigError, match="do not fit model=residual_cnn"):
        build.experiment(tiny_config(model_kwargs={"width": 3}))


def test_clis_restart_once_on_huge_pages_keeping_pid_and_other_tunables():
    code = ("import os; print('pid', os.getpid(), flush=True); "
            "from msjax.backend.hugepages import restart_with_huge_pages; restart_with_huge_pages(); "
            "print('tunables', os.environ.get('GLIBC_TUNABLES'))")

    def run(**env):
        base = {k: v for k, v in os.environ.items()
                if k not in ("GLIBC_TUNABLES", "MSJAX_HUGE_PAGES")}
        out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        pids = [line for line in out if line.startswith("pid")]
        assert len(set(pids)) == 1  # execve: the same process
        return len(pids), [line for line in out if line.startswith("tunables")]

    assert run() == (2, ["tunables glibc.malloc.hugetlb=1"])
    assert run(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == (
        2, ["tunables glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"])
    assert run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == (1, ["tunables glibc.malloc.hugetlb=0"])
    assert run(MSJAX_HUGE_PAGES="0") == (1, ["tunables None"])
