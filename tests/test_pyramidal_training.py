"""The pyramidal autoencoders in training: the damage suite as a task, BatchNorm in training,
evaluation and across MGE levels, and short runs on the built-in photos."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from msjax.configs import pyramidal_builtin
from msjax import build, damage, data, steps, tasks, train
from msjax.backend import xla_cpu
from msjax.models.pyramidal import PyramidalAutoencoder
from msjax.multiscale import LevelPlan, _term_pyramid, restrict_to, telescoping_loss
from tests.helpers import tiny_config


def compile_and_run(fn, *args):
    """These programs run once: XLA's cheap settings, since compile time is all that counts."""
    return jax.jit(fn).lower(*args).compile(xla_cpu.cheap_compile())(*args)


def photos(n, side, seed):
    """Crops of the built-in photos in [0, 1] (real images: BatchNorm statistics are not flat)."""
    return data.term_batch(data.builtin_photos("train"), seed=seed, step=0, term=0, batch=n,
                           patch=side)["target"]


# --- the damage suite as a task ----------------------------------------------------------------

@pytest.mark.parametrize("name", damage.DAMAGES)
def test_every_damage_trains_a_step_end_to_end(tmp_path, name):
    """The tiny residual CNN of tests/helpers.py, one multiscale step (JPEG: made on the host)."""
    c = tiny_config(**{"task.name": "damage", "task.damage": name, "mode": "multiscale",
                       "mge.levels": 1, "train.steps": 1, "log.eval_every": 1,
                       "runtime.fast_compile": True})
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["psnr"]) and np.isfinite(result["input_psnr"])
    # Image panels of the validation set and of a training batch.
    images = tmp_path / "run" / "images"
    assert (images / "valid_00000001.png").exists() and (images / "train_00000001.png").exists()


@pytest.mark.parametrize("name", damage.DAMAGES)
def test_validation_damage_is_the_fixed_form_in_every_run(name):
    """Two runs (different seeds even) validate on the same damaged images: the fixed form."""
    inputs = []
    for seed in (1, 2):
        c = tiny_config(**{"task.name": "damage", "task.damage": name, "seed": seed})
        batch = build.make_validation(build.experiment(c)).batch
        inputs.append(np.asarray(batch["input"]))
    np.testing.assert_array_equal(inputs[0], inputs[1])
    expected = damage.validation_damage(name, batch["target"], tasks.VALIDATION_DAMAGE_SEED)
    np.testing.assert_allclose(inputs[0], expected, atol=1e-6)


def test_jpeg_is_made_on_the_host_and_restricted_like_paired_data():
    task = build.make_task(tiny_config(**{"task.name": "damage", "task.damage": "jpeg"}))
    x = photos(2, 16, seed=0)
    y = task.host_corrupt(x)
    np.testing.assert_array_equal(y, damage.jpeg(x))
    plan = LevelPlan((2, 2))
    batch = {"target": jnp.asarray(x), "input": jnp.asarray(y)}
    # The coarse term sees R_1 of the finest JPEG, not a JPEG of R_1 x (corrupt, then restrict).
    pairs, t = _term_pyramid(plan, task, batch, jax.random.key(0), level=0, coarse=True)
    assert t is None
    np.testing.assert_allclose(pairs[1][0], restrict_to(jnp.asarray(y), 1, "area"), atol=1e-6)


def test_signed_model_range_feeds_the_model_minus_one_to_one():
    seen = {}

    def identity_model(variables, x, t, **kwargs):
        seen["x"] = x
        return x

    task = build.make_task(tiny_config(**{"task.name": "damage", "task.damage": "noise",
                                          "task.model_range": "signed",
                                          "task.residual": False}))
    y = jnp.linspace(0, 1, 12).reshape(1, 2, 2, 3)
    out, _ = task.predict(identity_model, {}, y, None)
    np.testing.assert_allclose(seen["x"], 2 * y - 1)
    np.testing.assert_allclose(out, y, atol=1e-7)  # (tanh-range output + 1) / 2 is back in [0, 1]


# --- BatchNorm: training, evaluation, MGE levels -----------------------------------------------

def pyramid(dropout_rate=0.2):
    model = PyramidalAutoencoder("pyramidal44", features=4, growth=4, dropout_rate=dropout_rate)
    task = build.make_task(tiny_config(**{"task.name": "damage", "task.damage": "blur",
                                          "task.model_range": "signed",
                                          "task.residual": False}))
    x = jnp.zeros((1, 16, 16, 3))
    variables = compile_and_run(lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x))
    return model, task, variables


@pytest.mark.parametrize("finest_level", [0, 1])
def test_running_statistics_come_from_the_finest_evaluation(finest_level):
    """A training step moves batch_stats to those of the finest evaluation: term 0's batch on the
    plan's finest grid (an FMS stage's finest grid is coarser than the data's)."""
    model, task, variables = pyramid(dropout_rate=0.0)  # no dropout: stats are deterministic
    state = steps.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                    tx=optax.adam(1e-3),
                                    model_state={"batch_stats": variables["batch_stats"]})
    plan = LevelPlan((2, 4), finest_level=finest_level)
    batches = ({"target": jnp.asarray(photos(2, 16, seed=1))},
               {"target": jnp.asarray(photos(4, 16, seed=2))})

    def step_and_finest_statistics(state, batches):
        new_state, _ = steps.train_step(state, batches, jax.random.key(3), plan=plan, task=task)
        y = restrict_to(damage.blur(batches[0]["target"]), finest_level, "area")
        _, finest = task.predict(model.apply, variables, y, None, train=True,
                                 mutable=["batch_stats"])
        return new_state.model_state["batch_stats"], finest["batch_stats"]

    got, expected = compile_and_run(step_and_finest_statistics, state, batches)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), got, variables["batch_stats"])
    assert all(jax.tree.leaves(moved))


def test_evaluation_uses_the_running_averages():
    model, task, variables = pyramid()
    rng = np.random.default_rng(0)
    stats = jax.tree.map(lambda a: jnp.asarray(0.5 + rng.random(a.shape), jnp.float32),
                         variables["batch_stats"])  # running averages unlike any batch's
    state = steps.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                    tx=optax.adam(1e-3), model_state={"batch_stats": stats})
    initial = state.replace(model_state={"batch_stats": variables["batch_stats"]})
    y = jnp.asarray(photos(3, 16, seed=4))

    def restorations(state, initial, y):
        predict = functools.partial(steps.predict, task=task)
        direct = model.apply({"params": variables["params"], "batch_stats": stats}, 2 * y - 1)
        return (predict(state, y, None), predict(state, y[1:2], None), (direct + 1) / 2,
                predict(initial, y, None))

    batch, alone, direct, with_initial = compile_and_run(restorations, state, initial, y)
    # Each image is restored alone as in a batch (no batch statistics, no dropout) ...
    np.testing.assert_allclose(batch[1:2], alone, rtol=1e-5, atol=1e-5)
    # ... exactly with the stored averages, which make a difference.
    np.testing.assert_allclose(batch, direct, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(with_initial - batch))) > 1e-3


def test_shared_batch_telescoping_holds_for_batchnorm_in_train_mode():
    """With one shared batch the coarse evaluation of term 0 and the evaluation of term 1 see
    the same images, so the same batch statistics and dropout masks: the sum collapses to the
    finest loss and its gradient to the single-scale gradient. (One coarse level shows it; more
    levels chain the same identity.)"""
    model, task, variables = pyramid()
    batches = ({"target": jnp.asarray(photos(4, 16, seed=5))},) * 2
    kwargs = dict(task=task, apply_fn=model.apply, train=True,
                  model_state={"batch_stats": variables["batch_stats"]})

    def gradients(params):
        mge = jax.value_and_grad(telescoping_loss, has_aux=True)(
            params, batches, jax.random.key(6), plan=LevelPlan((4, 4), shared_batch=True),
            **kwargs)
        single = jax.value_and_grad(telescoping_loss, has_aux=True)(
            params, batches[:1], jax.random.key(6), plan=LevelPlan((4,)), **kwargs)
        return mge, single

    ((loss, aux), grads), ((single_loss, _), single_grads) = compile_and_run(
        gradients, variables["params"])
    assert abs(float(loss - single_loss)) <= 1e-5 * abs(float(single_loss))
    assert float(jnp.min(jnp.abs(aux["terms"]))) > 1e-4  # every term is a real difference
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, grads, single_grads))
    assert float(diff) <= 1e-5 * float(optax.tree.norm(single_grads))


# --- short runs on the built-in photos ------------------------------------------------------------

@pytest.mark.parametrize("mode", ["single", "multiscale", "fullmultiscale"])
def test_short_run_improves_psnr_over_the_damaged_input(tmp_path, mode):
    """configs/pyramidal_builtin.py shrunk to 30 steps of a tiny pyramidal44 without dropout
    (the dropout masks' random bits cost the most compile time on CPU); one coarse level."""
    c = pyramidal_builtin.get_config()
    c.mode = mode
    c.model_kwargs = dict(variant="pyramidal44", features=4, growth=4, dropout_rate=0.0)
    c.data.patch = 32
    c.batch_size = 4
    c.mge.levels = 1
    c.mge.batch_growth = 2
    c.fms.stage_weights = (1, 1)
    c.train.steps = 30
    c.log.eval_every = c.log.every = c.log.checkpoint_every = 30
    c.runtime.fast_compile = True
    c.runtime.num_devices = 1
    result = train.train_and_evaluate(c, tmp_path / "run")
    print(f"{mode}: valid PSNR {result['psnr']:.2f} dB, damaged input "
          f"{result['input_psnr']:.2f} dB")
    assert result["psnr"] > result["input_psnr"] + 3.0  # measured: +6.2 to +6.8 dB
