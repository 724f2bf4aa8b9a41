"""The MGE estimator: telescoping to the single-scale gradient, unbiasedness, schedules, work units,
compile-once stages, restriction pyramids."""

import dataclasses
import functools
import math
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import build, multiscale, operators, optim, resize, steps, tasks
from msjax import backend
from msjax.backend import xla_cpu
from msjax.models import create_model
from msjax.multiscale import LevelPlan


# Tests compile with LLVM's cheap settings: the programs hold many network evaluations, compile
# time dominates on CPU, and no property checked here depends on code generation.
# Cheap XLA settings (compile time dominates these small programs), less any option this jax's
# XLA does not know (jax 0.12 dropped xla_cpu_use_fusion_emitters).
FAST_COMPILE = xla_cpu.cheap_compile()


def compile_and_run(fn, *args):
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def images(shape, seed):
    """Smooth-ish test images in [0, 1] (numpy draws: no jax.random compile per shape)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=shape)
    x = 0.5 * x + 0.25 * (np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2))
    return jnp.asarray(x, jnp.float32)


def flat(tree):
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)])


def make_task(name, **kw):
    return build.task_for(name=name, **kw)


def make_optimizer(total_steps, **kw):
    settings = build.optimizer_for(optimizer="adam", lr=1e-3, lr_end=1e-5, **kw)
    return optim.make_optimizer(settings, optim.learning_rate(settings, total_steps))


# --- telescoping: one shared batch gives exactly the single-scale gradient ----------------------

MODELS = {
    "resnet": dict(hidden=16),
    # Keeps what matters here (dropout 0.5 in every ResBlock, time embedding, attention, skips)
    # at one resolution: a deeper UNet of 5 evaluations takes tens of seconds to compile on CPU.
    "unet": dict(model_channels=8, groups=4, channel_mult=(1,)),
    "srnet": {},
}

# (model, restriction, task, image side, plan): every restriction with resnet, every task with
# resnet + area, one restriction each for unet (dropout in train mode) and srnet (SR, no t).
LEVELS_3 = LevelPlan(batch_sizes=(4, 4, 4, 4), shared_batch=True)
TELESCOPING_CASES = [
    ("resnet", "area", "deblur", 16, LEVELS_3),
    ("resnet", "nearest", "deblur", 16, LEVELS_3),
    ("resnet", "bilinear", "deblur", 16, LEVELS_3),
    ("resnet", "area", "denoise", 16, LEVELS_3),
    ("resnet", "area", "inpaint", 16, LEVELS_3),
    # One level is enough to show that dropout masks follow the level, not the term.
    ("unet", "area", "denoise", 16, LevelPlan(batch_sizes=(4, 4), shared_batch=True)),
    ("srnet", "nearest", "sr", 32, LEVELS_3),
]


def make_model_task(model_name, task_name):
    model = create_model(model_name, **MODELS[model_name])
    task = (make_task("sr", scale=2, upsample_input=True, residual=True) if task_name == "sr"
            else make_task(task_name))
    return model, task


@functools.cache
def random_params(model_name, task_name, side, seed=0):
    """Random parameters of every leaf (fan-in scaled kernels, norm scales near 1): initial values
    would leave zero-initialised heads, and so every gradient but the head's, exactly zero, and
    the identity would be checked on almost nothing. Made in numpy: no init program to compile."""
    model, task = make_model_task(model_name, task_name)
    x = jax.eval_shape(lambda x: task.model_input(task.corrupt(x, jax.random.key(0), 0)[0]),
                       jnp.zeros((4, side, side, 3)))
    shapes = jax.eval_shape(functools.partial(model.init, train=False),
                            {"params": jax.random.key(0), "dropout": jax.random.key(0)},
                            jnp.zeros(x.shape), jnp.zeros((4,)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        if len(leaf.shape) >= 2:
            return jnp.asarray(z / math.sqrt(math.prod(leaf.shape[:-1])))
        return jnp.asarray((1.0 if "scale" in name else 0.0) + 0.1 * z)

    assert set(shapes) == {"params"}  # no BatchNorm statistics to make up
    return jax.tree_util.tree_map_with_path(draw, shapes["params"]), {}


@functools.cache
def single_scale_gradient(model_name, task_name, side):
    """The single-scale gradient does not depend on the restriction: it lives on level 0 only."""
    model, task = make_model_task(model_name, task_name)
    params, model_state = random_params(model_name, task_name, side)
    fn = functools.partial(multiscale.mge_gradient, plan=LevelPlan((4,)), task=task,
                           apply_fn=model.apply, model_state=model_state, train=True)
    return compile_and_run(fn, params, ({"target": images((4, side, side, 3), seed=1)},),
                           jax.random.key(3))


@pytest.mark.parametrize("model_name, restriction, task_name, side, plan", TELESCOPING_CASES)
def test_shared_batch_mge_gradient_equals_single_scale_gradient(model_name, restriction,
                                                                task_name, side, plan):
    model, task = make_model_task(model_name, task_name)
    params, model_state = random_params(model_name, task_name, side)
    shared = dataclasses.replace(plan, restriction=restriction)
    fn = functools.partial(multiscale.mge_gradient, plan=shared, task=task, apply_fn=model.apply,
                           model_state=model_state, train=True)
    # One batch, same rng as the single-scale gradient: term 0 draws what single-scale draws.
    (loss, aux), grads = compile_and_run(
        fn, params, ({"target": images((4, side, side, 3), seed=1)},), jax.random.key(3))
    (loss1, _), grads1 = single_scale_gradient(model_name, task_name, side)

    g, g1 = flat(grads), flat(grads1)
    assert np.linalg.norm(g1) > 0 and np.all(np.isfinite(g))
    assert np.linalg.norm(g - g1) <= 1e-5 * np.linalg.norm(g1)
    assert float(loss) == pytest.approx(float(loss1), rel=1e-5)
    assert float(aux["finest"]) == pytest.approx(float(loss1), rel=1e-6)
    # Not vacuous: the coarse terms (loss differences between levels) are far from zero, and they
    # cancel only because fine and coarse evaluations of neighbouring terms match (same samples,
    # noise, t and, for the UNet, dropout masks).
    terms = np.asarray(aux["terms"])
    assert terms.shape == (plan.num_terms,)
    assert np.all(np.abs(terms[1:]) > 1e-4 * abs(float(loss1)))
    assert float(np.sum(terms)) == pytest.approx(float(loss1), rel=1e-5)


# --- unbiasedness: independent batches estimate the full-dataset finest gradient -------------

class TinyConv(nn.Module):
    @nn.compact
    def __call__(self, x, t=None, train=False):
        h = jnp.tanh(nn.Conv(4, (3, 3))(x))
        return nn.Conv(x.shape[-1], (3, 3))(h)


# A deterministic task: a fixed blur, no noise, no t. All randomness is the choice of samples.
FIXED_BLUR = tasks.Task(name="deblur", time_conditioned=False,
                        corrupt=lambda x, key, level: (operators.blur(x, (1.0, 1.0)), None))
DATASET_SIZE, DRAWS, SIDE = 12, 400, 16
SIZES = (2, 4, 8)


def z_statistic(draws, truth):
    """Per-component z = (mean - truth) / (sd / sqrt(M)), and the aggregate sum(z^2) / D with its
    5-sigma bound. The components of a gradient are correlated, so Var(sum z^2 / D) is
    2 sum_ij rho_ij^2 / D^2 (= 2 / D only for independent components); the bound uses it."""
    m, d = draws.shape
    se = draws.std(axis=0, ddof=1) / math.sqrt(m)
    z = (draws.mean(axis=0) - truth) / se
    corr = np.corrcoef(draws, rowvar=False)
    bound = 1.0 + 5.0 * math.sqrt(2.0 * np.sum(corr**2)) / d
    return z, float(np.sum(z**2) / d), bound


@functools.cache
def unbiasedness_draws():
    model = TinyConv()
    data = images((DATASET_SIZE, SIDE, SIDE, 3), seed=7)
    params = compile_and_run(lambda x: model.init(jax.random.key(0), x)["params"], data[:1])
    kw = dict(task=FIXED_BLUR, apply_fn=model.apply)
    rng = jax.random.key(0)  # unused by the deterministic task; fixed on purpose

    plan = LevelPlan(SIZES)
    truth = flat(compile_and_run(
        lambda p, b: multiscale.mge_gradient(p, (b,), rng, plan=LevelPlan((DATASET_SIZE,)),
                                             **kw)[1], params, {"target": data}))

    def estimators(batches):
        mge = multiscale.mge_gradient(params, batches, rng, plan=plan, **kw)[1]
        # Biased on purpose: each term's fine loss alone (no coarse subtraction) ...
        no_subtraction = [multiscale.mge_gradient(params, (b,), rng, **kw,
                                                  plan=LevelPlan((n,), finest_level=k))[1]
                          for k, (b, n) in enumerate(zip(batches, SIZES))]
        # ... and the MGE gradient with its coarsest term weighted 1.5 instead of 1.
        scaled = jax.tree.map(lambda a, b: a + 0.5 * b, mge, no_subtraction[-1])
        no_subtraction = jax.tree.map(lambda *g: sum(g), *no_subtraction)
        return mge, no_subtraction, scaled

    # Independent batches drawn uniformly with replacement, numpy RNG keyed per draw.
    indices = [[np.random.default_rng([2024, m, k]).integers(0, DATASET_SIZE, n)
                for k, n in enumerate(SIZES)] for m in range(DRAWS)]
    batches = tuple({"target": data[np.stack([idx[k] for idx in indices])]}
                    for k in range(len(SIZES)))
    out = compile_and_run(jax.vmap(estimators), batches)
    draws = [np.concatenate([np.asarray(leaf, np.float64).reshape(DRAWS, -1)
                             for leaf in jax.tree.leaves(tree)], axis=1) for tree in out]
    return truth, draws


def test_independent_batch_mge_gradient_is_unbiased_for_the_full_dataset_gradient():
    truth, (mge, _, _) = unbiasedness_draws()
    z, statistic, bound = z_statistic(mge, truth)
    assert mge.shape == (DRAWS, truth.size)
    assert np.all(mge.std(axis=0) > 0)  # every component is really random
    assert np.max(np.abs(z)) <= 5.0
    assert statistic <= bound


@pytest.mark.parametrize("which", [1, 2], ids=["no_coarse_subtraction", "coarsest_term_scaled"])
def test_unbiasedness_check_rejects_a_biased_estimator(which):
    truth, draws = unbiasedness_draws()
    _, statistic, bound = z_statistic(draws[which], truth)
    assert statistic > 10 * bound


def test_independent_batch_draws_differ_from_each_other():
    truth, (mge, _, _) = unbiasedness_draws()
    assert len({tuple(row[:5]) for row in mge}) > DRAWS // 2


# --- schedules and work units --------------------------------------------------------------------

def test_single_scale_step_is_one_work_unit():
    stages = multiscale.make_schedule("single", steps=10, batch_size=16)
    assert [s.plan.batch_sizes for s in stages] == [(16,)]
    assert multiscale.work_units(stages[0].plan, 16) == 1.0


def test_official_multiscale_step_costs_1_65625_work_units():
    stages = multiscale.make_schedule("multiscale", steps=10, batch_size=16, levels=3,
                                      batch_sizes=(16, 16, 16, 16))
    plan = stages[0].plan
    assert plan.levels == 3 and plan.finest_level == 0
    # 16 x (1 + 2/4 + 2/16 + 2/64) / 16: every coarse level is evaluated twice.
    assert multiscale.work_units(plan, 16) == 1.65625


def test_official_full_multiscale_schedule_stages_and_cost():
    stages = multiscale.make_schedule("fullmultiscale", steps=3750, batch_size=16, levels=3,
                                      stage_batch_growth=1)
    assert [s.steps for s in stages] == [2000, 1000, 500, 250]
    assert [s.first_step for s in stages] == [0, 2000, 3000, 3500]
    assert [s.plan.batch_sizes for s in stages] == [(128,), (64, 64), (32, 32, 32),
                                                    (16, 16, 16, 16)]
    assert [s.plan.finest_level for s in stages] == [3, 2, 1, 0]
    assert [s.plan.coarsest_level for s in stages] == [3, 3, 3, 3]
    assert [multiscale.work_units(s.plan, 16) for s in stages] == [0.125, 0.375, 0.8125, 1.65625]
    total = multiscale.schedule_work_units(stages, 16)
    assert total == 1445.3125
    single = multiscale.schedule_work_units(multiscale.make_schedule("single", steps=8000,
                                                                     batch_size=16), 16)
    assert single == 8000.0
    assert single / total == pytest.approx(5.535, abs=1e-3)


def test_stage_at_maps_global_steps_to_stages():
    stages = multiscale.make_schedule("fullmultiscale", steps=3750, batch_size=16, levels=3)
    assert [multiscale.stage_at(stages, s) for s in (0, 1999, 2000, 2999, 3000, 3499, 3500, 3749,
                                                     5000)] == [0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_paper_default_batches_grow_four_fold_per_coarser_level():
    stages = multiscale.make_schedule("multiscale", steps=10, batch_size=16, levels=3,
                                      finest_batch=4, batch_growth=4)
    assert stages[0].plan.batch_sizes == (4, 16, 64, 256)


def test_schedule_options_reach_every_plan():
    stages = multiscale.make_schedule("fullmultiscale", steps=40, batch_size=2, levels=2,
                                      stage_weights=(1, 1, 2), restriction="nearest",
                                      shared_batch=True, operator_per_level=True)
    assert [s.steps for s in stages] == [10, 10, 20]
    for s in stages:
        assert (s.plan.restriction, s.plan.shared_batch, s.plan.operator_per_level) == (
            "nearest", True, True)


def test_stage_batch_factor_sets_each_stage_base_batch():
    def bases(**kw):
        return [s.plan.batch_sizes for s in multiscale.make_schedule(
            "fullmultiscale", steps=40, batch_size=4, levels=2, stage_batch_growth=2, **kw)]

    assert bases() == [(16,), (8, 16), (4, 8, 16)]            # official: 2x per coarser stage
    assert bases(stage_batch_factor=1) == [(4,), (4, 8), (4, 8, 16)]
    assert bases(stage_batch_factor=4, max_terms=1) == [(64,), (16,), (4,)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="multiscale", levels=3, batch_sizes=(4, 16, 64)), "batch_sizes has 3 entries"),
    (dict(mode="multiscale", levels=2, batch_sizes=(4, 16, 64, 256)), "needs 3"),
    (dict(mode="fullmultiscale", levels=3, stage_weights=(8, 4, 2)), "stage_weights has 3"),
    (dict(mode="fullmultiscale", levels=1, stage_weights=(8, 4, 2)), "needs 2"),
    (dict(mode="multigrid"), "unknown mode 'multigrid'"),
])
def test_schedule_rejects_inconsistent_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        multiscale.make_schedule(steps=10, batch_size=16, **kwargs)


# --- compiled steps -------------------------------------------------------------------------------

STEP_MODEL = dict(features=8, depth=2, time_embed=True)


@functools.cache
def create_state(total_steps, seed=0):
    """As msjax/train.py's create_state (without the mesh), for a small residual CNN."""
    model = create_model("residual_cnn", **STEP_MODEL)
    sample = jnp.zeros((1, 16, 16, 3))
    rng = jax.random.key(seed)
    t = jnp.zeros((sample.shape[0],), jnp.float32)

    def init():
        variables = model.init({"params": rng, "dropout": rng}, sample, t, train=False)
        params = variables.pop("params")
        return steps.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=make_optimizer(total_steps),
                                       model_state=dict(variables))

    return jax.jit(init).lower().compile(FAST_COMPILE)()


def term_batches(plan, step, side=16):
    terms = 1 if plan.shared_batch else plan.num_terms
    return tuple({"target": images((plan.batch_sizes[k], side, side, 3), seed=1000 * step + k)}
                 for k in range(terms))


def test_each_full_multiscale_stage_compiles_exactly_once():
    stages = multiscale.make_schedule("fullmultiscale", steps=12, batch_size=2, levels=2,
                                      stage_weights=(1, 1, 1))
    assert [s.steps for s in stages] == [4, 4, 4]
    task = make_task("deblur")
    state = create_state(stages[-1].end_step)
    seed_key = jax.random.key(1)

    traces = Counter()

    def counted_train_step(state, batches, seed_key, *, plan, task):
        traces[plan] += 1  # runs only while jax traces
        return steps.train_step(state, batches, seed_key, plan=plan, task=task)

    compiled, losses = {}, []
    for step in range(stages[-1].end_step):
        index = multiscale.stage_at(stages, step)
        plan = stages[index].plan
        if index not in compiled:  # as msjax/train.py: one jit per stage
            compiled[index] = jax.jit(functools.partial(counted_train_step, plan=plan, task=task),
                                      compiler_options=FAST_COMPILE)
        state, metrics = compiled[index](state, term_batches(plan, step), seed_key)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 12
    assert np.all(np.isfinite(losses))
    assert traces == Counter({s.plan: 1 for s in stages})
    for fn in compiled.values():
        if hasattr(fn, "_cache_size"):  # private, but it counts compiled programs directly
            assert fn._cache_size() == 1


def test_compiled_flops_of_a_train_step_is_positive_and_finite():
    plan = LevelPlan((2, 2))
    state = create_state(12)
    fn = jax.jit(functools.partial(steps.train_step, plan=plan, task=make_task("denoise")))
    exe = fn.lower(state, term_batches(plan, 0), jax.random.key(0)).compile(FAST_COMPILE)
    flops = backend.cost_flops(exe)
    assert math.isfinite(flops) and flops > 0
    # At least the forward convolutions of the three evaluations (2 images each at 16x16, 8x8 and
    # 8x8; 3x3 convs 3->8 and 8->3), at 2 FLOPs a multiply-add.
    forward_conv_flops = 2 * (2 * (16 * 16 + 8 * 8 + 8 * 8)) * 9 * (3 * 8 + 8 * 3)
    assert flops > forward_conv_flops


# --- restriction pyramids -------------------------------------------------------------------------

@pytest.mark.parametrize("method", resize.RESTRICTIONS)
def test_restrict_to_composes_level_by_level(method):
    x = images((2, 32, 48, 3), seed=5)
    for level in range(4):
        fine = multiscale.restrict_to(x, level, method)
        assert fine.shape == (2, 32 >> level, 48 >> level, 3)
        np.testing.assert_allclose(
            np.asarray(multiscale.restrict_to(x, level + 1, method)),
            np.asarray(resize.restrict(fine, 1, method)), rtol=0, atol=1e-6)
        for extra in range(4 - level):
            np.testing.assert_allclose(
                np.asarray(multiscale.restrict_to(x, level + extra, method)),
                np.asarray(multiscale.restrict_to(fine, extra, method)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["area", "nearest"])
def test_restrict_to_matches_one_shot_restriction_where_it_is_exact(method):
    x = images((2, 32, 48, 3), seed=6)
    np.testing.assert_allclose(np.asarray(multiscale.restrict_to(x, 3, method)),
                               np.asarray(resize.restrict(x, 3, method)), rtol=0, atol=1e-6)


def test_level_plan_evaluations_list_every_network_call():
    plan = LevelPlan((4, 16, 64), finest_level=1)
    assert plan.levels == 2 and plan.coarsest_level == 3
    assert list(plan.evaluations()) == [(0, 1, 4), (0, 2, 4), (1, 2, 16), (1, 3, 16), (2, 3, 64)]
