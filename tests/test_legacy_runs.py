"""Run directories written by an earlier msjax (``tests/fixtures/legacy_runs``, see its README)
still resume, extend and evaluate: the config they saved is read over today's defaults, their
checkpoints restore into today's models, and extending a single-scale one reaches the weights
the earlier msjax itself reached when extending it (a full-multiscale one now extends its finest
stage instead)."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from msjax import evaluate, runs, train

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy_runs"


def _flat_params(params) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_a_legacy_full_multiscale_run_extends_in_its_finest_stage(tmp_path):
    # The earlier msjax spread an extension over all stages again (its weights in the fixture
    # are no longer the target); today the new steps train the finest stage.
    workdir = tmp_path / "deblur_fms"
    shutil.copytree(FIXTURES / "deblur_fms", workdir)
    config = runs.load_config(workdir)
    config.train.steps += 2
    result = train.train_and_evaluate(config, workdir, extend=True)
    assert result["step"] == 5
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["fms.stage_steps"] == [1, 1, 3] and saved["fms.extended_from"] == 3
    state, _, step = runs.load_state(workdir, "latest")
    expected = dict(np.load(FIXTURES / "deblur_fms_extended_params.npz"))
    assert step == 5 and sorted(_flat_params(state.params)) == sorted(expected)


@pytest.mark.parametrize("name", ["edsr_x2"])
def test_a_legacy_run_extends_to_the_weights_the_earlier_msjax_reached(tmp_path, name):
    workdir = tmp_path / name
    shutil.copytree(FIXTURES / name, workdir)
    config = runs.load_config(workdir)
    saved_steps = config.train.steps
    config.train.steps = saved_steps + 2
    result = train.train_and_evaluate(config, workdir, extend=True)
    assert result["step"] == saved_steps + 2
    state, _, step = runs.load_state(workdir, "latest")
    assert step == saved_steps + 2
    expected = dict(np.load(FIXTURES / f"{name}_extended_params.npz"))
    got = _flat_params(state.params)
    assert sorted(got) == sorted(expected)  # today's models keep the parameter paths
    for path, value in expected.items():
        np.testing.assert_allclose(got[path], value, rtol=2e-4, atol=1e-6, err_msg=path)


def test_a_legacy_run_evaluates_as_it_scored_in_training(tmp_path):
    workdir = tmp_path / "deblur_fms"
    shutil.copytree(FIXTURES / "deblur_fms", workdir)
    _, summary, out_dir = evaluate.run(str(workdir), which="latest")
    logged = [json.loads(json.dumps(r)) for r in _valid_rows(workdir)][-1]
    assert summary["step"] == int(float(logged["step"]))
    np.testing.assert_allclose(summary["psnr"], float(logged["psnr"]), atol=1e-3)
    assert (out_dir / "per_image.csv").exists()


def _valid_rows(workdir):
    import csv

    with open(workdir / "valid.csv", newline="") as f:
        return list(csv.DictReader(f))
