"""Several steps per compiled call: the same training as one step per call (FLOPs exactly,
weights to float tolerance), the hooks at the same steps, and a resumed run keeps its steps per
call and its bits."""

import csv
import json

import jax
import numpy as np
import pytest

from msjax import build, runs, train
from msjax.backend import measure
from msjax.hooks import Hook
from msjax.loop import call_length
from tests.helpers import tiny_config


def _config(**overrides):
    return tiny_config(**{"mode": "single", "train.steps": 12, "log.every": 4,
                          "log.eval_every": 8, "log.checkpoint_every": 4, **overrides})


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _params(workdir):
    state = runs.load_state(workdir, "latest")[0]
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_several_steps_per_call_train_as_one_step_per_call(tmp_path):
    one = train.train_and_evaluate(_config(**{"runtime.steps_per_call": "1"}), tmp_path / "one")
    auto = train.train_and_evaluate(_config(**{"runtime.steps_per_call": "4"}),
                                    tmp_path / "auto")
    log = (tmp_path / "auto" / "train.log").read_text()
    assert "compiled stage 1/1" in log and "4 steps per call" in log
    a, b = _rows(tmp_path / "one" / "train.csv"), _rows(tmp_path / "auto" / "train.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["4", "8", "12"]
    assert [r["flops"] for r in a] == [r["flops"] for r in b]  # FLOPs per step: the same
    assert [r["step"] for r in _rows(tmp_path / "auto" / "valid.csv")] == ["8", "12"]
    for x, y in zip(_params(tmp_path / "one"), _params(tmp_path / "auto")):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert one["psnr"] == pytest.approx(auto["psnr"], abs=1e-3)


class StopAfter(Hook):
    def __init__(self, step):
        self.step = step

    def after_steps(self, loop):
        if loop.step >= self.step and loop.saved_at == loop.step:
            raise KeyboardInterrupt("stopped")


def test_a_resumed_run_keeps_its_steps_per_call_and_its_bits(tmp_path):
    c = _config(**{"runtime.steps_per_call": "2"})
    train.train_and_evaluate(c, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(c, tmp_path / "resumed", hooks=[StopAfter(4)])
    meta = json.loads((tmp_path / "resumed" / "checkpoints" / "4" / "meta" / "metadata")
                      .read_text())
    assert meta["steps_per_call"] == {"0": 2}
    resumed = _config()  # auto: the checkpoint's 2 steps per call, not a new measurement
    train.train_and_evaluate(resumed, tmp_path / "resumed")
    assert "steps per call (a step takes" not in (tmp_path / "resumed" / "train.log").read_text()
    for x, y in zip(_params(tmp_path / "straight"), _params(tmp_path / "resumed")):
        np.testing.assert_array_equal(x, y)


def test_a_call_never_runs_past_a_log_step_or_a_stage_end():
    exp = build.experiment(tiny_config(**{"mode": "fullmultiscale", "train.steps": 30,
                                          "fms.stage_weights": (11, 9, 10), "log.every": 4,
                                          "log.eval_every": 12, "log.checkpoint_every": 8}))
    step, calls = 0, []
    while step < exp.total_steps:
        n = call_length(exp, step, 4)
        calls.append((step, n))
        step += n
    assert step == exp.total_steps
    ends = {s.end_step for s in exp.stages}
    for first, n in calls:
        inside = range(first + 1, first + n)  # steps a call passes without stopping at
        assert not any(s % 4 == 0 or s in ends for s in inside), (first, n)
    assert (12, 4) in calls and (11, 1) in calls  # stage 1 ends at 11: single steps to it


class FakeProgram:
    def __init__(self, text):
        self.executable = type("E", (), {"as_text": lambda self: text})()


def test_auto_keeps_several_steps_only_where_their_steps_are_faster(monkeypatch, tmp_path):
    monkeypatch.setenv("MSJAX_CACHE", str(tmp_path))
    backend = build.experiment(tiny_config()).backend
    timed = []

    def fake_seconds(program, args, steps, **kw):
        timed.append(steps)
        return {1: 0.003, 10: per_step[0]}[steps]

    monkeypatch.setattr(measure, "step_seconds", fake_seconds)
    for text, per_step in (("faster", [0.002]), ("slower", [0.0031])):
        k, seconds = backend.steps_per_call(FakeProgram(text), lambda k: FakeProgram("k"), (),
                                            divides=20)
        assert (k, seconds) == ((10, 0.002) if text == "faster" else (1, 0.003))
    assert timed == [1, 10, 1, 10]
    # Remembered: the same program on this machine is not timed again.
    assert backend.steps_per_call(FakeProgram("faster"), None, (), divides=20) == (10, 0.002)
    assert timed == [1, 10, 1, 10]


def test_auto_picks_a_divisor_of_the_log_cadence_long_enough_for_a_call():
    assert measure.choose_steps_per_call(0.003, 20) == 10  # 17 wanted; 20's divisors: 10
    assert measure.choose_steps_per_call(0.003, 16) == 16
    assert measure.choose_steps_per_call(0.1, 20) == 1     # a long step: one per call
    assert measure.choose_steps_per_call(1e-6, 1000) == 50     # at most 64 per call
