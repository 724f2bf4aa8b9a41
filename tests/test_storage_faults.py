"""Every write a run makes fails the same way: one line naming the path, the reason and the last
good checkpoint, exit 2, no partial file, and the same command then resumes bit for bit.

Python writers' faults are injected into a ``train.py`` process (``FAULTS``); the C++ writers
(Orbax / TensorStore) need a real full filesystem: a small tmpfs in a private mount namespace."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from msjax import errors, lock, logs, runs, storage
from tests.helpers import can_mount_tmpfs

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
ARGS = ["--config", "configs/quickstart.py", f"--config.train.steps={STEPS}",
        "--config.data.patch=32", "--config.model_kwargs.features=8",
        "--config.model_kwargs.depth=2", "--config.log.eval_every=3", "--config.log.every=1",
        "--config.log.checkpoint_every=1", "--config.batch_size=4",
        "--config.data.valid_images=2", "--config.mge.levels=2",
        "--config.fms.stage_weights=(1,1,1)",
        "--config.runtime.cpu_convolutions=eigen"]

# Code run in the train.py process before the CLI: the fault, from its first matching write.
FAULTS = {
    # The workdir turning read-only: train.csv's third append is refused.
    "csv-read-only": """
        import builtins
        real_open, appends = builtins.open, [0]
        def fake_open(file, mode="r", *args, **kwargs):
            if str(file).endswith("train.csv") and "a" in mode:
                appends[0] += 1
                if appends[0] > 2:
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return real_open(file, mode, *args, **kwargs)
        builtins.open = fake_open
    """,
    # A full disk on an image: the file is made, its bytes do not fit.
    "image-full": """
        from PIL import Image
        def fake_save(self, fp, *args, **kwargs):
            open(fp, "wb").close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        Image.Image.save = fake_save
    """,
    # A full disk at start: the lock's record does not fit.
    "lock-full": """
        real_write = os.write
        def fake_write(fd, data):
            if data.startswith(b'{"host"'):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)
        os.write = fake_write
    """,
}
DRIVER = """
import errno, os, sys
{fault}
sys.argv = ["train.py", *sys.argv[1:]]
from msjax import cli
cli.train()
"""


def _env():
    return dict(os.environ, JAX_NUM_CPU_DEVICES="1", MSJAX_HUGE_PAGES="0", PYTHONPATH=str(REPO))


def _train(workdir, fault: str = ""):
    code = DRIVER.format(fault=textwrap.dedent(FAULTS[fault]) if fault else "")
    return subprocess.run([sys.executable, "-c", code, "--workdir", str(workdir), *ARGS],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _final_state(workdir):
    state, _, _ = runs.load_state(workdir, "latest")
    assert int(state.step) == STEPS
    return jax.tree.map(np.asarray, {"params": state.params, "opt_state": state.opt_state,
                                     "model_state": state.model_state})


def _assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def _assert_whole_logs(workdir):
    """Every CSV row whole and each step once; no temporary or empty file anywhere."""
    for name in ("train.csv", "valid.csv"):
        rows = logs.read_csv(workdir / name)
        steps = [int(r["step"]) for r in rows]
        assert steps == sorted(set(steps)), (name, steps)
        assert all(np.isfinite(r["loss"]) for r in rows)
    leftovers = [p for p in workdir.rglob("*") if p.is_file() and "checkpoints" not in p.parts
                 and (p.name.endswith(".tmp") or p.stat().st_size == 0) and p.name != "lock"]
    assert not leftovers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference") / "run"
    proc = _train(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, _final_state(workdir)


@pytest.mark.parametrize("fault, path", [("csv-read-only", "train.csv"),
                                         ("image-full", "images/valid_00000003.png")])
def test_a_failing_log_write_is_one_line_and_the_rerun_is_bitwise(tmp_path, reference, fault,
                                                                  path):
    workdir = tmp_path / "run"
    proc = _train(workdir, fault)
    line = _one_error_line(proc)
    reason = ("Read-only file system, EROFS" if fault == "csv-read-only"
              else "No space left on device, ENOSPC")
    assert line.startswith(f"error: writing {workdir / path} failed ({reason}); the last good "
                           f"checkpoint is step ")
    assert line.endswith("then run the same command to resume")
    assert "Traceback" not in proc.stdout + proc.stderr
    log = (workdir / "train.log").read_text()
    assert line in log and "library: OSError" in log  # the terminal's last line, its cause
    assert not (workdir / path).exists() or (workdir / path).stat().st_size > 0
    _assert_whole_logs(workdir)

    again = _train(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_bitwise(_final_state(workdir), reference[1])
    _assert_whole_logs(workdir)
    assert (workdir / "train.log").read_text().rstrip().endswith("report.md and report.png in "
                                                                 "the run")


def test_a_full_disk_at_start_is_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = _train(workdir, "lock-full")
    line = _one_error_line(proc)
    assert line.startswith(f"error: writing the lock file {workdir / 'lock'} failed (No space "
                           f"left on device, ENOSPC); no checkpoint was saved in "
                           f"{workdir / 'checkpoints'} yet. Free space")
    assert [p.name for p in workdir.iterdir()] == ["lock"] and not (workdir / "lock").read_text()


# ---- a real full or read-only filesystem -------------------------------------------------------

needs_mount = pytest.mark.skipif(
    sys.platform != "linux" or not can_mount_tmpfs(),
    reason="needs a private mount namespace (unshare -m, as root) to mount a small tmpfs; the "
           "injected faults above cover the Python writers without it")

# In one mount namespace: a small tmpfs, the run until its disk fills, the tmpfs grown (the
# space freed), the same command again, the workdir copied out before the namespace ends.
ON_TMPFS = """
set -u
mount -t tmpfs -o size=$SIZE tmpfs "$MOUNT"
"$@" > "$OUT/first.out" 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
mount -o remount,size=64m "$MOUNT"
"$@" > "$OUT/second.out" 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"
cp -a "$MOUNT/run" "$OUT/run"
"""


@needs_mount
@pytest.mark.parametrize("size", ["300k", "500k"])
def test_a_disk_filling_mid_run_is_one_line_and_the_rerun_is_bitwise(tmp_path, reference, size):
    mount, out = tmp_path / "mnt", tmp_path / "out"
    mount.mkdir(), out.mkdir()
    command = [sys.executable, "train.py", "--workdir", str(mount / "run"), *ARGS]
    subprocess.run(["unshare", "-m", "sh", "-c", ON_TMPFS, "sh", *command], cwd=REPO,
                   env={**_env(), "SIZE": size, "MOUNT": str(mount), "OUT": str(out)},
                   check=True, timeout=1200)
    first = subprocess.CompletedProcess([], int((out / "first.rc").read_text()),
                                        (out / "first.out").read_text(),
                                        (out / "first.err").read_text())
    line = _one_error_line(first)  # Orbax's and TensorStore's tracebacks stay off the terminal
    assert "(No space left on device, ENOSPC); " in line and str(mount / "run") in line
    assert "checkpoint" in line.split("ENOSPC); ")[1]
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()
    workdir = out / "run"
    _assert_bitwise(_final_state(workdir), reference[1])
    _assert_whole_logs(workdir)


# ---- the pieces ---------------------------------------------------------------------------------

def test_a_row_cut_short_is_dropped_on_resume(tmp_path):
    path = tmp_path / "train.csv"
    log = logs.CsvLog(path, ["step", "loss"])
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 0.5})
    with open(path, "a") as f:
        f.write("4,0.")  # the disk filled in the middle of a row
    logs.CsvLog(path, ["step", "loss"], resume_step=3).write({"step": 4, "loss": 0.25})
    assert [(r["step"], r["loss"]) for r in logs.read_csv(path)] == [
        (1, 0.5), (2, 0.5), (3, 0.5), (4, 0.25)]


def test_a_whole_file_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    storage.write_file(path, '{"a": 1}')

    def fill(tmp):
        tmp.write_text('{"a": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(errors.StorageError) as info:
        storage.write_file(path, fill)
    assert str(info.value).startswith(f"writing {path} failed (No space left on device, ENOSPC)")
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["config.json"]


def test_a_storage_error_in_a_run_names_its_last_good_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()  # never finished
    with storage.for_run(tmp_path / "checkpoints"), pytest.raises(errors.StorageError) as info:
        with storage.writing(tmp_path / "valid.csv"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert (f"(Disk quota exceeded, EDQUOT); the last good checkpoint is step 7 in "
            f"{tmp_path / 'checkpoints'}. Free space") in str(info.value)


def test_a_tensorstore_chain_keeps_its_code_and_its_cause():
    chain = ("OUT_OF_RANGE: " + "".join(f'Error opening "layer{i}" driver: ' for i in range(20))
             + "Requested byte range [0, 5763) is not valid for value of size 2881 "
             "[source locations='tensorstore/kvstore/byte_range.cc:42']")
    line = storage.first_line(ValueError(chain))
    assert line.startswith("ValueError: OUT_OF_RANGE: ... ") and len(line) <= 312
    assert line.endswith("is not valid for value of size 2881")


def test_the_lock_on_a_full_disk_is_a_storage_error_and_leaves_it_free(tmp_path, monkeypatch):
    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(errors.StorageError, match="writing the lock file .* ENOSPC"):
        lock.WorkdirLock(tmp_path).acquire()
    monkeypatch.setattr(os, "write", real)
    with lock.WorkdirLock(tmp_path):  # nothing held: the next run takes it
        pass


def _events(path):
    from tensorboardX.proto import event_pb2
    import struct

    raw, pos, out = path.read_bytes(), 0, []
    while pos < len(raw):
        (length,) = struct.unpack("<Q", raw[pos:pos + 8])
        out.append(event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
    return out


def test_a_resumed_runs_events_hide_only_the_steps_after_its_checkpoint(tmp_path):
    first = logs.RunLog(tmp_path, None)
    for step in (1, 2, 3, 4):
        first.scalars("train", {"step": step, "loss": 1.0 / step})
    first.close()
    second = logs.RunLog(tmp_path, 2)  # restored checkpoint 2: steps 3, 4 are done again
    for step in (3, 4):
        second.scalars("train", {"step": step, "loss": 0.5})
    second.close()
    files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"),
                   key=lambda p: any(e.HasField("session_log") for e in _events(p)))
    assert len(files) == 2  # two openings in one second keep both files
    starts = [e.step for e in _events(files[1]) if e.HasField("session_log")]
    assert starts == [3]  # TensorBoard drops the earlier files' events from step 3 on
    kept = [e.step for e in _events(files[0]) if e.summary.value and e.step < starts[0]]
    shown = kept + [e.step for e in _events(files[1]) if e.summary.value]
    assert shown == [1, 2, 3, 4]  # every step once: step 2's row is kept, as in the CSV
    assert [int(r["step"]) for r in logs.read_csv(tmp_path / "train.csv")] == [1, 2, 3, 4]


def test_library_tracebacks_go_to_train_log_not_the_terminal(tmp_path, capfd):
    from absl import logging as absl_logging

    path = tmp_path / "train.log"
    with storage.LibraryNoise(path):
        try:
            raise RuntimeError("Event loop is closed")
        except RuntimeError:
            absl_logging.exception("_SignalingThread.run() raised an exception")
        thread = threading.Thread(target=lambda: 1 / 0, name="writer")
        thread.start(), thread.join()
        sys.unraisablehook(type("U", (), {"exc_type": OSError, "exc_value": OSError(28, "full"),
                                          "exc_traceback": None, "object": "a coroutine",
                                          "err_msg": None})())
    assert storage.details_kept is True and storage.noise_note() == ""
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ZeroDivisionError" not in err
    log = path.read_text()
    for text in ("_SignalingThread.run() raised", "RuntimeError: Event loop is closed",
                 "exception in thread writer", "ZeroDivisionError",
                 "exception ignored in 'a coroutine'"):
        assert text in log
    absl_logging.error("after the run: shown again")
    assert "after the run" not in path.read_text()


def test_library_details_that_cannot_be_kept_are_said(tmp_path):
    folder = tmp_path / "gone"
    with storage.LibraryNoise(folder / "train.log"):
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start(), thread.join()
    assert storage.details_kept is False
    assert "train.log could not be written" in storage.noise_note()


def test_the_last_good_checkpoint_is_the_newest_that_passed_the_probe(tmp_path):
    # The folders as Orbax commits them, with the probe's verdict in the metrics item.
    folder = tmp_path / "checkpoints"
    for step, good in ((10, 1.0), (20, 1.0), (30, 0.0)):
        (folder / str(step) / "metrics").mkdir(parents=True)
        (folder / str(step) / "metrics" / "metrics").write_text(
            json.dumps({"psnr": 20.0, storage.GOOD_KEY: good}))
    (folder / "40.orbax-checkpoint-tmp-1").mkdir()  # not committed
    assert storage.last_good(folder) == f"the last good checkpoint is step 20 in {folder}"
    (folder / "20" / "metrics" / "metrics").write_text("{}")  # a run from before the probe
    (folder / "10" / "metrics" / "metrics").write_text(json.dumps({storage.GOOD_KEY: 0.0}))
    assert "step 20" in storage.last_good(folder)
    (folder / "20" / "metrics" / "metrics").write_text(json.dumps({storage.GOOD_KEY: 0.0}))
    assert storage.last_good(folder) == (f"no checkpoint in {folder} passed the probe "
                                         "(steps 10-30)")
