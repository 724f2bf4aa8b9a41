"""Flax model families, picked by name.

Every model is a linen Module called as ``model(x, t=None, train=False)`` on NHWC float images and
returns NHWC images: the same size for restoration models, ``scale`` times larger for SR models
that upsample inside (``model.scale``). ``t`` is an optional per-sample float of shape [N] for
time-conditioned models (ignored by those without conditioning). Compute runs in ``dtype``;
parameters are float32. Dropout draws from the ``'dropout'`` rng; BatchNorm keeps ``batch_stats``.

A family joins with ``@MODELS.register(name, upsamples=...)`` in its own file in this package
(``upsamples``: its output is ``scale`` times its input; ``minimum``: {option: smallest value},
which ``config_check`` holds ``model_kwargs`` to before anything is built).
"""

from __future__ import annotations

import flax.linen as nn

from msjax.registry import Registry

# Defined before anything imports a family: each family's file imports MODELS from here to
# register itself, and the registry imports this package's files only on its first lookup.
MODELS = Registry("model", package="msjax.models")


def __getattr__(name: str):
    # MODEL_NAMES is read from the registry when first asked for, so importing this package
    # imports no family.
    if name == "MODEL_NAMES":
        return MODELS.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_class(name: str) -> type[nn.Module]:
    return MODELS.get(name)


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds the model family ``name`` with its keyword options (e.g. ``dtype``, ``features``)."""
    return model_class(name)(**kwargs)


def size_multiple(name: str, **kwargs) -> int:
    """What every input side must divide by for this model (1 if any size works)."""
    return int(getattr(create_model(name, **kwargs), "size_multiple", 1))


def check_options(name: str, model_kwargs) -> None:
    """Raises ConfigError for a ``model_kwargs`` option below the smallest value the family's
    registration declares (``minimum``); an option left out takes the family's default."""
    import dataclasses

    from msjax.errors import ConfigError

    cls = MODELS.get(name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for option, smallest in MODELS.info(name).get("minimum", {}).items():
        value = dict(model_kwargs).get(option, defaults.get(option))
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise ConfigError(f"model_kwargs.{option}={value!r} does not fit model={name}: it "
                              f"must be a whole number >= {smallest}; set "
                              f"--config.model_kwargs.{option} to one")
