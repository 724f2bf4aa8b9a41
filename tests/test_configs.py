"""Every shipped experiment config is valid and documents its run command."""

import importlib
from pathlib import Path

import pytest

from msjax import config_check

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py")
                 if not p.stem.startswith("_") and p.stem != "base")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mode", ["single", "multiscale", "fullmultiscale"])
def test_config_is_valid_in_every_mode(name, mode):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.mode = mode
    config_check.validate(config)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_holds_its_run_command(name):
    module = importlib.import_module(f"configs.{name}")
    assert f"configs/{name}.py" in module.__doc__
