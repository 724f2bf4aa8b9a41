"""SR evaluation on benchmark folder layouts, and every MGE mode for the SR model families."""

import csv
import functools
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from msjax import build, config_check, evaluate, metrics, models, parallel, resize, runs, steps, train
from tests.helpers import create_state, tiny_config, write_images

REPO = Path(__file__).resolve().parents[1]
TINY = {  # as in test_models_sr
    "edsr": dict(n_resblocks=2, n_feats=16),
    "rcan": dict(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4),
    "msrn": dict(n_blocks=2, n_feats=16),
}


def edsr_config(**overrides):
    c = tiny_config(**{"task.name": "sr", "task.residual": False, "model": "edsr",
                       "data.patch": 32, "mode": "single", "train.steps": 2,
                       "log.eval_every": 2, **overrides})
    c.model_kwargs = dict(scale=2, **TINY["edsr"])
    return c


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("edsr") / "run"
    train.train_and_evaluate(edsr_config(), workdir)
    return workdir


@pytest.fixture
def benchmark_root(tmp_path):
    """Set5: <set>/HR with given LR in <set>/LR_bicubic/X2 ('babyx2.png' names); Set14: a plain
    folder of HR images (LR made by MATLAB bicubic); odd sizes on purpose."""
    root = tmp_path / "benchmark"
    hr = write_images(root / "Set5" / "HR", 2, size=(21, 30))
    (root / "Set5" / "LR_bicubic" / "X2").mkdir(parents=True)
    for p in sorted(hr.iterdir()):
        x = np.asarray(Image.open(p), np.float64)[:20] / 255.0
        lr = np.clip(resize.bicubic_downsample(x, 2), 0, 1)
        Image.fromarray((lr * 255 + 0.5).astype(np.uint8)).save(
            root / "Set5" / "LR_bicubic" / "X2" / f"{p.stem}x2.png")
    write_images(root / "Set14", 3, size=(26, 22), seed=1)
    return root


def test_benchmark_sets_are_found_in_both_layouts(benchmark_root):
    sets = evaluate.benchmark_sets(str(benchmark_root), 2)
    assert [(name, Path(hr).name, Path(lr).name if lr else "") for name, hr, lr in sets] == [
        ("Set14", "Set14", ""), ("Set5", "HR", "X2")]
    assert evaluate.benchmark_sets(str(benchmark_root / "Set5"), 2)[0][0] == "Set5"


def test_per_image_and_per_set_tables_on_y_with_crop_scale(sr_run, benchmark_root, tmp_path):
    rows, summary, out_dir = evaluate.run(str(sr_run), benchmark_root=str(benchmark_root),
                                          output_dir=str(tmp_path / "eval"))
    assert [(r["set"], r["image"]) for r in rows] == [
        ("Set14", "img00.png"), ("Set14", "img01.png"), ("Set14", "img02.png"),
        ("Set5", "img00x2.png"), ("Set5", "img01x2.png")]
    per_set = {s["set"]: s for s in summary["sets"]}
    assert per_set["Set5"]["images"] == 2 and per_set["Set14"]["images"] == 3
    np.testing.assert_allclose(per_set["Set14"]["psnr"], np.mean([r["psnr"] for r in rows[:3]]))
    with open(out_dir / "per_set.csv", newline="") as f:
        assert [r["set"] for r in csv.DictReader(f)] == ["Set14", "Set5"]
    # One image re-scored by hand: Y channel (BT.601), 2 border pixels cut, 8-bit values.
    out = np.asarray(Image.open(out_dir / "Set5" / "img01x2.png"), np.float64)
    hr = np.asarray(Image.open(benchmark_root / "Set5" / "HR" / "img01.png"), np.float64)
    expected = metrics.psnr(out, hr[:out.shape[0], :out.shape[1]], crop_border=2, y_channel=True)
    np.testing.assert_allclose(rows[-1]["psnr"], expected, atol=1e-6)
    assert out.shape[:2] == (20, 30)  # the LR given for the 21-row image has 10 rows


def _dihedral(x, k, flip):
    """One of the 8 flips / quarter turns of an NHWC batch, in numpy."""
    x = np.rot90(x, k, axes=(1, 2))
    return x[:, :, ::-1] if flip else x


def _undo_dihedral(x, k, flip):
    return np.rot90(x[:, :, ::-1] if flip else x, -k, axes=(1, 2))


def test_self_ensemble_is_the_mean_of_the_8_transformed_outputs(sr_run):
    state, exp, _ = runs.load_state(sr_run, "latest")
    task = exp.task
    y = np.random.default_rng(0).random((1, 12, 10, 3)).astype(np.float32)  # not square
    predict = jax.jit(lambda v: steps.predict(state, v, None, task=task))
    by_hand = np.mean([_undo_dihedral(np.asarray(predict(np.ascontiguousarray(
        _dihedral(y, k, flip)))), k, flip) for k in range(4) for flip in (False, True)], axis=0)
    ensemble = evaluate.make_restorer(state, task, self_ensemble=True)(y, None)
    assert ensemble.shape == (1, 24, 20, 3)
    np.testing.assert_allclose(np.asarray(ensemble), np.clip(by_hand, 0, 1), rtol=0, atol=1e-5)


def test_self_ensemble_of_an_equivariant_model_is_its_plain_output():
    """Convolutions whose kernels are symmetric under the 8 flips / quarter turns, with ReLU
    between, commute with them: averaging the transformed outputs must change nothing."""
    c = tiny_config(**{"task.name": "denoise", "task.residual": True})
    task = build.make_task(c)
    model = models.create_model("residual_cnn", features=8, depth=3)
    state = create_state(model, c, np.zeros((1, 16, 16, 3), np.float32), 1,
                         parallel.make_mesh(1))
    rng = np.random.default_rng(1)
    random = jax.tree.map(lambda p: rng.normal(0, 0.3, p.shape).astype(np.float32), state.params)

    def symmetric(p):
        if p.ndim != 4:  # biases
            return p
        views = [np.rot90(p, k, axes=(0, 1)) for k in range(4)]
        return np.mean(views + [v[:, ::-1] for v in views], axis=0)

    y = rng.random((2, 16, 16, 3)).astype(np.float32) * 0.5 + 0.25
    outputs = {}
    for name, params in [("random", random), ("symmetric", jax.tree.map(symmetric, random))]:
        s = state.replace(params=params)
        outputs[name] = [np.asarray(evaluate.make_restorer(s, task, self_ensemble=e)(y, None))
                         for e in (False, True)]
    plain, ensemble = outputs["symmetric"]
    assert np.abs(plain - y).mean() > 0.01  # the model does something
    np.testing.assert_allclose(ensemble, plain, rtol=0, atol=1e-5)
    plain, ensemble = outputs["random"]  # without the symmetry the ensemble is another output
    assert np.abs(ensemble - plain).max() > 1e-3


def test_eval_cli_prints_markdown_tables(sr_run, benchmark_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval.py", "--workdir", str(sr_run), "--benchmark_root",
         str(benchmark_root), "--output_dir", str(tmp_path / "cli")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| set | images | psnr | ssim |" in proc.stdout
    assert "| Set5 | img00x2.png |" in proc.stdout


@pytest.mark.parametrize("mode", ["single", "multiscale", "fullmultiscale"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_every_mge_mode_steps_every_sr_model(name, mode):
    """One compiled step of the first (coarsest, for FMS) stage: LR and HR restricted together."""
    c = tiny_config(**{"task.name": "sr", "task.residual": False, "model": name,
                       "data.patch": 32, "mode": mode, "mge.levels": 1,
                       "fms.stage_weights": (1, 1)})
    c.model_kwargs = dict(scale=2, **TINY[name])
    config_check.validate(c)
    task = build.make_task(c)
    stage = build.stages(c)[0]
    mesh = parallel.make_mesh(1)
    model = models.create_model(name, **c.model_kwargs)
    state = create_state(model, c, np.zeros((1, 16, 16, 3), np.float32), 1, mesh)
    rng = np.random.default_rng(0)
    batches = tuple({"target": rng.random((n, 32, 32, 3), np.float32)}
                    for n in stage.plan.batch_sizes)
    step = jax.jit(functools.partial(steps.train_step, plan=stage.plan, task=task))
    new_state, out = step(state, batches, jax.random.PRNGKey(0))
    assert np.isfinite(float(out["loss"])) and float(out["grad_norm"]) > 0
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         new_state.params, state.params)
    assert max(jax.tree.leaves(moved)) > 0
