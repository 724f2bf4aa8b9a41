"""Full-multiscale schedules beyond the paper's: per-stage learning rates, weight averaging, an
adaptive schedule that moves on when a coarse stage stops paying, and a target-PSNR stop."""

import os
import signal

import jax
import numpy as np
import pytest

from msjax import build, config_check, errors, multiscale, optim, rundir, runs, train
from tests.helpers import tiny_config


def _rates(c, total, ends, steps):
    schedule = optim.learning_rate(build.optimizer_settings(c), total, ends)
    return [float(schedule(s)) for s in steps]


def test_constant_then_decay_and_restarts_with_decreasing_peaks():
    c = tiny_config(**{"train.lr": 1e-3, "train.lr_end": 1e-6,
                       "train.lr_schedule": "constant_decay", "train.decay_fraction": 0.25})
    r = _rates(c, 100, (40, 80, 100), [0, 40, 74, 75, 88, 99])
    np.testing.assert_allclose(r[:4], 1e-3, rtol=1e-6)  # constant until the last quarter
    assert 1e-6 < r[4] < 1e-3 * 0.75 and r[5] < 2e-5
    c.train.lr_schedule, c.train.stage_peak_decay = "stage_restarts", 0.5
    r = _rates(c, 100, (40, 80, 100), [0, 39, 40, 80])
    np.testing.assert_allclose([r[0], r[2], r[3]], [1e-3, 5e-4, 2.5e-4], rtol=1e-6)
    assert r[1] < 2e-5  # each stage decays to lr_end before the next peak


def test_weight_averaging_keeps_an_exponential_average_and_evaluation_uses_it(tmp_path):
    c = tiny_config(**{"mode": "single", "train.steps": 3, "train.ema_decay": 0.5,
                       "log.eval_every": 3})
    train.train_and_evaluate(c, tmp_path / "run")
    ckpt_states = {}
    for step in (2, 3):
        template = runs.load_state(tmp_path / "run", "latest")[0]
        from msjax import checkpoints

        ckpt = checkpoints.Checkpoints(tmp_path / "run" / "checkpoints", read_only=True)
        ckpt_states[step] = ckpt.restore(step, template)[0]
        ckpt.close()
    s2, s3 = ckpt_states[2], ckpt_states[3]
    for e2, p3, e3 in zip(jax.tree.leaves(s2.ema_params), jax.tree.leaves(s3.params),
                          jax.tree.leaves(s3.ema_params)):
        np.testing.assert_allclose(e3, 0.5 * e2 + 0.5 * p3, rtol=1e-5, atol=1e-7)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s3.params),
                                                        jax.tree.leaves(s3.ema_params)))


def _fixed(stage_steps=(40, 40, 40)):
    c = tiny_config(**{"mode": "fullmultiscale", "fms.stage_steps": stage_steps})
    return build.stages(c), c.batch_size


def test_an_adaptive_schedule_moves_on_when_the_loss_stops_improving_and_spends_the_budget():
    fixed, batch = _fixed()
    s = multiscale.AdaptiveSchedule(fixed, batch, window=10, min_improvement=0.05,
                                    min_share=0.25, budget_units=0.0)
    budget = multiscale.schedule_work_units(fixed, batch)
    assert [x.steps for x in s.stages()] == [40, 40, 40]
    # Stage 0: the loss halves, then flattens: it moves on after the second flat window.
    losses = {9: 1.0, 19: 0.5, 29: 0.49}
    moved = [step for step, loss in losses.items() if s.observe(0, step, 10 * loss, 10)]
    assert moved == [29] and s.ends == [30]
    stages = s.stages()
    assert [x.first_step for x in stages] == [0, 30, 70]
    spent = multiscale.schedule_work_units(stages, batch)
    assert budget - multiscale.work_units(stages[-1].plan, batch) < spent <= budget
    assert stages[-1].steps > 40  # what stage 0 left went to the finest stage
    # Stage 1 keeps improving: it runs its fixed length, recorded when stage 2 reports.
    for step, loss in ((39, 1.0), (49, 0.8), (59, 0.6), (69, 0.4)):
        assert not s.observe(1, step, 10 * loss, 10)
    assert not s.observe(2, 79, 5.0, 10) and s.ends == [30, 70]
    # Not before min_share of a stage's steps, however flat.
    early = multiscale.AdaptiveSchedule(fixed, batch, window=5, min_improvement=0.5,
                                        min_share=0.5, budget_units=0.0)
    assert [early.observe(0, step, 5.0, 5) for step in (4, 9, 14, 19)] == [False] * 3 + [True]
    restored = multiscale.AdaptiveSchedule(fixed, batch, window=10, min_improvement=0.05,
                                           min_share=0.25)
    restored.load(s.state())
    assert restored.stages() == s.stages()


def _adaptive(**overrides):
    return tiny_config(**{"mode": "fullmultiscale", "fms.schedule": "adaptive",
                          "fms.stage_steps": (8, 8, 8), "fms.window": 2, "log.every": 1,
                          "fms.min_improvement": 10.0, "fms.min_share": 0.25,
                          "log.eval_every": 50, "log.checkpoint_every": 1, **overrides})


def test_an_adaptive_run_records_its_decisions_and_resumes_them_exactly(tmp_path, capsys):
    # min_improvement 10: every coarse stage moves on as soon as min_share allows.
    c = _adaptive()
    # Every run here takes its batches through a transform (the host path), so they compare.
    straight = train.train_and_evaluate(c, tmp_path / "straight", transform=lambda s, b: b)
    out = capsys.readouterr().out
    assert "stage 1/3 moves on at step 4" in out and "stage 2/3 moves on at step 8" in out
    stages = [int(r["stage"]) for r in _rows(tmp_path / "straight" / "train.csv")]
    assert stages[:8] == [0] * 4 + [1] * 4
    total = straight["step"]
    # The finest stage ran its 8 fixed steps plus what the coarse stages left (4 cheap steps each).
    assert stages[8:].count(2) == total - 8 > 8 and total < 24
    # Stop a second run by SIGTERM after the first decision (step 4) and before the second, then
    # resume it: the resumed run must repeat the second decision and end where the first did.
    def stop_at_6(step, batches):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return batches

    with pytest.raises(train.Preempted):
        train.train_and_evaluate(c, tmp_path / "resumed", transform=stop_at_6)
    assert max(rundir.checkpoint_steps(tmp_path / "resumed")) == 7
    assert rundir.checkpoint_meta(tmp_path / "resumed", 7)["adaptive"]["ends"] == [4]
    resumed = train.train_and_evaluate(c, tmp_path / "resumed", transform=lambda s, b: b)
    # Stage numbers as the progress line says them, from 1 (the checkpoint holds stage 1).
    assert "resumed from step 7 (stage 2/3)" in capsys.readouterr().out
    assert resumed["step"] == total
    a = runs.load_state(tmp_path / "straight", "latest")[0]
    b = runs.load_state(tmp_path / "resumed", "latest")[0]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    again = train.train_and_evaluate(c, tmp_path / "straight")  # finished where it decided
    assert again["finished"] and again["step"] == total


def test_a_target_psnr_stops_the_run_and_reports_its_cost(tmp_path, capsys):
    c = tiny_config(**{"mode": "single", "train.steps": 20, "log.eval_every": 2,
                       "train.target_psnr": 1.0})  # reached at the third validation
    result = train.train_and_evaluate(c, tmp_path / "run")
    out = capsys.readouterr().out
    assert result["target_reached"] and result["step"] == 6
    assert "reached the target 1.00 dB" in out and "work units" in out
    assert train.train_and_evaluate(c, tmp_path / "run")["finished"]


def test_adaptive_settings_that_cannot_work_are_refused():
    for overrides, message in (({"fms.window": 3, "log.every": 2}, "multiple of log.every"),
                               ({"mode": "single"}, "fms.schedule=adaptive"),
                               ({"fms.min_share": 0.0}, "fms.min_share")):
        with pytest.raises(errors.ConfigError, match=message):
            config_check.validate(_adaptive(**overrides))


def _rows(path):
    from msjax.logs import read_csv

    return read_csv(path)


def test_max_terms_caps_the_terms_of_every_stage():
    full = multiscale.make_schedule("fullmultiscale", steps=70, batch_size=8, levels=2)
    capped = multiscale.make_schedule("fullmultiscale", steps=70, batch_size=8, levels=2,
                                      max_terms=1)
    assert [s.plan.batch_sizes for s in full] == [(32,), (16, 16), (8, 8, 8)]
    assert [s.plan.batch_sizes for s in capped] == [(32,), (16,), (8,)]
    assert [s.plan.finest_level for s in capped] == [2, 1, 0]
    # The finest stage is then a plain single-scale step: one work unit instead of 1.625.
    assert multiscale.work_units(full[-1].plan, 8) == 1.625
    assert multiscale.work_units(capped[-1].plan, 8) == 1.0


def test_the_stage_batch_factor_reaches_the_schedule_and_nonsense_is_refused():
    c = tiny_config(**{"mode": "fullmultiscale", "fms.stage_steps": (4, 4, 4),
                       "fms.max_terms": 1, "fms.stage_batch_factor": 1})
    assert [s.plan.batch_sizes for s in build.stages(c)] == [(c.batch_size,)] * 3
    for bad in (0, -2):
        c.fms.stage_batch_factor = bad
        with pytest.raises(errors.ConfigError, match="fms.stage_batch_factor"):
            config_check.validate(c)


def test_an_adaptive_replan_keeps_full_multiscales_own_schedule(tmp_path):
    # fms.lr_schedule=constant_decay over a cosine train.lr_schedule trains exactly as
    # train.lr_schedule=constant_decay itself, through the coarse stages' moves (steps 4, 8).
    own = _adaptive(**{"fms.lr_schedule": "constant_decay", "train.lr_schedule": "cosine"})
    plain = _adaptive(**{"train.lr_schedule": "constant_decay"})
    results = [train.train_and_evaluate(c, tmp_path / name) for c, name in ((own, "own"),
                                                                            (plain, "plain"))]
    assert results[0]["step"] == results[1]["step"]
    a, b = (runs.load_state(tmp_path / name, "latest")[0] for name in ("own", "plain"))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    rows = _rows(tmp_path / "own" / "train.csv")
    assert float(rows[len(rows) // 2]["lr"]) == pytest.approx(own.train.lr)
