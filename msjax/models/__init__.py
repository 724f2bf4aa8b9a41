"""Flax model families, picked by name.

Every model is a linen Module called as ``model(x, t=None, train=False)`` on NHWC float images and
returns NHWC images: the same size for restoration models, ``scale`` times larger for SR models
that upsample inside (``model.scale``). ``t`` is an optional per-sample float of shape [N] for
time-conditioned models (ignored by those without conditioning). Compute runs in ``dtype``;
parameters are float32. Dropout draws from the ``'dropout'`` rng; BatchNorm keeps ``batch_stats``.
"""

from __future__ import annotations

import importlib

import flax.linen as nn

# name -> (module, class). Imported lazily so a family's dependencies load only when used.
_FAMILIES = {
    "unet": ("msjax.models.unet", "UNet"),
    "resnet": ("msjax.models.resnet", "ResNet"),
    "srnet": ("msjax.models.srnet", "SRNet"),
    "residual_cnn": ("msjax.models.small", "ResidualCNN"),
    "edsr": ("msjax.models.edsr", "EDSR"),
    "rcan": ("msjax.models.rcan", "RCAN"),
    "msrn": ("msjax.models.msrn", "MSRN"),
    "multiblock": ("msjax.models.multiblock", "MultiblockChain"),
    "pyramidal": ("msjax.models.pyramidal", "PyramidalAutoencoder"),
}

MODEL_NAMES = tuple(sorted(_FAMILIES))


def model_class(name: str) -> type[nn.Module]:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    module, cls = _FAMILIES[name]
    return getattr(importlib.import_module(module), cls)


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds the model family ``name`` with its keyword options (e.g. ``dtype``, ``features``)."""
    return model_class(name)(**kwargs)


def size_multiple(name: str, **kwargs) -> int:
    """What every input side must divide by for this model (1 if any size works)."""
    return int(getattr(create_model(name, **kwargs), "size_multiple", 1))
