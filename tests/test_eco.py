"""ECO: the schedule, the frozen teacher, the mixed pairs, the official optimizer extras, and short
ECO and vanilla runs on the built-in photos and on images that tell where each crop was cut."""

import csv
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from msjax import build, data, logs, optim, parallel, tasks, train
from msjax.methods import eco
from tests.helpers import optimizer, tiny_config
from tests.test_data_sampling import coordinate_image, read_patch

STEPS = 16


def sr_config(**overrides):
    """A tiny EDSR x2 on the built-in photos, MGE with 2 coarse levels (LR 16 -> 8 -> 4)."""
    c = tiny_config(**{"task.name": "sr", "task.residual": False, "task.loss": "l1",
                       "model": "edsr", "data.patch": 32, "train.steps": STEPS,
                       "log.eval_every": STEPS // 2, "log.every": 4,
                       "log.checkpoint_every": STEPS // 2, **overrides})
    c.model_kwargs = dict(scale=2, n_resblocks=2, n_feats=16)
    return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A short vanilla run: the teacher of the ECO runs and their same-seed vanilla twin."""
    workdir = tmp_path_factory.mktemp("teacher") / "run"
    result = train.run(build.experiment(sr_config()), workdir)
    return workdir, result


@pytest.fixture
def mixed(monkeypatch):
    """What the ECO runs' ``TeacherMix`` takes and gives at step 0 (teacher weight 1)."""
    seen = {}
    call = eco.TeacherMix.__call__

    def record(self, step, batches):
        out = call(self, step, batches)
        if step == 0:  # explicit fetches: the loop forbids implicit transfers
            seen["in"], seen["out"] = jax.device_get(batches), jax.device_get(out)
        return out

    monkeypatch.setattr(eco.TeacherMix, "__call__", record)
    return seen


def coordinate_folder(folder):
    """Training images whose pixel (r, c) of image i is (r, c, i): a crop tells its window."""
    from PIL import Image

    folder.mkdir()
    for i, shape in enumerate(((64, 80), (72, 56), (48, 96))):
        Image.fromarray(coordinate_image(*shape, i)).save(folder / f"im{i}.png")
    return folder


def orient(window, orientation):
    """``window`` under one of read_patch's orientation ids."""
    w = window[::-1] if orientation & 2 else window
    w = w[:, ::-1] if orientation & 1 else w
    return w.transpose(1, 0, 2) if orientation & 4 else w


def _valid_psnr(workdir):
    with open(workdir / "valid.csv", newline="") as f:
        return [float(r["psnr"]) for r in csv.DictReader(f)]


def test_sigmoid_schedule_is_teacher_only_then_mixed_then_real():
    w = eco.teacher_weight
    assert w(0.0) == 1.0 and w(0.2) == 1.0          # teacher pair only until p ~ 0.26
    assert w(0.5) == pytest.approx(0.5)
    assert w(0.3) == pytest.approx(0.957, abs=1e-3) and w(0.4) == pytest.approx(0.777, abs=1e-3)
    assert w(0.8) == 0.0 and w(1.0) == 0.0          # real pair only after p ~ 0.74
    assert w(0.5, shift=1.0) > 0.5 > w(0.5, shift=-1.0)  # a positive shift delays the migration


def test_linear_schedule():
    assert [eco.teacher_weight(p, "linear") for p in (0.0, 0.5, 1.0)] == [1.0, 0.5, 0.0]


def test_pixel_mix_interpolates_and_sample_mix_picks_whole_pairs():
    k = jax.random.split(jax.random.key(0), 4)
    real = (jax.random.uniform(k[0], (8, 4, 4, 3)), jax.random.uniform(k[1], (8, 8, 8, 3)))
    pre = (jax.random.uniform(k[2], (8, 4, 4, 3)), jax.random.uniform(k[3], (8, 8, 8, 3)))
    inp, tgt = eco.mix_pairs(real, pre, 0.25, None, mix="pixel")
    np.testing.assert_allclose(tgt, 0.25 * pre[1] + 0.75 * real[1], atol=1e-6)
    np.testing.assert_allclose(inp, 0.25 * pre[0] + 0.75 * real[0], atol=1e-6)
    inp, tgt = eco.mix_pairs(real, pre, 0.5, jax.random.key(1), mix="sample")
    from_teacher = np.all(np.isclose(tgt, pre[1]), axis=(1, 2, 3))
    from_real = np.all(np.isclose(tgt, real[1]), axis=(1, 2, 3))
    assert np.all(from_teacher ^ from_real) and 0 < from_teacher.sum() < 8
    # The input comes from the same pair as the target.
    np.testing.assert_array_equal(np.all(np.isclose(inp, pre[0]), axis=(1, 2, 3)), from_teacher)


def test_teacher_gets_no_gradient(teacher):
    teacher_dir, _ = teacher
    config = sr_config(**{"method": "eco", "eco.teacher_workdir": str(teacher_dir)})
    state, teacher_task, _ = eco.load_teacher(build.method_settings(config), 2)
    task = build.make_task(config)
    hr = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))

    def student_loss(teacher_params):
        t = state.replace(params=teacher_params)
        pre = eco.teacher_pair(t, task.corrupt(hr, None, 0)[0], teacher_task=teacher_task)
        _, target = eco.mix_pairs((task.corrupt(hr, None, 0)[0], hr), pre, 0.7, None, mix="pixel")
        return jnp.mean(target**2)

    grads = jax.grad(student_loss)(state.params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_eco_and_vanilla_runs_from_the_same_seed_both_train(teacher, tmp_path, mixed):
    teacher_dir, vanilla = teacher
    config = sr_config(**{"method": "eco", "eco.teacher_workdir": str(teacher_dir),
                          "task.loss": "l1_255", "train.grad_clip_value": 0.1})
    before, teacher_task, _ = eco.load_teacher(build.method_settings(config), 2)
    result = train.run(config, tmp_path / "eco")
    after, _, _ = eco.load_teacher(build.method_settings(config), 2)  # the teacher's checkpoint is never written to
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, before.params),
                 jax.tree.map(np.asarray, after.params))
    for workdir, final in ((teacher_dir, vanilla), (tmp_path / "eco", result)):
        with open(workdir / "train.csv", newline="") as f:
            assert all(np.isfinite(float(r["loss"])) for r in csv.DictReader(f))
        first, last = _valid_psnr(workdir)[0], _valid_psnr(workdir)[-1]
        assert last > first, (workdir, first, last)  # still far below bicubic after 16 steps
        assert np.isfinite(final["psnr"])
    print(f"vanilla {vanilla['psnr']:.2f} dB, ECO {result['psnr']:.2f} dB after {STEPS} steps "
          f"(bicubic input {vanilla['input_psnr']:.2f} dB)")
    # On the fly, the first step trains on the teacher's output for each batch's own LR crop.
    task = tasks.make_task(config.task)
    for real, trained in zip(mixed["in"], mixed["out"]):
        assert "teacher_target" not in real and set(trained) == {"input", "target"}
        lr = task.corrupt(jnp.asarray(real["target"]), None, 0)[0]
        lr_pre, sr_pre = eco.teacher_pair(before, lr, teacher_task=teacher_task)
        np.testing.assert_allclose(trained["target"], sr_pre, atol=1e-5)
        np.testing.assert_allclose(trained["input"], np.clip(lr_pre, 0, 1), atol=1e-5)


@pytest.mark.parametrize("on_device", ["true", "false"])
def test_a_cache_of_the_hr_images_gives_teacher_crops_equal_to_the_real_ones(tmp_path, on_device):
    """The cache is index- and size-aligned with the source and cut at the same windows: a cache
    holding the HR images themselves gives every term of every stage its own HR crops."""
    config = sr_config(**{"mode": "fullmultiscale", "data.on_device": on_device})
    exp = build.experiment(config)
    source = data.open_source(build.input_spec(config), "train", scale=2)
    cache = eco.TeacherCache(tmp_path, len(source), paired=False)
    for i in range(len(source)):
        logs.save_png(cache.path(i, "sr_pre"), source[i])
    aligned = eco.teacher_source(build.input_spec(config), cache, scale=2)
    seed_key = parallel.put_replicated(jax.random.PRNGKey(config.seed), exp.mesh)
    with data.TrainingInput(exp.input, aligned, exp.mesh, seed=exp.seed, task=exp.task,
                            stages=exp.stages, start=0, stop=exp.total_steps) as inp:
        assert inp.on_device == (on_device == "true")
        for step in (0, STEPS - 1):  # first and last FMS stage: different plans
            stage = exp.stage_at(step)
            batches = (jax.jit(functools.partial(build.device_batches, exp, stage))(
                inp.dataset, seed_key, jnp.int32(step)) if inp.on_device
                else inp.host_batches(step))
            assert len(batches) == len(data.inputs.term_sizes(exp.stages[stage].plan))
            for batch in batches:
                np.testing.assert_array_equal(np.asarray(batch["teacher_target"]),
                                              np.asarray(batch["target"]))


@pytest.mark.parametrize("on_device", ["true", "false"])
def test_a_precomputed_teacher_run_trains_on_the_teachers_output_at_each_crops_window(
        teacher, tmp_path, mixed, on_device):
    teacher_dir, _ = teacher
    folder = coordinate_folder(tmp_path / "images")
    config = sr_config(**{"method": "eco", "eco.teacher_workdir": str(teacher_dir),
                          "eco.precompute": True, "eco.mix": "sample", "train.steps": 4,
                          "log.eval_every": 4, "eco.cache_dir": str(tmp_path / "cache"),
                          "data.source": "folder", "data.train_dir": str(folder),
                          "data.valid_dir": str(folder), "data.on_device": on_device})
    result = train.run(config, tmp_path / "eco")
    assert np.isfinite(result["psnr"])
    files = sorted((tmp_path / "cache").glob("*_sr_pre.png"))
    assert len(files) == 3
    stamp = [f.stat().st_mtime_ns for f in files]
    eco.precompute(build.experiment(config),
                   *eco.load_teacher(build.method_settings(config), 2), tmp_path / "cache")
    assert [f.stat().st_mtime_ns for f in files] == stamp  # reused, not recomputed
    cache = eco.TeacherCache(tmp_path / "cache", 3, paired=False)
    patch = config.data.patch
    for real, trained in zip(mixed["in"], mixed["out"]):
        assert "teacher_target" not in trained
        for target, crop, out in zip(real["target"], real["teacher_target"], trained["target"]):
            image, top, left, orientation = read_patch(target)
            window = cache[image]["teacher_target"][top:top + patch, left:left + patch]
            np.testing.assert_array_equal(np.rint(crop * 255).astype(np.uint8),
                                          orient(window, orientation))
            np.testing.assert_array_equal(out, crop)  # teacher weight 1: the teacher's pair


def test_lamb_matches_optax_lamb_with_bias_correction_and_no_cap():
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.ones(3)}
    ours, theirs = optim.lamb(1e-2, weight_decay=0.01), optax.lamb(1e-2, weight_decay=0.01)
    s1, s2, p1, p2 = ours.init(params), theirs.init(params), params, params
    for i in range(3):
        g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)), params)
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = theirs.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p1, p2)


def test_eco_lamb_first_step_uses_raw_moments_and_caps_the_weight_norm():
    w, g = jnp.full((4,), 10.0), jnp.full((4,), 2.0)  # |w| = 20, capped at 10
    tx = optim.lamb(0.1, b2=0.99, bias_correction=False, max_weight_norm=10.0)
    update, _ = tx.update({"w": g}, tx.init({"w": w}), {"w": w})
    r = (0.1 * 2.0) / (np.sqrt(0.01 * 4.0) + 1e-6)   # m / (sqrt(v) + eps), no bias correction
    expected = -0.1 * (10.0 / (r * 2.0)) * r           # lr * min(|w|, 10) / |r| * r, |r| = 2r
    np.testing.assert_allclose(update["w"], np.full(4, expected), rtol=1e-5)


def test_a_loss_spike_is_skipped_without_advancing_the_optimizer():
    tx = optim.skip_loss_spikes(optax.adam(0.1), factor=5.0)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    g = {"w": jnp.ones(2)}
    u, state = tx.update(g, state, params, value=1.0)           # first step: accepted
    assert float(jnp.abs(u["w"]).sum()) > 0
    inner = state.inner
    u, state = tx.update(g, state, params, value=5.5)           # > 5 x 1.0: skipped
    assert float(jnp.abs(u["w"]).sum()) == 0 and int(state.skipped) == 1
    jax.tree.map(np.testing.assert_array_equal, state.inner, inner)
    u, state = tx.update(g, state, params, value=4.0)           # accepted again
    assert float(jnp.abs(u["w"]).sum()) > 0 and float(state.last_loss) == 4.0


def test_official_extras_build_from_the_eco_config():
    from msjax.configs import eco_edsr

    c = eco_edsr.get_config("x2")
    tx = optimizer(build.optimizer_settings(c), 10)
    state = tx.init({"w": jnp.ones(3)})
    assert isinstance(state, optim.SkipSpikesState) and c.task.loss == "l1_255"
    with pytest.raises(Exception, match="teacher_workdir"):
        build.experiment(c)
