"""The shipped experiment configs (``configs/`` links here), and ``variants`` for a config whose
argument picks one of a few named variants (``configs/edsr_div2k.py:x3``)."""

from __future__ import annotations

import functools
from pathlib import Path


def variants(*names: str):
    """Decorates ``get_config(variant)`` of a config file whose variants differ by one choice.

    No argument is the first variant; an unknown one is one ConfigError naming the choices. The
    train CLI names the run directory after the variant even when none is given
    (``configs/edsr_div2k.py`` -> ``runs/edsr_div2k_x2``, as ``:x2``), so that one variant can
    name another's run (x3 starts from the x2 run's weights)."""
    def decorate(get_config):
        @functools.wraps(get_config)
        def checked(variant: str = ""):
            variant = variant or names[0]
            if variant not in names:
                from msjax.errors import ConfigError

                file = Path(get_config.__code__.co_filename).name
                raise ConfigError(f"configs/{file}:{variant} names no variant; choose one of "
                                  f"{', '.join(f':{n}' for n in names)}")
            return get_config(variant)
        checked.variants = names
        return checked
    return decorate


def default_variant(get_config) -> str:
    """The variant ``get_config()`` builds, for a config made with ``variants``; else ''."""
    return getattr(get_config, "variants", ("",))[0]
