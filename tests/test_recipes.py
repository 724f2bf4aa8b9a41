"""The seeds' recipes: the official MGE SR loss (-SSIM, zero padding), Adadelta, the papers' step
decay, warm starts across SR scales, and the configs that use them."""

import functools
import importlib
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import build, config_check, metrics, multiscale, optim, tasks, train, warmstart
from msjax.backend import xla_cpu as xla_options
from msjax.errors import ConfigError, RunDirError
from msjax.models import create_model
from msjax.multiscale import LevelPlan
from msjax.settings import WarmStart
from tests.helpers import optimizer, tiny_config


def images(shape, seed, noise=0.0, like=None):
    """Smooth-ish images in [0, 1]; with ``like``, that image plus clipped Gaussian noise."""
    rng = np.random.default_rng(seed)
    if like is not None:
        return np.clip(like + noise * rng.standard_normal(like.shape), 0, 1)
    x = rng.uniform(size=shape)
    return 0.5 * x + 0.25 * (np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2))


# --- the official MGE SR loss: -SSIM with zero padding -----------------------------------------


def official_ssim_map(x, y):
    """A float64 transcription of the MGE code's official SSIM loss: the 2-D
    11x11 Gaussian window (sigma 1.5, normalised), zero padding 5, each channel alone, L = 1,
    C1 = 0.01^2, C2 = 0.03^2, no clamping; written as a direct 2-D sum, not separably."""
    t = np.arange(11) - 5.0
    g = np.exp(-t**2 / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(z):  # N, H, W, C -> same shape
        padded = np.pad(z, ((0, 0), (5, 5), (5, 5), (0, 0)))
        views = np.lib.stride_tricks.sliding_window_view(padded, (11, 11), axis=(1, 2))
        return np.einsum("nhwcij,ij->nhwc", views, window)

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))


NEG_SSIM = build.task_for(name="sr", scale=2, loss="neg_ssim")
neg_ssim = jax.jit(NEG_SSIM.term_loss)


@pytest.mark.parametrize("side", [24, 8])  # 8: smaller than the window (MGE's coarse levels)
def test_neg_ssim_loss_is_the_official_formula(side):
    x = images((3, side, side + 4, 3), seed=0)
    y = images(None, seed=1, noise=0.1, like=x)
    expected = -official_ssim_map(x, y).mean(axis=(1, 2, 3)).mean()  # C, H, W, then the batch
    loss = neg_ssim(jnp.asarray(y, jnp.float32), jnp.asarray(x, jnp.float32))
    assert abs(float(loss) - expected) < 2e-6, (float(loss), expected)
    assert float(neg_ssim(jnp.asarray(x), jnp.asarray(x))) == pytest.approx(-1.0)


def test_neg_ssim_interior_is_the_metric_ssim_and_the_border_is_biased():
    """Away from the border (5 px) the zero-padded map is metrics.ssim's valid map; over the whole
    image the two conventions differ: the loss's border windows see zeros."""
    x = images((2, 32, 32, 3), seed=2)
    y = images(None, seed=3, noise=0.1, like=x)
    ssim_map = np.asarray(metrics.ssim_zero_padded_batch(y, x, return_map=True), np.float64)
    for i in range(2):
        valid = metrics.ssim(y[i], x[i], data_range=1.0)      # float64, valid region only
        assert ssim_map[i, 5:-5, 5:-5].mean() == pytest.approx(valid, abs=2e-6)
        assert abs(ssim_map[i].mean() - valid) > 1e-3        # the whole padded map is another number
    np.testing.assert_allclose(metrics.ssim_batch(y[:, 5:-5, 5:-5], x[:, 5:-5, 5:-5]),
                               [metrics.ssim(y[i, 5:-5, 5:-5], x[i, 5:-5, 5:-5], data_range=1.0)
                                for i in range(2)], atol=1e-5)


@pytest.mark.parametrize("case", ["noisy", "equal", "flat"])
def test_neg_ssim_gradient_is_finite(case):
    """Also where the output equals the target and on flat images (zero variances)."""
    target = {"noisy": images((2, 16, 16, 3), seed=4), "equal": images((2, 16, 16, 3), seed=4),
              "flat": np.full((2, 16, 16, 3), 0.5)}[case]
    output = images(None, seed=5, noise=0.1, like=target) if case == "noisy" else target
    output, target = jnp.asarray(output, jnp.float32), jnp.asarray(target, jnp.float32)
    grad = jax.jit(jax.grad(NEG_SSIM.term_loss))(output, target)
    assert np.all(np.isfinite(np.asarray(grad)))
    if case == "noisy":  # a step against the gradient raises SSIM
        assert float(jnp.abs(grad).max()) > 0
        assert float(neg_ssim(output - 10.0 * grad, target)) < float(neg_ssim(output, target))


@pytest.mark.parametrize("loss", tasks.LOSSES)
def test_image_losses_average_to_the_term_loss(loss):
    """Validation reports ``image_loss``: one value per image whose mean is the training loss."""
    task = build.task_for(name="sr", scale=2, loss=loss)
    x = jnp.asarray(images((3, 16, 16, 3), seed=8), jnp.float32)
    y = jnp.asarray(images(None, seed=9, noise=0.1, like=np.asarray(x)), jnp.float32)
    per_image = task.image_loss(y, x)
    assert per_image.shape == (3,) and len(set(np.asarray(per_image).tolist())) == 3
    assert float(jnp.mean(per_image)) == pytest.approx(float(task.term_loss(y, x)), rel=1e-6)


def _random_params(model, x):
    """Fan-in scaled random parameters of every leaf (fresh ones leave zero heads)."""
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    rng = np.random.default_rng(0)

    def draw(leaf):
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        return jnp.asarray(z / math.sqrt(math.prod(leaf.shape[:-1])) if len(leaf.shape) >= 2
                           else 0.1 * z)

    return jax.tree.map(draw, shapes["params"])


def test_shared_batch_mge_with_neg_ssim_telescopes_to_the_single_scale_gradient():
    """One shared batch: the -SSIM differences cancel, leaving the finest -SSIM's gradient."""
    task = build.task_for(name="sr", scale=2, upsample_input=True, residual=True,
                          loss="neg_ssim")
    model = create_model("srnet")
    params = _random_params(model, jnp.zeros((4, 32, 32, 3)))
    batches = ({"target": jnp.asarray(images((4, 32, 32, 3), seed=6), jnp.float32)},)
    options = xla_options.cheap_compile()

    def gradient(plan):
        fn = jax.jit(functools.partial(multiscale.mge_gradient, plan=plan, task=task,
                                       apply_fn=model.apply, model_state={}, train=True))
        args = (params, batches, jax.random.key(3))
        return fn.lower(*args).compile(options)(*args)

    (loss, _), grads = gradient(LevelPlan((4, 4, 4), restriction="bilinear", shared_batch=True))
    (loss1, _), grads1 = gradient(LevelPlan((4,)))
    g = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(grads)])
    g1 = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(grads1)])
    assert -1 < float(loss1) < 0 and float(loss) == pytest.approx(float(loss1), abs=1e-5)
    assert np.linalg.norm(g1) > 0 and np.all(np.isfinite(g))
    assert np.linalg.norm(g - g1) <= 1e-5 * np.linalg.norm(g1)


# --- optimizers and schedules ------------------------------------------------------------------


def train_section(**kw):
    c = tiny_config()
    c.train.update(kw)
    return build.optimizer_settings(c)


def test_adadelta_first_step_is_the_seed_formula():
    """lr 1, rho 0.9, eps 1e-6: the first update is -sqrt(eps) / sqrt((1 - rho) g^2 + eps) g."""
    tx = optimizer(train_section(optimizer="adadelta", lr=1.0, lr_end=1.0), 10)
    g = jnp.asarray([0.5, -2.0, 1e-4])
    update, _ = tx.update({"w": g}, tx.init({"w": jnp.ones(3)}), {"w": jnp.ones(3)})
    expected = -np.sqrt(1e-6) / np.sqrt(0.1 * np.asarray(g, np.float64)**2 + 1e-6) * g
    np.testing.assert_allclose(update["w"], expected, rtol=1e-5)


def test_step_schedule_halves_the_rate_every_period():
    c = train_section(lr=1e-4, lr_schedule="step", lr_step_period=200_000, lr_step_factor=0.5)
    rate = optim.learning_rate(c, 1_000_000)
    steps = [0, 199_999, 200_000, 399_999, 400_000, 999_999, 1_000_000]
    expected = [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 6.25e-6, 3.125e-6]
    np.testing.assert_allclose([float(rate(s)) for s in steps], expected, rtol=1e-6)


def test_step_schedule_drives_the_optimizer():
    """Adam's first update has size lr per element: at count 2 of a period-2 schedule, lr x 0.1."""
    c = train_section(optimizer="adam", lr=1e-2, lr_schedule="step", lr_step_period=2,
                      lr_step_factor=0.1)
    tx = optimizer(c, 10)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    sizes = []
    for _ in range(3):
        update, state = tx.update({"w": jnp.ones(2)}, state, params)
        sizes.append(float(jnp.abs(update["w"]).max()))
    np.testing.assert_allclose(sizes, [1e-2, 1e-2, 1e-3], rtol=1e-4)


def test_step_schedule_rejects_a_zero_period():
    with pytest.raises(ConfigError, match="lr_step_period"):
        optim.learning_rate(train_section(lr_schedule="step", lr_step_period=0), 10)


# --- the configs follow their papers -----------------------------------------------------------

STEP_DECAY = ["edsr_div2k:x2", "edsr_div2k:x3", "edsr_div2k:x4", "edsr_folder_x2",
              "edsr_div2k:full_x2", "edsr_div2k:full_x3", "edsr_div2k:full_x4",
              "rcan_div2k:x2", "rcan_div2k:x3", "rcan_div2k:x4",
              "msrn_div2k:x2", "msrn_div2k:x3", "msrn_div2k:x4"]


def config(name):
    """The config ``configs/<name>.py[:<argument>]`` builds."""
    name, _, argument = name.partition(":")
    get_config = importlib.import_module(f"msjax.configs.{name}").get_config
    return get_config(argument) if argument else get_config()


@pytest.mark.parametrize("name", STEP_DECAY)
def test_sr_paper_configs_use_adam_halved_every_200k_with_l1(name):
    c = config(name)
    assert (c.train.optimizer, c.train.lr, c.task.loss) == ("adam", 1e-4, "l1")
    assert (c.train.lr_schedule, c.train.lr_step_period, c.train.lr_step_factor) == (
        "step", 200_000, 0.5)
    assert c.eval.crop_border == c.task.scale == c.model_kwargs["scale"]


@pytest.mark.parametrize("scale", [3, 4])
def test_x3_x4_configs_start_from_the_same_methods_x2_run(scale):
    assert config(f"edsr_div2k:x{scale}").train.init_from == "runs/edsr_div2k_x2"
    assert config(f"rcan_div2k:x{scale}").train.init_from == "runs/rcan_div2k_x2"
    assert config(f"msrn_div2k:x{scale}").train.init_from == ""       # MSRN: each from scratch
    eco = config(f"eco_edsr:x{scale}")
    assert eco.train.init_from == "runs/eco_edsr_x2"                   # ECO from ECO
    assert eco.eco.teacher_workdir == f"runs/edsr_div2k_x{scale}"     # the vanilla x3 / x4 run
    assert (eco.train.optimizer, eco.train.lr_schedule, eco.data.patch) == (
        "lamb", "cosine", 48 * scale)


def test_mge_sr_config_trains_on_negative_ssim():
    assert config("sr_urban100").task.loss == "neg_ssim"
    assert config("sr_urban100:resnet").task.loss == "neg_ssim"


def test_validation_lists_the_new_choices():
    c = config("sr_urban100")
    c.train.optimizer = "adadelta"
    config_check.validate(c)
    c.task.loss = "ssim"
    with pytest.raises(ConfigError, match="neg_ssim"):
        config_check.validate(c)


# --- warm start across SR scales ---------------------------------------------------------------


def sr_config(scale=2):
    c = tiny_config(**{"task.name": "sr", "task.scale": scale, "task.residual": False,
                       "task.loss": "l1", "model": "edsr", "mode": "single", "data.patch": 24,
                       "train.steps": 2, "log.eval_every": 2, "log.checkpoint_every": 2})
    c.model_kwargs = dict(scale=scale, n_resblocks=1, n_feats=8)
    return c


@pytest.fixture(scope="module")
def x2_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("x2") / "run"
    train.train_and_evaluate(sr_config(2), workdir)
    state, step = warmstart.load_source(workdir, "best")
    return workdir, flax.traverse_util.flatten_dict(state.params, sep="/"), step


def fresh_params(scale):
    model = create_model("edsr", scale=scale, n_resblocks=1, n_feats=8)
    return jax.jit(model.init)(jax.random.key(7), jnp.zeros((1, 8, 8, 3)))["params"]


@pytest.mark.parametrize("scale", [3, 4])
def test_warm_start_copies_matching_tensors_bitwise_and_reports_the_rest(x2_run, scale):
    workdir, source, step = x2_run
    fresh = fresh_params(scale)
    params, report = warmstart.load_matching(fresh, workdir, "best")
    flat, before = (flax.traverse_util.flatten_dict(t, sep="/") for t in (params, fresh))
    assert report.step == step == 2 and set(report.copied) | {p for p, *_ in report.skipped} == set(
        flat)
    for path in report.copied:
        np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(source[path]))
    for path, shape, theirs in report.skipped:  # kept their fresh values
        np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(before[path]))
        assert path.startswith("upsampler/") and shape == flat[path].shape
    if scale == 3:  # one x3 conv (8 -> 72 channels) where x2 has 8 -> 32
        assert dict((p, (s, t)) for p, s, t in report.skipped) == {
            "upsampler/Conv_0/kernel": ((3, 3, 8, 72), (3, 3, 8, 32)),
            "upsampler/Conv_0/bias": ((72,), (32,))}
    else:  # x4's first stage is x2's; its second is new
        assert "upsampler/Conv_0/kernel" in report.copied
        assert dict((p, (s, t)) for p, s, t in report.skipped) == {
            "upsampler/Conv_1/kernel": ((3, 3, 8, 32), None),
            "upsampler/Conv_1/bias": ((32,), None)}
    assert "head/kernel" in report.copied and "tail/kernel" in report.copied
    text = str(report)
    assert f"copied {len(report.copied)} of {len(flat)} tensors" in text
    assert all(p in text for p, *_ in report.skipped)


@flax.struct.dataclass
class StateLike:
    params: Any
    model_state: Any


def test_warm_start_copies_matching_tensors_and_prints_its_report(x2_run):
    workdir, source, _ = x2_run
    state = StateLike(params=fresh_params(3), model_state={})
    assert build.experiment(sr_config(3)).warm_start is None  # no init_from: no warm start
    lines = []
    started = warmstart.warm_start(state, WarmStart(str(workdir), "best"), write=lines.append)
    assert len(lines) == 1 and "copied 10 of 12 tensors" in lines[0]
    assert "upsampler/Conv_0/kernel (3, 3, 8, 72) (there (3, 3, 8, 32))" in lines[0]
    np.testing.assert_array_equal(started.params["head"]["kernel"], source["head/kernel"])


def test_warm_start_errors_name_the_field(x2_run, tmp_path):
    workdir, _, _ = x2_run
    with pytest.raises(RunDirError, match="train.init_from"):
        warmstart.load_matching(fresh_params(3), tmp_path / "missing")
    with pytest.raises(ConfigError, match="shares no tensor"):
        warmstart.load_matching({"other": {"kernel": jnp.zeros((2, 2))}}, workdir)
    with pytest.raises(ConfigError, match="init_checkpoint"):
        warmstart.load_matching(fresh_params(3), workdir, "first")
