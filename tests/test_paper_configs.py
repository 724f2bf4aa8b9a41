"""The paper configs as a user runs them: the official schedules in every mode, any device
count, the official code's choices as a variant, and the README's command to the end."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import build, config_check, multiscale
from msjax.configs import (deblur_celeba, deblur_cifar10, deblur_stl10, denoise_celeba,
                           denoise_cifar10, inpaint_celeba, inpaint_cifar10, sr_urban100)

REPO = Path(__file__).resolve().parents[1]
PAPER = {"deblur_stl10": deblur_stl10, "deblur_cifar10": deblur_cifar10,
         "deblur_celeba": deblur_celeba, "denoise_cifar10": denoise_cifar10,
         "denoise_celeba": denoise_celeba, "inpaint_cifar10": inpaint_cifar10,
         "inpaint_celeba": inpaint_celeba, "sr_urban100": sr_urban100}
OFFICIAL_STAGES = (2000, 1000, 500, 250)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_paper_config_runs_the_official_schedule_in_every_mode(name):
    for mode in multiscale.MODES:
        c = PAPER[name].get_config()
        c.mode = mode
        config_check.validate(c)
        stages = build.stages(c)
        if mode == "fullmultiscale":
            assert tuple(s.steps for s in stages) == OFFICIAL_STAGES
            # Coarse to fine: finest levels 3, 2, 1, 0 with base batch B * 2^(3 - j).
            assert [s.plan.finest_level for s in stages] == [3, 2, 1, 0]
            assert stages[0].plan.batch_sizes == (8 * c.batch_size,)
        else:
            assert [s.steps for s in stages] == [8000]


def test_an_explicit_step_budget_wins_and_keeps_the_stage_proportions():
    from msjax.cli import budget_over_stages

    c = deblur_stl10.get_config()
    c.mode, c.train.steps = "fullmultiscale", 150
    budget_over_stages(c, {"train.steps": 150, "mode": "fullmultiscale"})
    assert tuple(s.steps for s in build.stages(c)) == (80, 40, 20, 10)
    c = deblur_stl10.get_config()
    budget_over_stages(c, {})  # no override: the config's stages stand
    c.mode = "fullmultiscale"
    assert tuple(s.steps for s in build.stages(c)) == OFFICIAL_STAGES


def test_the_paper_configs_build_on_1_2_4_and_8_devices():
    """Term batches that do not divide by the device count are split over fewer devices: every
    schedule builds and validates, and the banner says how each term is laid out."""
    code = textwrap.dedent("""
        import sys
        from msjax import build
        from msjax.configs import deblur_stl10, sr_urban100, inpaint_celeba
        for module in (deblur_stl10, sr_urban100, inpaint_celeba):
            for mode in ("single", "multiscale", "fullmultiscale"):
                c = module.get_config()
                c.mode, c.runtime.cpu_convolutions = mode, "eigen"
                exp = build.experiment(c)
                assert exp.mesh.size == int(sys.argv[1]), exp.mesh.size
                print("\\n".join(build.schedule_table(exp)))
    """)
    for devices in (1, 2, 4, 8):
        env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", code, str(devices)], cwd=REPO, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        # sr_urban100's multiscale finest term of 2 cannot split over 4 or 8 devices.
        assert ("2/2dev" in out.stdout) == (devices >= 4), out.stdout


def test_the_official_variant_restores_the_official_codes_choices():
    c = deblur_stl10.get_config("official")
    assert (c.mge.restriction, c.mge.finest_batch, c.mge.batch_growth) == ("nearest", 16, 1)
    assert (c.data.resize_to, c.data.resize_method, c.data.patch) == (128, "nearest", 128)
    assert c.data.normalize and c.data.mean == (0.4467, 0.4398, 0.4066)
    assert inpaint_celeba.get_config("official").mge.shared_batch
    assert denoise_cifar10.get_config("official").data.resize_method == "bilinear"
    c.mode = "multiscale"
    assert build.stages(c)[0].plan.batch_sizes == (16, 16, 16, 16)
    with pytest.raises(ValueError, match="unknown config variant"):
        deblur_stl10.get_config("offical")


def test_full_multiscale_takes_its_own_schedule_and_the_official_variant_the_one_cosine():
    from msjax import optim

    c = deblur_stl10.get_config()
    steps = sum(OFFICIAL_STAGES)
    for mode, variant, at_stage_2 in (("fullmultiscale", "", c.train.lr),
                                      ("single", "", None), ("fullmultiscale", "official", None)):
        c = deblur_stl10.get_config(variant)
        c.mode = mode
        rate = optim.learning_rate(build.optimizer_settings(c), steps, (2000, 3000, 3500, 3750))
        cosine = optim.learning_rate(build.optimizer_settings(c), steps)
        if at_stage_2 is None:  # the official one cosine over the run
            assert float(rate(3100)) == float(cosine(3100)) < 0.25 * c.train.lr
        else:  # full rate until the last fifth (step 3000), then a decay to lr_end
            assert float(rate(2999)) == pytest.approx(at_stage_2)
            assert float(rate(3100)) > 0.9 * c.train.lr
            assert float(rate(steps)) == pytest.approx(c.train.lr_end, rel=1e-3)


def test_normalised_training_corrupts_and_predicts_in_normalised_units():
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    plain = build.make_task(deblur_stl10.get_config())
    c = deblur_stl10.get_config()
    c.data.update(dict(normalize=True, mean=mean, std=std))
    normed = build.make_task(c)
    x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 3), np.float32))
    key = jax.random.PRNGKey(3)
    y_plain, t = plain.corrupt(x, key, 0)
    y_norm, t2 = normed.corrupt(x, key, 0)
    np.testing.assert_array_equal(t, t2)
    # The same noise draw z: y = (1-t) A x + t z in [0, 1] units; in normalised units
    # y_n = (1-t) A x_n + t z, which reads back as (1-t) A x + t (mean + std z).
    tt = t[:, None, None, None]
    noise_plain = y_plain - (1 - tt) * _blurred(plain, x)
    noise_norm = y_norm - (1 - tt) * _blurred(plain, x)
    np.testing.assert_allclose(noise_norm, tt * jnp.asarray(mean) + noise_plain * jnp.asarray(std),
                               rtol=2e-4, atol=2e-5)
    # The model sees (y - mean) / std and its output is read back in [0, 1] units.
    seen = []

    def apply_fn(variables, inp, t, **kw):
        seen.append(inp)
        return jnp.zeros_like(inp)

    out, _ = normed.predict(apply_fn, {}, y_norm, t)
    np.testing.assert_allclose(seen[0], (y_norm - jnp.asarray(mean)) / jnp.asarray(std),
                               rtol=1e-6)
    np.testing.assert_allclose(out, jnp.broadcast_to(jnp.asarray(mean), out.shape), rtol=1e-6)
    # The loss is the squared difference of normalised images.
    target = jnp.full_like(out, 0.5)
    np.testing.assert_allclose(normed.term_loss(out, target),
                               jnp.mean(((out - target) / jnp.asarray(std)) ** 2), rtol=1e-6)


def _blurred(task, x):
    from msjax import operators

    return operators.blur(x, (3.0, 3.0))


def test_the_readme_command_runs_to_the_end_and_finds_its_default_workdir(tmp_path):
    """``python train.py --config configs/deblur_stl10.py`` with STL-10 from TFDS's mock data,
    the step budget cut down, no --workdir: the run lands in runs/deblur_stl10."""
    script = textwrap.dedent(f"""
        import sys
        import tensorflow_datasets as tfds
        from msjax import cli
        with tfds.testing.mock_data(num_examples=8):
            cli.train(["train.py", "--config", {str(REPO / "configs" / "deblur_stl10.py")!r},
                       "--config.train.steps=2", "--config.log.eval_every=2",
                       "--config.data.valid_images=2", "--config.mge.levels=1",
                       "--config.mge.finest_batch=2", "--config.data.patch=32",
                       "--config.runtime.cpu_convolutions=eigen"])
    """)
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu", MSJAX_HUGE_PAGES="0",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    workdir = tmp_path / "runs" / "deblur_stl10"
    assert (workdir / "config.json").exists() and (workdir / "valid.csv").exists()
    assert "workdir: runs/deblur_stl10" in out.stdout
    assert f"python eval.py --workdir {Path('runs') / 'deblur_stl10'}" in out.stdout
    assert "schedule (mode multiscale):" in out.stdout
