"""bench/cost_to_quality.py without training: settings, per-setting budgets, the summary table."""

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ctq():
    spec = importlib.util.spec_from_file_location("ctq", ROOT / "bench" / "cost_to_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setting_keeps_commas_inside_tuples(ctq):
    name, over = ctq.parse_setting("w:mode=fullmultiscale,fms.stage_weights=(8, 4,4),"
                                   "mge.operator_per_level=False,steps_scale=0.5")
    assert name == "w"
    assert over == {"mode": "fullmultiscale", "fms.stage_weights": (8, 4, 4),
                    "mge.operator_per_level": False, "steps_scale": 0.5}


def test_steps_scale_sets_the_budget_and_is_not_a_field(ctq):
    c = ctq.make_config({"mode": "fullmultiscale", "steps_scale": 2,
                         "fms.stage_weights": (8, 4, 4)}, 1800, 7, 50)
    assert c.train.steps == 3600 and c.seed == 7 and c.log.eval_every == 50
    assert tuple(c.fms.stage_weights) == (8, 4, 4)
    assert "steps_scale" not in c
    assert ctq.make_config({}, 1800, 7, 50).train.steps == 1800
    with pytest.raises(SystemExit, match="steps_scale"):
        ctq.make_config({"steps_scale": 0}, 1800, 7, 50)


def test_summary_gains_are_single_over_setting_and_misses_are_named(ctq):
    def row(final, seconds, flops):
        return {"final_psnr": final, "seconds_to_target": seconds, "flops_to_target": flops}

    results = {(100, 1, "single"): row(20.0, 40.0, 8.0), (100, 1, "fms"): row(20.5, 10.0, 1.0),
               (100, 2, "single"): row(21.0, 60.0, 8.0),
               (100, 2, "fms"): row(20.7, math.inf, math.inf)}
    table = ctq.summarize(results, ["single", "fms"], 0.1)
    fms = next(line for line in table.splitlines() if line.startswith("| 100 | fms |"))
    cells = [c.strip() for c in fms.strip("|").split("|")]
    assert cells[3] == "1/2 (missed: -0.30 dB)"
    assert cells[4] == "0.10 (-0.30 to 0.50)"   # final PSNR against single's, per seed
    assert cells[6] == "4.00" and cells[7] == "8.00"  # 40 s / 10 s; 8 / 1 (the seed that got there)


def test_the_study_base_is_pinned_and_the_quickstart_setting_is_the_shipped_config(ctq):
    from msjax import rundir
    from msjax.configs import quickstart

    # The published studies ran from three grids; the quickstart moving on must not move them.
    base = ctq.make_config({}, 600, 42, 100)
    assert base.mge.levels == 2 and tuple(base.fms.stage_weights) == (4, 2, 1)
    assert base.mge.operator_per_level and base.task.level_blur == "scaled"
    assert base.fms.max_terms == 0 and base.mode == "fullmultiscale"
    shipped = quickstart.get_config()
    setting = ctq.make_config(ctq.SETTINGS["quickstart"], shipped.train.steps, shipped.seed,
                              shipped.log.eval_every)
    rate = lambda c: c.fms.lr_schedule or c.train.lr_schedule  # noqa: E731
    assert rate(setting) == rate(shipped) == "constant_decay"
    differ = {k for k, v in rundir.flat(setting).items() if rundir.flat(shipped)[k] != v}
    assert differ <= {"fms.lr_schedule", "train.lr_schedule", "log.every", "log.checkpoint_every",
                      "log.image_count"}, differ


def test_a_misspelt_field_is_refused_with_the_nearest_one(ctq):
    with pytest.raises(SystemExit, match="did you mean fms.stage_weights"):
        ctq.make_config({"fms.stage_weight": (8, 4, 4)}, 1800, 7, 50)


def test_receptive_field_is_measured_from_the_network(ctq):
    # 3x3 convolutions: 1 + 2 * depth pixels; the paper's ResNet (two blocks of two 3x3 convs
    # between 1x1 convs) sees 9x9 locally, and its per-sample layer norm the whole image.
    assert ctq.receptive_field(ctq.make_config({}, 10, 0, 10)) == "11x11"
    deeper = ctq.make_config({"model_kwargs.depth": 10}, 10, 0, 10)
    assert ctq.receptive_field(deeper) == "21x21"
    resnet = ctq.make_config({"model": "resnet", "model_kwargs": {"hidden": 16}}, 10, 0, 10)
    assert dict(resnet.model_kwargs) == {"hidden": 16}  # not the quickstart's depth / features
    assert ctq.receptive_field(resnet) == "9x9 + image-wide statistics"


def test_lower_target_is_a_share_of_single_gain_and_gets_its_own_table(ctq):
    ref = {"input_psnr": 20.0, "final_psnr": 30.0}
    assert ctq.lower_target(ref, 0.9) == pytest.approx(29.0)

    def row(final, seconds, flops):
        return {"final_psnr": final, "seconds_to_target": seconds, "flops_to_target": flops}

    results = {(100, 1, "single"): row(30.0, 40.0, 8.0), (100, 1, "fms"): row(29.5, math.inf,
                                                                              math.inf),
               (100, 1, "single", "lower"): row(30.0, 20.0, 4.0),
               (100, 1, "fms", "lower"): row(29.5, 2.0, 0.25)}
    table = ctq.summarize(results, ["single", "fms"], 0.1, 0.9, {"single": "11x11",
                                                                  "fms": "11x11"})
    fms = [line for line in table.splitlines() if line.startswith("| 100 | fms |")]
    assert len(fms) == 2  # one row per target
    final, lower = ([c.strip() for c in line.strip("|").split("|")] for line in fms)
    assert final[2] == "11x11" and final[4].startswith("0/1")
    assert lower[4] == "1/1" and lower[7] == "10.00" and lower[8] == "16.00"
    assert "90% of single's final gain" in table
