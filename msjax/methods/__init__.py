"""Training methods that wrap the loop: ECO noise-free SR training, Multiblock phased training.

``run(config, workdir)`` is what train.py calls: the plain loop, the loop with a method's hooks
(``init_fn`` / ``batch_transform`` of ``train.train_and_evaluate``), or a method's own driver.
"""

from __future__ import annotations

import importlib

from msjax import train

METHODS = ("", "eco", "multiblock")


def run(config, workdir) -> dict:
    if config.method not in METHODS:
        from msjax.config_check import ConfigError

        raise ConfigError(f"method={config.method!r} is unknown; choose one of "
                          f"{', '.join(repr(m) for m in METHODS)}")
    if not config.method:
        return train.train_and_evaluate(config, workdir)
    return importlib.import_module(f"msjax.methods.{config.method}").run(config, workdir)
