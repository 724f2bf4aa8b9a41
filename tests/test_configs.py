"""Every shipped experiment config, in each of its variants, is valid and documents its run
command; the variants of a family point at each other's default run directories."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msjax import build, cli, config_check, rundir
from msjax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if not p.stem.startswith("_") and p.stem != "base")


def module(name):
    return importlib.import_module(f"configs.{name}")


# (config, variant): every variant of a config made with msjax.configs.variants, '' otherwise.
VARIANTS = [(name, variant) for name in CONFIGS
            for variant in getattr(module(name).get_config, "variants", ("",))]
SCALE_FAMILIES = ["edsr_div2k", "rcan_div2k", "eco_edsr", "eco_rcan", "msrn_div2k"]


@pytest.mark.parametrize("name, variant", VARIANTS)
@pytest.mark.parametrize("mode", ["single", "multiscale", "fullmultiscale"])
def test_config_is_valid_in_every_mode(name, variant, mode):
    get_config = module(name).get_config
    config = get_config(variant) if variant else get_config()
    config.mode = mode
    config_check.validate(config)
    config_check.validate_stages(config, build.stages(config), build.make_task(config))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_holds_its_run_command(name):
    doc = module(name).__doc__
    assert f"configs/{name}.py" in doc
    for variant in getattr(module(name).get_config, "variants", ())[1:]:
        assert f"configs/{name}.py:{variant}" in doc


@pytest.mark.parametrize("name", SCALE_FAMILIES)
def test_scale_variants_set_every_scale_dependent_field(name):
    get_config = module(name).get_config
    assert get_config.variants[:3] == ("x2", "x3", "x4")
    assert get_config().to_dict() == get_config("x2").to_dict()
    for variant in get_config.variants:
        c = get_config(variant)
        scale = int(variant[-1])
        assert c.task.scale == c.model_kwargs["scale"] == c.eval.crop_border == scale
        assert (c.data.name, c.data.patch) == (f"div2k/bicubic_x{scale}", 48 * scale)


def param_count(c):
    """The parameters of a config's model, from shapes alone (cheap for 43M)."""
    import jax
    import jax.numpy as jnp

    from msjax.models import create_model

    model = create_model(c.model, **dict(c.model_kwargs))
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 12, 16, 3)))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


# config argument -> the network's parameters: EDSR-baseline 1.37M / 1.55M / 1.52M, full EDSR
# 40.7M / 43.7M / 43.1M, RCAN 15.44M / 15.63M / 15.59M, MSRN (RGB) 5.93M / 6.11M / 6.08M at
# x2 / x3 / x4, as the references count them.
PARAMETERS = {
    "edsr_div2k:x2": 1_369_859, "edsr_div2k:x3": 1_554_499, "edsr_div2k:x4": 1_517_571,
    "edsr_div2k:full_x2": 40_729_603, "edsr_div2k:full_x3": 43_680_003,
    "edsr_div2k:full_x4": 43_089_923,
    "eco_edsr:x3": 1_554_499, "eco_edsr:full_x2": 40_729_603, "eco_edsr:full_x4": 43_089_923,
    "rcan_div2k:x3": 15_629_283, "eco_rcan:x2": 15_444_643, "eco_rcan:x3": 15_629_283,
    "eco_rcan:x4": 15_592_355,
    "msrn_div2k:x2": 5_930_307, "msrn_div2k:x3": 6_114_947, "msrn_div2k:x4": 6_078_019,
}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_each_config_argument_builds_its_network(name):
    config, _, variant = name.partition(":")
    assert param_count(module(config).get_config(variant)) == PARAMETERS[name]


def x2_default_workdir(name):
    """Where ``python train.py --config configs/<name>.py`` (no argument) writes its run."""
    config_file = cli.resolve_config_file(str(REPO / "configs" / f"{name}.py"))
    return rundir.default_workdir(config_file)


@pytest.mark.parametrize("name", ["edsr_div2k", "rcan_div2k", "eco_edsr", "eco_rcan"])
@pytest.mark.parametrize("variant", ["x3", "x4"])
def test_x3_and_x4_start_from_the_x2_variants_default_workdir(name, variant):
    assert x2_default_workdir(name) == rundir.RUNS / f"{name}_x2"
    assert Path(module(name).get_config(variant).train.init_from) == x2_default_workdir(name)
    config_file = cli.resolve_config_file(str(REPO / "configs" / f"{name}.py:{variant}"))
    assert rundir.default_workdir(config_file) == rundir.RUNS / f"{name}_{variant}"


def variant_workdir(name, variant):
    """Where ``python train.py --config configs/<name>.py:<variant>`` writes its run."""
    return rundir.default_workdir(
        cli.resolve_config_file(str(REPO / "configs" / f"{name}.py:{variant}")))


@pytest.mark.parametrize("name", ["edsr_div2k", "eco_edsr"])
@pytest.mark.parametrize("variant", ["full_x3", "full_x4"])
def test_full_edsr_x3_and_x4_start_from_the_full_x2_run(name, variant):
    c = module(name).get_config(variant)
    assert Path(c.train.init_from) == variant_workdir(name, "full_x2")
    assert c.model_kwargs.to_dict() == dict(scale=int(variant[-1]), n_resblocks=32, n_feats=256,
                                            res_scale=0.1)


@pytest.mark.parametrize("eco, vanilla, variant", [
    ("eco_edsr", "edsr_div2k", "x3"), ("eco_edsr", "edsr_div2k", "x4"),
    ("eco_edsr", "edsr_div2k", "full_x3"), ("eco_edsr", "edsr_div2k", "full_x4"),
    ("eco_rcan", "rcan_div2k", "x3"), ("eco_rcan", "rcan_div2k", "x4")])
def test_eco_x3_and_x4_learn_from_the_vanilla_run_of_their_scale_and_network(eco, vanilla,
                                                                             variant):
    c = module(eco).get_config(variant)
    assert Path(c.eco.teacher_workdir) == variant_workdir(vanilla, variant)
    teacher = module(vanilla).get_config(variant)
    assert (c.model, c.model_kwargs.to_dict()) == (teacher.model, teacher.model_kwargs.to_dict())
    assert (c.train.optimizer, c.batch_size, c.task.loss) == ("lamb", 128, "l1_255")


def test_configs_without_variants_keep_their_workdir_name():
    config_file = cli.resolve_config_file(str(REPO / "configs" / "sr_urban100.py"))
    assert rundir.default_workdir(config_file) == rundir.RUNS / "sr_urban100"


def test_an_unknown_variant_is_one_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"edsr_div2k.py:x5 names no variant; choose one of "
                                          r":x2, :x3, :x4, :full_x2, :full_x3, :full_x4$"):
        module("edsr_div2k").get_config("x5")
    env = dict(os.environ, PYTHONPATH=str(REPO), MSJAX_HUGE_PAGES="0", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", "rcan_div2k:x5"],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: configs/rcan_div2k.py:x5 names no variant; choose one of :x2, :x3, :x4"]


def test_the_default_workdir_names_a_model_mode_or_seed_given_on_the_command_line():
    """Two experiments of one config never share a run directory; the plain command's stays
    the config's name, so runs started before keep resuming."""
    config_file = cli.resolve_config_file(str(REPO / "configs" / "deblur_stl10.py"))

    def workdir(overridden):
        c = module("deblur_stl10").get_config()
        for key, value in overridden.items():
            c[key] = value
        return cli.default_workdir(config_file, c, overridden)

    assert workdir({}) == rundir.RUNS / "deblur_stl10"
    assert workdir({"model": "unet"}) == rundir.RUNS / "deblur_stl10_unet"
    assert workdir({"model": "resnet"}) == rundir.RUNS / "deblur_stl10_resnet"
    assert workdir({"model": "unet", "mode": "fullmultiscale", "seed": 7}) \
        == rundir.RUNS / "deblur_stl10_unet_fullmultiscale_seed7"
    assert workdir({"seed": 42}) == rundir.RUNS / "deblur_stl10"  # the config's own seed
    # A config argument comes first, and the seed compares with that variant's.
    config_file = cli.resolve_config_file(str(REPO / "configs" / "edsr_folder_x2.py"))
    c = module("edsr_folder_x2").get_config()
    c.model, c.seed = "rcan", 3
    assert cli.default_workdir(config_file, c, {"model": "rcan", "seed": 3}) \
        == rundir.RUNS / "edsr_folder_x2_rcan_seed3"
    config_file = cli.resolve_config_file(str(REPO / "configs" / "edsr_div2k.py:x3"))
    c = module("edsr_div2k").get_config("x3")
    c.model = "msrn"
    assert cli.default_workdir(config_file, c, {"model": "msrn"}) \
        == rundir.RUNS / "edsr_div2k_x3_msrn"


def test_augment_takes_hflip_or_a_bool_on_the_command_line():
    """data.augment holds True, False or 'hflip': the command line parses each (and keeps a
    bool a bool, as saved runs hold it); validation refuses any other value in one line."""
    script = ("import sys; from absl import flags; from ml_collections import config_flags; "
              "config_flags.DEFINE_config_file('config'); flags.FLAGS(sys.argv); "
              "print(repr(flags.FLAGS.config.data.augment))")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    for given, parsed in (("hflip", "'hflip'"), ("False", "False"), ("true", "True")):
        out = subprocess.run([sys.executable, "-c", script, "--config",
                              str(REPO / "configs" / "deblur_stl10.py"),
                              f"--config.data.augment={given}"],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
        assert out.stdout.strip() == parsed, out.stderr[-2000:]
    c = module("quickstart").get_config()
    c.data.augment = "vflip"
    with pytest.raises(ConfigError, match=r"^data.augment='vflip' is unknown; choose one of "
                                          r"True, hflip, False \(True: flips"):
        config_check.validate(c)


def test_each_config_augments_as_its_reference_loader_does():
    """The official MGE loaders neither flip nor rotate (the :official variants); the paper
    configs keep all 8 orientations (docs/differences.md says why); the pyramidal reference
    mirrors left-right only."""
    for name in ("deblur_stl10", "deblur_cifar10", "denoise_celeba", "inpaint_cifar10"):
        assert module(name).get_config().data.augment is True
        assert module(name).get_config("official").data.augment is False
    assert module("pyramidal_celeba").get_config().data.augment == "hflip"


def test_the_psf_support_holds_the_blur():
    """psf_support is the window the coarse-grid advice compares against: it holds >99% of the
    PSF, and a window two pixels smaller does not hold all of what it does."""
    import jax.numpy as jnp

    from msjax.operators import gaussian_psf, psf_support

    assert psf_support((3.0, 3.0)) == 19 and psf_support((1.0, 2.5)) == 17
    psf = jnp.fft.fftshift(gaussian_psf(64, 64, (3.0, 3.0)))

    def held(side):
        lo = 32 - side // 2
        return float(psf[lo:lo + side, lo:lo + side].sum())

    assert held(19) > 0.99 > held(13)


def test_deblurring_presets_keep_the_coarse_grid_at_least_the_psf():
    """The quickstart and the paper configs' :two_grids train on 32 (48) then 64 (96) px, one
    single-scale term per stage, the blur fixed in pixels; :official keeps the paper's three
    grids, and a run whose coarsest grid is below the PSF's support starts with one note naming
    the levels that fit. CIFAR-10's 32 px patches have no such grid: :two_grids says so."""
    def shape(c):
        stages = build.stages(c)
        sides = [c.data.patch // 2**s.plan.finest_level for s in stages]
        return sides, [len(s.plan.batch_sizes) for s in stages], [s.steps for s in stages], \
            config_check.coarse_grid_note(rundir.flat(c), stages)

    quick = module("quickstart").get_config()
    assert quick.task.level_blur == "fixed" and quick.mge.operator_per_level
    assert shape(quick) == ([32, 64], [1, 1], [480, 120], "")
    official = module("quickstart").get_config("official")
    sides, terms, _, note = shape(official)
    assert sides == [16, 32, 64] and terms == [1, 2, 3]
    assert "trains on 16 px, smaller than the PSF's 19 px" in note
    assert note.endswith("--config.mge.levels=1 keeps it at 32 px")
    assert build.experiment(official).describe()[-1] == note  # the start banner's last line
    stl = module("deblur_stl10").get_config("two_grids")
    assert shape(stl) == ([48, 96], [1, 1], [6400, 1600], "")
    assert shape(module("deblur_celeba").get_config("two_grids"))[0] == [32, 64]
    paper = module("deblur_stl10").get_config()
    paper.mode = "fullmultiscale"
    assert shape(paper)[3].endswith("--config.mge.levels=2 with 3 fms.stage_steps keeps it "
                                    "at 24 px")
    with pytest.raises(ValueError, match="16 px coarse grid, smaller than the blur's 19 px"):
        module("deblur_cifar10").get_config("two_grids")
    with pytest.raises(ValueError, match="':two_grids'"):
        module("deblur_stl10").get_config("nope")
    denoise = module("denoise_celeba").get_config()
    denoise.mode = "fullmultiscale"
    assert shape(denoise)[3] == ""  # advice for deblurring only
