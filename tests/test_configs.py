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
SCALE_FAMILIES = ["edsr_div2k", "rcan_div2k", "eco_edsr", "msrn_div2k"]


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
    assert get_config.variants == ("x2", "x3", "x4")
    assert get_config().to_dict() == get_config("x2").to_dict()
    for variant in get_config.variants:
        c = get_config(variant)
        scale = int(variant[1:])
        assert c.task.scale == c.model_kwargs["scale"] == c.eval.crop_border == scale
        assert (c.data.name, c.data.patch) == (f"div2k/bicubic_x{scale}", 48 * scale)


def x2_default_workdir(name):
    """Where ``python train.py --config configs/<name>.py`` (no argument) writes its run."""
    config_file = cli.resolve_config_file(str(REPO / "configs" / f"{name}.py"))
    return rundir.default_workdir(config_file)


@pytest.mark.parametrize("name", ["edsr_div2k", "rcan_div2k", "eco_edsr"])
@pytest.mark.parametrize("variant", ["x3", "x4"])
def test_x3_and_x4_start_from_the_x2_variants_default_workdir(name, variant):
    assert x2_default_workdir(name) == rundir.RUNS / f"{name}_x2"
    assert Path(module(name).get_config(variant).train.init_from) == x2_default_workdir(name)
    config_file = cli.resolve_config_file(str(REPO / "configs" / f"{name}.py:{variant}"))
    assert rundir.default_workdir(config_file) == rundir.RUNS / f"{name}_{variant}"


@pytest.mark.parametrize("variant", ["x3", "x4"])
def test_eco_x3_and_x4_learn_from_the_vanilla_run_of_their_scale(variant):
    teacher = module("eco_edsr").get_config(variant).eco.teacher_workdir
    config_file = cli.resolve_config_file(str(REPO / "configs" / f"edsr_div2k.py:{variant}"))
    assert Path(teacher) == rundir.default_workdir(config_file)


def test_configs_without_variants_keep_their_workdir_name():
    config_file = cli.resolve_config_file(str(REPO / "configs" / "sr_urban100.py"))
    assert rundir.default_workdir(config_file) == rundir.RUNS / "sr_urban100"


def test_an_unknown_variant_is_one_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"edsr_div2k.py:x5 names no variant; choose one of "
                                          r":x2, :x3, :x4$"):
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
