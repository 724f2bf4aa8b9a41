"""Mixed precision: bf16 compute, float32 parameters and optimizer state, float32 FFTs."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from msjax import build, models, multiscale, parallel, steps, train
from tests.helpers import create_state, tiny_config


def _saved_dtypes(state_dir):
    """The dtype of every array as written to the checkpoint (the live state's, not a template's)."""
    meta = ocp.StandardCheckpointer().metadata(state_dir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return jax.tree.map(lambda m: np.dtype(m.dtype), tree, is_leaf=lambda m: hasattr(m, "dtype"))


def test_bfloat16_run_trains_with_float32_params_and_optimizer_state(tmp_path):
    c = tiny_config(**{"dtype": "bfloat16", "mode": "multiscale"})
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["psnr"])
    saved = _saved_dtypes(tmp_path / "run" / "checkpoints" / "3" / "state")
    assert set(jax.tree.leaves(saved["params"])) == {np.dtype("float32")}
    floats = {d for d in jax.tree.leaves(saved["opt_state"]) if np.issubdtype(d, np.floating)}
    assert floats == {np.dtype("float32")}


def test_bfloat16_step_convolves_in_bf16_and_keeps_the_blur_fft_float32():
    c = tiny_config(**{"dtype": "bfloat16", "mode": "multiscale"})
    plan = multiscale.LevelPlan((4, 4, 4), operator_per_level=True)
    c.mge.operator_per_level = True
    task = build.make_task(c)
    model = models.create_model(c.model, dtype=jnp.bfloat16, **c.model_kwargs)
    mesh = parallel.make_mesh(1)
    state = create_state(model, c, np.zeros((1, 16, 16, 3), np.float32), 3, mesh)
    batches = tuple({"target": np.zeros((n, 16, 16, 3), np.float32)} for n in plan.batch_sizes)
    hlo = jax.jit(functools.partial(steps.train_step, plan=plan, task=task)).lower(
        state, batches, jax.random.PRNGKey(0)).as_text()
    convs = [l for l in hlo.splitlines() if "stablehlo.convolution" in l]
    ffts = [l for l in hlo.splitlines() if "stablehlo.fft" in l]
    assert convs and all("bf16" in l for l in convs)
    assert ffts and not any("bf16" in l for l in ffts)
    assert all(re.search(r"complex<f32>|xf32>", l) for l in ffts)
