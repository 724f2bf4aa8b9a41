"""Training methods that wrap the loop, found by name like the model families: ECO noise-free SR
training, Multiblock phased training.

``run(config, workdir)`` is what train.py calls: the plain loop, or a method module's own
``run(experiment, workdir)``, which receives the built experiment (``build.experiment``) and
plugs into the loop through its hooks (``train.train_and_evaluate``'s ``init_fn`` /
``batch_transform``) or drives it phase by phase.
"""

from __future__ import annotations

import importlib

from msjax import build, train
from msjax.errors import ConfigError

# name -> module with run(experiment, workdir) and validate(config); "" is the plain loop.
METHODS = {"": None, "eco": "msjax.methods.eco", "multiblock": "msjax.methods.multiblock"}


def run(config, workdir) -> dict:
    if config.method not in METHODS:
        raise ConfigError(f"method={config.method!r} is unknown; choose one of "
                          f"{', '.join(repr(m) for m in METHODS)}")
    if not config.method:
        return train.train_and_evaluate(config, workdir)
    method = importlib.import_module(METHODS[config.method])
    method.validate(config)
    return method.run(build.experiment(config), workdir)
