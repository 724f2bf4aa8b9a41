"""The ``--config`` file of ``train.py``, checked before the flag parser loads it: a file that is
missing, does not parse, fails to run or defines no ``get_config`` is one ConfigError naming the
file and the fix (the parser itself would print two chained tracebacks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from msjax.errors import ConfigError, MsjaxError


def load_module(path: str):
    """The config file at ``path``, run as a module of its own (not imported by name)."""
    spec = importlib.util.spec_from_file_location("msjax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def packaged_names() -> list[str]:
    import msjax.configs

    folder = Path(msjax.configs.__file__).parent
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def check(name: str) -> None:
    """Raises ConfigError unless ``name`` ('path.py' or 'path.py:argument', already resolved
    from a packaged name) is a config file whose ``get_config`` returns a config."""
    path, _, argument = name.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {name}: no such config file; give a path such as "
                          f"configs/quickstart.py or a packaged experiment's name "
                          f"({', '.join(packaged_names())})")
    try:
        compile(file.read_bytes(), path, "exec")
    except SyntaxError as e:
        raise ConfigError(f"--config {path}: {e.msg} at line {e.lineno}; fix the file") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {path} cannot be read ({e}); fix the file") from None
    try:
        module = load_module(path)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise ConfigError(f"--config {path} defines no get_config(); a config file returns "
                              "its config from get_config() (see configs/quickstart.py)")
        get_config(argument) if argument else get_config()
    except MsjaxError:
        raise
    except Exception as e:  # the file's own code failed: its first line is what to fix
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"--config {name} fails to load ({type(e).__name__}: {first}); fix "
                          "the file") from None
