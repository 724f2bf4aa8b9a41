"""Skip mode keeps only good states, a non-finite stop marks nothing and lets its remedies change
on resume, and the resume rules that keep two experiments from mixing: explicit extension, the
run's own budget, full-multiscale extension in the finest stage (bitwise on resume), and
workdirs whose parts cannot say which experiment they hold."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msjax import build, checkpoints, errors, logs, rundir, train
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _blowing_up(**overrides):
    """Trains well for 50 steps, then the rate jumps to 1e27 (the weights blow up at step 50)."""
    return tiny_config(**{"mode": "single", "train.steps": 100, "log.every": 10,
                          "log.eval_every": 100, "log.checkpoint_every": 10,
                          "train.lr_schedule": "step", "train.lr_step_period": 50,
                          "train.lr_step_factor": 1e30, "train.lr": 1e-3, "train.lr_end": 0.0,
                          "task.name": "denoise", **overrides})


def _meta(workdir, step):
    return rundir.checkpoint_meta(workdir, step)


def test_skip_mode_marks_blown_up_checkpoints_and_keeps_the_last_good_one(tmp_path, capsys):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_blowing_up(**{"runtime.nonfinite": "skip",
                                            "runtime.max_skipped": 1.0}), workdir)
    out = capsys.readouterr().out
    steps = rundir.checkpoint_steps(workdir)
    # The cadence goes on (90 and 100 are there), and the newest good state is kept beside them.
    assert {50, 90, 100} <= set(steps)
    assert _meta(workdir, 50)["good"] is True
    assert all(_meta(workdir, s)["good"] is False for s in steps if s > 50)
    assert "checkpoint 60 is not a good state" in out
    assert "the last good one stays step 50" in out


def test_a_skip_mode_stop_names_the_last_good_checkpoint_and_resumes_from_it(tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(errors.NonFiniteError) as info:
        train.train_and_evaluate(_blowing_up(**{"runtime.nonfinite": "skip"}), workdir)
    message = str(info.value)
    assert "the last good checkpoint (step 50)" in message and "\n" not in message
    assert _meta(workdir, max(rundir.checkpoint_steps(workdir)))["good"] is False
    stops = json.loads((workdir / rundir.STOPS_FILE).read_text())
    assert [s["message"] for s in stops] == [message]
    capsys.readouterr()
    # The message's remedy is accepted in the same workdir, said and recorded.
    result = train.train_and_evaluate(_blowing_up(**{"runtime.nonfinite": "skip",
                                                     "train.lr_schedule": "cosine"}), workdir)
    out = capsys.readouterr().out
    assert "resumed from step 50" in out
    assert "train.lr_schedule changes from 'step' to 'cosine' at step 50" in out
    assert result["step"] == 100 and np.isfinite(result["psnr"])
    history = json.loads((workdir / rundir.CONFIG_FILE).read_text())[rundir.HISTORY_KEY]
    assert history == [{"step": 50, "field": "train.lr_schedule", "from": "step",
                        "to": "cosine"}]
    assert rundir.read_saved(workdir)["train.lr_schedule"] == "cosine"


def test_a_nan_stop_marks_nothing_and_only_its_remedies_may_change(tmp_path):
    workdir = tmp_path / "run"
    config = _blowing_up(**{"train.steps": 60})
    for _ in range(2):  # rerunning it unchanged stops again, and renames nothing
        with pytest.raises(errors.NonFiniteError, match="at step 5[0-9]") as info:
            train.train_and_evaluate(config, workdir)
        assert "the last good checkpoint (step 50)" in str(info.value)
    assert not list((workdir / "checkpoints").glob("damaged-*"))
    assert 50 in rundir.checkpoint_steps(workdir)
    assert len(json.loads((workdir / rundir.STOPS_FILE).read_text())) == 2
    with pytest.raises(errors.RunDirError, match="another config") as refused:
        train.train_and_evaluate(_blowing_up(**{"train.steps": 60, "train.weight_decay": 0.1}),
                                 workdir)
    assert "\n" not in str(refused.value)
    result = train.train_and_evaluate(_blowing_up(**{"train.steps": 60, "train.lr": 1e-30}),
                                      workdir)
    assert result["step"] == 60 and np.isfinite(result["psnr"])


def test_remedy_fields_are_another_experiment_without_a_stop(tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(**{"mode": "single", "train.steps": 2})
    train.train_and_evaluate(config, workdir)
    with pytest.raises(errors.RunDirError, match="may change only after a non-finite stop"):
        train.train_and_evaluate(tiny_config(**{"mode": "single", "train.steps": 2,
                                                "train.lr": 5e-4}), workdir)


def _small(**overrides):
    return tiny_config(**{"mode": "single", "train.steps": 2, "log.eval_every": 2, **overrides})


def test_checkpoints_without_config_json_are_refused_and_nothing_changes(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_small(), workdir)
    (workdir / rundir.CONFIG_FILE).unlink()
    before = sorted(p for p in workdir.rglob("*"))
    with pytest.raises(errors.RunDirError, match="holds checkpoints but no config.json") as info:
        train.train_and_evaluate(_small(**{"seed": 7}), workdir)
    assert "\n" not in str(info.value)
    assert sorted(p for p in workdir.rglob("*")) == before


def test_logs_without_checkpoints_are_refused_and_the_logs_kept(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_small(), workdir)
    import shutil

    shutil.rmtree(workdir / "checkpoints")
    rows = (workdir / "train.csv").read_bytes()
    with pytest.raises(errors.RunDirError, match="holds logs .* but no checkpoints/ folder"):
        train.train_and_evaluate(_small(), workdir)
    assert (workdir / "train.csv").read_bytes() == rows
    assert not (workdir / "checkpoints").exists()


def test_a_rerun_without_the_budget_override_keeps_the_runs_own_budget(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_small(), workdir)
    config = _small(**{"train.steps": 8})  # the config file's budget, the override forgotten
    note = build.keep_own_budget(config, workdir)
    assert "its own step budget (2 steps" in note and config.train.steps == 2
    assert train.train_and_evaluate(config, workdir)["finished"]
    # train.log ends as the terminal did: the run said it was finished.
    assert (workdir / "train.log").read_text().rstrip().endswith(
        "ran its 2 steps); a larger --config.train.steps extends it")
    assert build.keep_own_budget(config, tmp_path / "elsewhere") is None


def _fms(**overrides):
    return tiny_config(**{"mode": "fullmultiscale", "train.steps": 3, "log.eval_every": 3,
                          "log.checkpoint_every": 1, **overrides})


def test_extending_a_full_multiscale_run_trains_its_finest_stage_and_resumes_bitwise(tmp_path,
                                                                                    capsys):
    workdir = tmp_path / "run"
    train.train_and_evaluate(_fms(), workdir)
    capsys.readouterr()
    train.train_and_evaluate(_fms(**{"train.steps": 6}), workdir, extend=True)
    out = capsys.readouterr().out
    assert "the finest stage trains 3 more" in out and "held constant" in out
    saved = rundir.read_saved(workdir)
    assert saved["fms.stage_steps"] == [1, 1, 4] and saved["fms.extended_from"] == 3
    rows = logs.read_csv(workdir / "train.csv")
    tail = [r for r in rows if r["step"] > 3]
    assert {int(r["stage"]) for r in tail} == {2}  # never back to a coarser stage
    rates = {r["lr"] for r in rows if r["step"] >= 3}
    assert len(rates) == 1 and max(rates) <= min(r["lr"] for r in rows if r["step"] < 3)
    digest = _meta(workdir, 6)[checkpoints.DIGEST_KEY]
    # Resume inside the extension, from the run's own config.json: the same state, bit for bit.
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints")
    ckpt.manager.delete(6)
    ckpt.close()
    result = train.train_and_evaluate(build.load_config(workdir), workdir)
    assert "resumed from step 5" in capsys.readouterr().out
    assert result["step"] == 6 and _meta(workdir, 6)[checkpoints.DIGEST_KEY] == digest


def test_the_command_line_refuses_a_workdir_of_unknown_experiment_in_one_line(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text("from tests.helpers import tiny_config\n\n\ndef get_config():\n"
                      "    return tiny_config(mode='single', **{'train.steps': 2})\n")
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", MSJAX_HUGE_PAGES="0",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "train.py", "--config", str(config), "--workdir",
                          str(workdir)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds checkpoints but no config.json" in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]


def test_a_diverging_run_warns_and_its_summary_says_so_again(tmp_path, capsys):
    workdir = tmp_path / "run"
    config = tiny_config(**{"mode": "single", "train.steps": 20, "log.every": 2,
                            "log.eval_every": 10, "log.checkpoint_every": 10, "train.lr": 1e6,
                            "train.lr_end": 0.0, "runtime.nonfinite": "skip",
                            "runtime.max_skipped": 1.0})
    result = train.train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert result["warnings"] and all(f"warning: {w}" in out for w in result["warnings"])
    said = " ".join(result["warnings"])
    assert "the validation loss grew to" in said and "the run diverges" in said
    summary = logs.final_summary(workdir, result).splitlines()
    assert [line for line in summary if line.strip().startswith("warning:")]


def test_a_healthy_run_gives_no_divergence_warning(tmp_path):
    config = tiny_config(**{"mode": "single", "train.steps": 6, "log.eval_every": 3})
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert result["warnings"] == []


def test_a_loss_that_grows_tenfold_over_its_best_warns_once(tmp_path):
    from msjax.hooks import Divergence

    written = []

    class Loop:  # what the hook reads of the loop
        stage = 0
        progress = type("P", (), {"write": staticmethod(written.append)})

    hook = Divergence(probe=None)
    for step, loss in enumerate([1.0, 0.5, 0.6, 4.0, 6.0, 60.0]):
        hook.on_metrics(Loop, [(step, {"loss": loss, "finite": True})])
    assert len(written) == 1 and "more than 10x its best 0.5" in written[0]
    Loop.stage = 1  # a finer stage starts its own best
    hook.on_metrics(Loop, [(7, {"loss": 100.0, "finite": True})])
    assert hook.best_loss == 100.0
