"""Run logs a person reads: the progress line and train.log, labelled image grids, TensorBoard
grids and config, the quieted library notices, and the end-of-run summary."""

import io
import logging
import math
import struct
import types

import jax.numpy as jnp
import numpy as np
import pytest

from msjax import checkpoints, logs
from msjax.logs import VALID_FIELDS, CsvLog


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(logs.time, "perf_counter", fake)
    return fake


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_each_update_is_one_plain_line(tmp_path, clock):
    out = io.StringIO()
    progress = logs.Progress(40, 0, tmp_path, stages=1, stream=out)
    for step in (10, 20, 30):
        clock.now += 2.0
        progress.update(step, stage=0, terms=3, loss=0.0123, best_psnr=-math.inf)
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[1].startswith("step 20/40 (50%)  stage 1/1, 3 terms  mge loss 0.0123  best -")
    assert lines[1].endswith("5.00 step/s  ETA 0:04")


def test_best_psnr_is_named_and_a_dash_before_the_first_evaluation(tmp_path, clock):
    out = io.StringIO()
    progress = logs.Progress(100, 0, stream=out)
    for step, best in ((10, None), (20, float("nan")), (30, -math.inf), (40, 24.137)):
        clock.now += 1.0
        progress.update(step, loss=0.1, best_psnr=best)
    lines = out.getvalue().splitlines()
    assert all("best -  " in line for line in lines[:3])
    assert "best 24.14 dB" in lines[3] and "inf" not in out.getvalue()


def test_eta_leaves_the_compile_time_out(tmp_path, clock):
    out = io.StringIO()
    progress = logs.Progress(100, 0, tmp_path, stages=3, stream=out)
    progress.compiling(1, terms=2)
    clock.now += 10.0            # compiling stage 2 takes 10 s
    progress.compiled(1, 10.0, detail="convolutions onednn")
    clock.now += 1.0             # then 10 training steps take 1 s
    progress.update(10, stage=1, terms=2, loss=0.5)
    assert progress.rate == pytest.approx(10.0)  # not 10 / 11
    progress.set_up(2.0)         # e.g. timing the stage's steps per call
    clock.now += 3.0
    progress.update(20, stage=1, terms=2, loss=0.5)
    assert progress.rate == pytest.approx(10.0)  # not 10 / 3
    lines = out.getvalue().splitlines()
    assert lines[0] == "compiling stage 2/3, 2 terms"
    assert lines[1] == "compiled stage 2/3 in 10.0 s; convolutions onednn"
    assert lines[2].endswith("10.00 step/s  ETA 0:09")
    assert lines[3].endswith("10.00 step/s  ETA 0:08")


def test_eta_sums_each_remaining_stage_at_its_own_cost(tmp_path, clock):
    """Three stages of 100 steps, each step 4x dearer than the last (work units 1, 4, 16 per
    step, and so in seconds); each stage compiles first. At every log line the ETA is within
    25% of the training time truly left (compiles apart); extrapolating the current stage's
    rate would say 0.7 s at step 100 where 2 s are left."""
    out = io.StringIO()
    costs, seconds_per_step = (1.0, 4.0, 16.0), (0.001, 0.004, 0.016)
    progress = logs.Progress(300, 0, tmp_path, stages=3, stream=out,
                             plan=((100, 200, 300), costs))
    errors = []
    for stage in range(3):
        progress.compiling(stage, terms=stage + 1)
        clock.now += 5.0
        progress.compiled(stage, 5.0)
        for step in range(100 * stage + 10, 100 * stage + 101, 10):
            clock.now += 10 * seconds_per_step[stage]
            progress.update(step, stage=stage, terms=stage + 1, loss=0.1)
            true_left = sum(100 * t for t in seconds_per_step) - sum(
                min(max(step - 100 * j, 0), 100) * t for j, t in enumerate(seconds_per_step))
            eta = progress.eta_seconds(step)
            errors.append(abs(eta - true_left) / max(true_left, 1e-9) if true_left else eta)
    assert max(errors) <= 0.25, errors
    assert progress.eta_seconds(100) == pytest.approx(2.0)  # 100 x 4 ms + 100 x 16 ms


def test_eta_of_an_unrun_stage_scales_the_dearest_stage_measured(tmp_path, clock):
    """Steps with a fixed cost (10 ms) beside the part that scales (10 ms per unit of cost):
    the cheap first stage is the worst guide to the dearest one, so once stage 2 has run the
    estimate for stage 3 comes from it (within 25%; the mean over both stages: 32% off)."""
    progress = logs.Progress(300, 0, tmp_path, stages=3, stream=io.StringIO(),
                             plan=((100, 200, 300), (1.0, 4.0, 16.0)))
    for stage, step_time in enumerate((0.02, 0.05)):
        clock.now += 100 * step_time
        progress.update(100 * (stage + 1), stage=stage, loss=0.1)
    assert progress.eta_seconds(200) == pytest.approx(17.0, rel=0.25)  # 100 x 170 ms


def test_eta_of_a_stage_follows_its_measured_step_time_over_its_cost(tmp_path, clock):
    """A stage that runs slower per unit of cost than the first is measured, and its own rate
    (not the cost ratio) then counts for its remaining steps."""
    progress = logs.Progress(200, 0, tmp_path, stages=2, stream=io.StringIO(),
                             plan=((100, 200), (1.0, 2.0)))
    clock.now += 1.0
    progress.update(100, stage=0, loss=0.1)
    assert progress.eta_seconds(100) == pytest.approx(2.0)  # 100 steps x 2 x 10 ms
    clock.now += 3.0
    progress.update(150, stage=1, loss=0.1)                 # 60 ms a step, not 20
    assert progress.eta_seconds(150) == pytest.approx(3.0)


def test_train_log_holds_every_line_and_is_appended_on_resume(tmp_path, clock):
    first = logs.Progress(20, 0, tmp_path, stream=io.StringIO())
    clock.now += 1.0
    first.update(10, loss=0.2, best_psnr=None)
    first.write("step 10 stage 0: valid PSNR 21.00 dB")
    first.close()
    # A resumed run on a terminal: the bar on screen, plain lines in the log.
    screen = Terminal()
    second = logs.Progress(20, 10, tmp_path, stream=screen)
    second.write("resumed from step 10")
    clock.now += 1.0
    second.update(20, loss=0.1, best_psnr=21.0)
    second.close()
    assert "\r" in screen.getvalue() and "best 21.00 dB" in screen.getvalue()
    text = (tmp_path / "train.log").read_text().splitlines()
    messages = [line.split(" ", 2)[2] for line in text]  # after the date and time
    assert [m.split("  ")[0] for m in messages] == [
        "step 10/20 (50%)", "step 10 stage 0: valid PSNR 21.00 dB", "resumed from step 10",
        "step 20/20 (100%)"]
    assert "best 21.00 dB" in messages[3]


def test_a_process_other_than_the_first_prints_and_writes_nothing(tmp_path, clock):
    out = io.StringIO()
    progress = logs.Progress(10, 0, tmp_path, enabled=False, stream=out)
    progress.update(5, loss=0.1)
    progress.write("hello")
    progress.close()
    assert out.getvalue() == "" and not (tmp_path / "train.log").exists()


def _tiny_state(value):
    return types.SimpleNamespace(step=jnp.asarray(value), params={"w": jnp.ones(3) * value},
                                 opt_state={"m": jnp.zeros(3)}, model_state={"s": jnp.zeros(1)})


def test_orbax_notices_are_dropped_and_other_warnings_kept(tmp_path, caplog):
    absl_logger = logging.getLogger("absl")
    for f in [f for f in absl_logger.filters if isinstance(f, logs._DropNotices)]:
        absl_logger.removeFilter(f)
    caplog.set_level(logging.WARNING)
    ckpt = checkpoints.Checkpoints(tmp_path / "ckpt")
    ckpt.save(1, _tiny_state(1), {"step": 1})      # a plain checkpoint: no metrics
    ckpt.wait()
    assert any("tracked_metric" in r.getMessage() for r in caplog.records)  # Orbax does say it

    caplog.clear()
    logs.quiet_library_logs()
    logs.quiet_library_logs()  # idempotent
    assert sum(isinstance(f, logs._DropNotices) for f in absl_logger.filters) == 1
    ckpt.save(2, _tiny_state(2), {"step": 2})
    ckpt.close()
    reader = checkpoints.Checkpoints(tmp_path / "ckpt", read_only=True)  # loading a run
    reader.close()
    from absl import logging as absl_logging

    # TFDS's notice, as tensorflow_datasets' file_utils logs it, before msjax's own error.
    absl_logging.warning("Variant folder %s has no %s", "/tmp/none/stl10/1.0.0",
                         "dataset_info.json")
    absl_logging.warning("a warning someone should read")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a warning someone should read"]


def test_an_unprepared_tfds_dataset_gives_one_error_line_and_no_library_notice(tmp_path):
    """The offline path: no TFDS notice about dataset_info.json, only msjax's error."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("tensorflow_datasets") is None:
        pytest.skip("needs tensorflow_datasets")
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("with TensorFlow installed the run would try to download STL-10")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/deblur_stl10.py",
         f"--config.data.data_dir={tmp_path / 'none'}", "--workdir", str(tmp_path / "run")],
        cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "dataset_info.json" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: TFDS dataset 'stl10' is not prepared"), proc.stderr


def _crops(n, side, seed=0):
    return np.random.default_rng(seed).random((n, side, side, 3)).astype(np.float32)


def test_grid_has_a_column_per_panel_a_row_per_crop_and_headings():
    target = _crops(5, 16)
    panels = {"input": np.clip(target + 0.2, 0, 1), "output": target * 0.95, "target": target}
    grid = logs.image_grid(panels, count=3, size=64, title="validation crops, step 7")
    gap, cell = 2, 64
    assert grid.shape[1] == 3 * cell + 4 * gap
    top = grid.shape[0] - (3 * cell + 4 * gap)
    assert top > 20  # a title band and a heading band
    for j in range(3):  # each column's heading is drawn (the band is not one flat colour)
        band = grid[top // 2:top, gap + j * (cell + gap):(j + 1) * (cell + gap)]
        assert band.std() > 10
    # Each target cell is its crop enlarged x4 by nearest neighbour, in its own row.
    for i in range(3):
        y0, x0 = top + gap + i * (cell + gap), gap + 2 * (cell + gap)
        expected = np.repeat(np.repeat(logs.to_u8(target[i]), 4, 0), 4, 1)
        np.testing.assert_array_equal(grid[y0:y0 + cell, x0:x0 + cell], expected)
    # Input and output carry their PSNR (yellow text) in the bottom-left corner; target not.
    yellow = lambda a: np.all(a == (255, 255, 120), axis=-1).any()  # noqa: E731
    bottom = top + gap + cell  # end of row 0
    assert yellow(grid[bottom - 14:bottom, gap:gap + 50])
    assert yellow(grid[bottom - 14:bottom, 2 * gap + cell:2 * gap + cell + 50])
    assert not yellow(grid[bottom - 14:bottom, 3 * gap + 2 * cell:3 * gap + 2 * cell + 50])


def test_sr_grid_shows_bicubic_beside_the_nearest_input():
    target = _crops(2, 16)
    lr = target[:, ::2, ::2]
    columns = logs.grid_columns({"input": lr, "output": target, "target": target})
    assert [c[0] for c in columns] == ["input (nearest x2)", "bicubic x2", "output", "target"]
    from msjax import resize

    np.testing.assert_allclose(columns[1][1], np.clip(resize.imresize(
        lr.astype(np.float64), 2.0), 0, 1), atol=1e-6)
    grid = logs.image_grid({"input": lr, "output": target, "target": target}, size=32)
    assert grid.shape[1] == 4 * 32 + 5 * 2


def _events(folder):
    """Every Event in a TensorBoard folder (TFRecord framing read by hand: no TensorFlow)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in folder.glob("events.out.tfevents.*"):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])
            events.append(event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def test_runlog_writes_one_combined_grid_and_the_config(tmp_path):
    from tests.helpers import tiny_config

    runlog = logs.RunLog(tmp_path, None, image_count=2, image_size=32)
    from msjax import rundir

    runlog.write_config(rundir.flat(tiny_config()))
    target = _crops(4, 16)
    path = runlog.images(3, {"input": target, "output": target, "target": target})
    runlog.close()
    from PIL import Image

    assert path == tmp_path / "images" / "valid_00000003.png"
    assert Image.open(path).size[0] == 3 * 32 + 4 * 2
    tags = {}
    for event in _events(tmp_path / "tensorboard"):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(value)
    images = [t for t, v in tags.items() if v[0].HasField("image")]
    assert images == ["valid/grid"]
    assert tags["valid/grid"][0].image.width == 3 * 32 + 4 * 2
    assert "config/text_summary" in tags
    assert b"model_kwargs.features" in tags["config/text_summary"][0].tensor.string_val[0]
    assert "_hparams_/experiment" in tags and "_hparams_/session_start_info" in tags


def test_final_summary_names_the_run_its_best_checkpoint_and_the_next_commands(tmp_path):
    valid = CsvLog(tmp_path / "valid.csv", VALID_FIELDS)
    for step, psnr in ((100, 24.0), (200, 25.5), (300, 25.2)):
        valid.write({"step": step, "psnr": psnr, "input_psnr": 21.79})
    text = logs.final_summary(tmp_path, {"step": 300, "psnr": 25.2, "input_psnr": 21.79,
                                         "best_psnr": 25.5, "best_step": 200})
    assert f"finished: step 300 in {tmp_path}" in text
    assert "best checkpoint: step 200, valid PSNR 25.50 dB" in text
    assert "valid PSNR 25.20 dB (input 21.79 dB, +3.41 dB)" in text
    assert f"python eval.py --workdir {tmp_path}" in text
    assert f"python -m msjax.report {tmp_path}" in text
    # A finished run run again returns little: the rest comes from its valid.csv, never 'nan'.
    again = logs.final_summary(tmp_path, {"step": 300, "psnr": 25.5, "best_psnr": 25.5})
    assert "input 21.79 dB" in again and "step 200" in again and "nan" not in again
