"""Multiblock phased training: every phase of a 2-block chain end to end, frozen blocks, resume."""

import csv
import json

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from msjax import build, checkpoints, config_check, runs, train
from msjax.errors import RunDirError
from msjax.hooks import Hook
from msjax.methods import multiblock
from msjax.settings import from_section
from tests.helpers import tiny_config, write_images

REAL_LOOP = train.train_and_evaluate
PHASES = ["phase_1", "phase_1_plus", "phase_2", "phase_2_plus", "joint"]


def paired_folders(root):
    """Same-size pairs (RealSR 'LR2' layout): LR = the HR blurred, named with a suffix."""
    for split in ("train", "valid"):
        hr = write_images(root / f"{split}_hr", 3, size=(24, 24), seed=split == "valid")
        (root / f"{split}_lr").mkdir()
        for p in sorted(hr.iterdir()):
            img = Image.open(p).resize((12, 12), Image.BICUBIC).resize((24, 24), Image.BICUBIC)
            img.save(root / f"{split}_lr" / f"{p.stem}_LR2.png")
    return {"data.train_dir": str(root / "train_hr"), "data.train_lr_dir": str(root / "train_lr"),
            "data.valid_dir": str(root / "valid_hr"), "data.valid_lr_dir": str(root / "valid_lr")}


def multiblock_config(root):
    c = tiny_config(**{"method": "multiblock", "model": "multiblock", "task.name": "sr",
                       "task.scale": 1, "task.residual": False, "task.loss": "l1",
                       "data.source": "paired_folders", "mge.levels": 1, "log.eval_every": 2,
                       **paired_folders(root)})
    c.model_kwargs = dict(n_feats=8, n_rcab=1, attention_hidden=2)
    c.multiblock.update(dict(blocks=2, block_steps=2, plus_steps=2, plus_lr=5e-4,
                             joint_steps=2, inherit=True))
    return c


def plan_phases(c):
    return multiblock.plan_phases(from_section(multiblock.MultiblockSettings, c.multiblock),
                                  build.optimizer_settings(c))


def test_phase_plan_grows_the_chain_and_freezes_trained_blocks():
    c = tiny_config()
    c.multiblock.update(dict(blocks=3, plus_steps=5, joint_steps=7))
    plan = plan_phases(c)
    assert [p.name for p in plan] == ["phase_1", "phase_1_plus", "phase_2", "phase_2_plus",
                                      "phase_3", "phase_3_plus", "joint"]
    warm2 = plan[2]  # N_2 warm: after the clamped N_1+, itself unclamped, N_1 frozen
    assert (warm2.blocks, warm2.frozen, warm2.clamp, warm2.clamp_last) == (2, 1, True, False)
    assert warm2.init_from == "phase_1_plus" and plan[-1].frozen == 0 and plan[-1].steps == 7


class Interrupted(Exception):
    pass


def _record_calls(monkeypatch, interrupt_at=None):
    """Wraps the loop: records which phases run; optionally stops one after its first step."""
    calls = []

    def wrapped(config, workdir, **plug):
        calls.append(workdir.name)
        if workdir.name == interrupt_at:
            def stop_after_first_step(step, batches):
                if step == 1:
                    raise Interrupted("simulated interruption")
                return batches
            plug["transform"] = stop_after_first_step
        return REAL_LOOP(config, workdir, **plug)

    monkeypatch.setattr(train, "train_and_evaluate", wrapped)
    return calls


def test_two_block_run_completes_every_phase_and_resumes(tmp_path, monkeypatch):
    config = multiblock_config(tmp_path / "data")
    workdir = tmp_path / "run"
    calls = _record_calls(monkeypatch, interrupt_at="phase_2")
    with pytest.raises(Interrupted):
        train.run(config, workdir)
    assert calls == ["phase_1", "phase_1_plus", "phase_2"]
    assert not (workdir / "phase_2" / "phase.json").exists()

    calls = _record_calls(monkeypatch)
    result = train.run(config, workdir)
    assert calls == ["phase_2", "phase_2_plus", "joint"]  # finished phases are skipped
    with open(workdir / "phase_2" / "train.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]  # resumed after step 1

    for name in PHASES:  # each phase keeps its best checkpoint and its metrics
        ckpt = checkpoints.Checkpoints(workdir / name / "checkpoints", read_only=True)
        assert ckpt.best_step() is not None and ckpt.best_step() in ckpt.steps()
        ckpt.close()
        assert np.isfinite(json.loads((workdir / name / "phase.json").read_text())["best_psnr"])
    with open(workdir / "phases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == PHASES and np.isfinite(result["psnr"])
    assert [r["trained"] for r in rows] == ["block_1", "block_1+", "block_2", "block_2+", "all"]

    def best_params(name):
        state, _, _ = runs.load_state(workdir / name)
        return jax.tree.map(np.asarray, state.params)

    # N_1+ is frozen while N_2 trains: phase_2's block_0 is phase_1_plus's block_0, bit for bit;
    # N_2 started from N_1+ (inheritance) and moved.
    n1, n2 = best_params("phase_1_plus"), best_params("phase_2")
    jax.tree.map(np.testing.assert_array_equal, n1["block_0"], n2["block_0"])
    inherited, trained = n1["block_0"]["head"]["kernel"], n2["block_1"]["head"]["kernel"]
    assert not np.array_equal(trained, inherited)
    np.testing.assert_allclose(trained, inherited, atol=0.02)  # 2 Adam steps of 1e-3 from it

    calls = _record_calls(monkeypatch)
    again = train.run(config, workdir)  # all finished: nothing runs, same result
    assert calls == [] and again["best_psnr"] == result["best_psnr"]

    config.multiblock.total_steps = 4  # another budget: refused, never mixed with these phases
    with pytest.raises(RunDirError, match=r"multiblock.total_steps: 0 -> 4"):
        train.run(config, workdir)
    assert calls == []


@pytest.mark.parametrize("recipe", ["seed", "adam_only"])
def test_reference_schedule_two_constant_rates_per_clamped_block_and_for_the_chain(recipe):
    from msjax.configs import multiblock_realsr

    c = multiblock_realsr.get_config(recipe)
    plan = plan_phases(c)
    assert [p.name for p in plan][:3] == ["phase_1", "phase_1_plus", "phase_1_plus_low"]
    assert [p.name for p in plan][-2:] == ["joint", "joint_low"]
    by_name = {p.name: p for p in plan}
    configs = {name: build.with_overrides(c, p.overrides) for name, p in by_name.items()}
    # The Multiblock report: N_i's 2000 warm steps with Adadelta at 1; its scripts: Adam 1e-4.
    warm = ("adadelta", 1.0) if recipe == "seed" else ("adam", 1e-4)
    assert [(configs[n].train.optimizer, configs[n].train.lr, configs[n].train.steps)
            for n in ("phase_1", "phase_1_plus", "phase_1_plus_low")] == [
        (*warm, 2000), ("adam", 1e-4, 3000), ("adam", 1e-5, 10000)]
    assert {configs[n].train.optimizer for n in ("joint", "joint_low")} == {"adam"}
    assert by_name["phase_2"].init_from == "phase_1_plus_low"  # N_2 follows the finished N_1+
    assert by_name["phase_2"].inherit == by_name["phase_3"].inherit == (recipe == "seed")
    assert by_name["joint_low"].init_from == "joint" and by_name["joint_low"].frozen == 0
    assert sum(p.steps for p in plan) == 3 * 15000 + 10000       # the reference's iterations
    low = configs["phase_1_plus_low"]
    assert low.train.lr == low.train.lr_end == 1e-5               # constant, not a cosine
    assert configs["phase_1"].train.lr_end == warm[1]
    c.train.init_from = "runs/pretrained"  # a warm start seeds N_1 only; later phases inherit
    assert [build.with_overrides(c, p.overrides).train.init_from for p in plan[:3]] == [
        "runs/pretrained", "", ""]


def test_an_unknown_block_optimizer_is_a_config_error(tmp_path):
    c = multiblock_config(tmp_path)
    c.multiblock.block_optimizer = "sgd"
    with pytest.raises(config_check.ConfigError, match="multiblock.block_optimizer"):
        build.experiment(c)


def test_one_block_runs_its_adadelta_warm_phase_then_adam(tmp_path, monkeypatch):
    """N_1: 2 Adadelta steps (lr 1) that move the fresh weights, then N_1+ with a fresh Adam from
    exactly those weights."""
    config = multiblock_config(tmp_path / "data")
    config.multiblock.update(dict(blocks=1, block_optimizer="adadelta", block_lr=1.0,
                                  joint_steps=0, inherit=False, constant_lr=True))
    started = {}

    class Capture(Hook):  # after the phase's own start: the weights it trains from
        def __init__(self, exp, name):
            self.exp, self.name = exp, name

        def initialize(self, loop):
            started[self.name] = (self.exp.optimizer.optimizer, self.exp.optimizer.lr,
                                  jax.tree.map(np.asarray, loop.state.params))

    def wrapped(exp, workdir, hooks=(), **plug):
        return REAL_LOOP(exp, workdir, hooks=[*hooks, Capture(exp, workdir.name)], **plug)

    monkeypatch.setattr(train, "train_and_evaluate", wrapped)
    train.run(config, tmp_path / "run")
    assert [(name, opt, lr) for name, (opt, lr, _) in started.items()] == [
        ("phase_1", "adadelta", 1.0), ("phase_1_plus", "adam", 5e-4)]

    def best(name):
        workdir = tmp_path / "run" / name
        state, _, _ = runs.load_state(workdir)
        return state, jax.tree.map(np.asarray, state.params)

    warm_state, warm = best("phase_1")
    is_adadelta = lambda x: isinstance(x, optax.ScaleByAdaDeltaState)  # noqa: E731
    assert any(map(is_adadelta, jax.tree.leaves(warm_state.opt_state, is_leaf=is_adadelta)))
    fresh = started["phase_1"][2]
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(warm), jax.tree.leaves(fresh))]
    assert 0 < max(moved) < 0.05  # Adadelta's first steps are ~sqrt(eps / (1 - rho)) = 3e-3 each
    jax.tree.map(np.testing.assert_array_equal, started["phase_1_plus"][2], warm)
    _, plus = best("phase_1_plus")
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plus),
                                                        jax.tree.leaves(warm)))


def test_an_explicit_step_budget_scales_every_phase_and_says_so():
    """``--config.train.steps`` on a multiblock config: the phases keep their proportions and
    sum to it (each at least one step); without it the phases run their own steps."""
    from msjax import cli
    from msjax.configs import multiblock_realsr

    c = multiblock_realsr.get_config()
    cli.budget_over_stages(c, {})
    assert c.multiblock.total_steps == 0 and sum(p.steps for p in plan_phases(c)) == 55000

    c.train.steps = 1100
    cli.budget_over_stages(c, {"train.steps": 1100})
    plan = plan_phases(c)
    assert sum(p.steps for p in plan) == 1100
    assert [p.steps for p in plan[:3]] == [40, 60, 200] and plan[-1].steps == 100  # 1 : 50
    mb = from_section(multiblock.MultiblockSettings, c.multiblock)
    assert multiblock.budget_line(mb, plan).startswith(
        "multiblock: 1100 steps over 11 phases in the proportions of their multiblock.*_steps: "
        "phase_1 40, phase_1_plus 60, phase_1_plus_low 200, phase_2 40,")

    c = multiblock_realsr.get_config()
    c.train.steps = 10  # fewer steps than phases: one each
    cli.budget_over_stages(c, {"train.steps": 10})
    plan = plan_phases(c)
    assert [p.steps for p in plan] == [1] * 11
    mb = from_section(multiblock.MultiblockSettings, c.multiblock)
    assert multiblock.budget_line(mb, plan).startswith(
        "multiblock: 11 steps (one per phase: 10 cannot run every phase) over 11 phases")
    # Each phase's own run is that long (the phase overrides train.steps).
    assert [build.with_overrides(c, p.overrides).train.steps for p in plan] == [1] * 11


@pytest.mark.parametrize("total, expected", [(7, [1, 2, 4]), (3, [1, 1, 1]), (1, [1, 1, 1]),
                                             (100, [14, 29, 57]), (4, [1, 1, 2])])
def test_scaled_steps_sum_to_the_budget_with_at_least_one_each(total, expected):
    steps = multiblock.scaled_steps([1, 2, 4], total)
    assert steps == expected and sum(steps) == max(total, 3)


def test_a_multiblock_run_with_an_explicit_budget_prints_its_phases(tmp_path, monkeypatch,
                                                                      capsys):
    config = multiblock_config(tmp_path / "data")
    config.multiblock.update(dict(blocks=1, plus_steps=0, joint_steps=0, inherit=False,
                                  total_steps=1))
    ran = {}

    def fake_loop(exp, workdir, **plug):  # the phase's length, without training it
        workdir.mkdir(parents=True)
        ran[workdir.name] = exp.total_steps
        return {"psnr": 1.0}

    monkeypatch.setattr(train, "train_and_evaluate", fake_loop)
    train.run(config, tmp_path / "run")
    assert ran == {"phase_1": 1}
    assert capsys.readouterr().out.splitlines() == [(
        "multiblock: 1 step over 1 phase in the proportions of their multiblock.*_steps: "
        "phase_1 1")]


def test_whole_image_validation_scores_each_phases_best_checkpoint(tmp_path, monkeypatch,
                                                                     capsys):
    """eval.whole_valid: after the phase, its best checkpoint restores every whole
    validation image (24 x 24 here, where training validates 16 x 16 crops) and phases.csv
    carries the means, as eval.py computes them. Set when a finished run resumes, it scores
    the finished phases without training them again."""
    from msjax import evaluate

    config = multiblock_config(tmp_path / "data")
    config.multiblock.update(dict(blocks=1, plus_steps=0, joint_steps=0, inherit=False))
    train.run(config, tmp_path / "run")
    with open(tmp_path / "run" / "phases.csv", newline="") as f:
        assert "whole_psnr" not in next(csv.DictReader(f))
    config.eval.whole_valid = True
    calls = _record_calls(monkeypatch)
    result = train.run(config, tmp_path / "run")
    assert calls == []
    with open(tmp_path / "run" / "phases.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["whole_images"]) == 3 and np.isfinite(float(row["whole_psnr"]))
    assert float(row["whole_psnr"]) == pytest.approx(result["whole_psnr"])
    rows, _, _ = evaluate.run(str(tmp_path / "run" / "phase_1"), which="best",
                              input_dir=config.data.valid_lr_dir,
                              target_dir=config.data.valid_dir, output_dir=str(tmp_path / "e"))
    assert [r["image"] for r in rows] == ["img00_LR2.png", "img01_LR2.png", "img02_LR2.png"]
    assert result["whole_psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]))
    assert "phase_1: whole validation images: PSNR" in capsys.readouterr().out


def test_whole_image_validation_needs_an_image_folder(tmp_path):
    config = multiblock_config(tmp_path / "data")
    config.task.name, config.data.source = "deblur", "builtin"  # a chain deblurring the photos
    config.eval.whole_valid = True
    with pytest.raises(config_check.ConfigError, match="eval.whole_valid scores the image "
                                                       "folder data.valid_dir"):
        build.experiment(config)
