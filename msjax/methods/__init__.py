"""Training methods that wrap the loop, picked by name like the models: ECO noise-free SR
training, Multiblock phased training.

A method registers its ``run(experiment, workdir)`` with the settings class of its config section
(``settings=``), and optionally ``check(settings, experiment)`` (refusals before any data is
read) and ``phases(settings, optimizer) -> [phase]`` (a method that runs phases: ``build``
makes one Experiment per phase from ``phase.overrides``). It receives the built Experiment, its
typed settings in ``experiment.method_settings``, and plugs into the loop through
``train.train_and_evaluate``'s hooks, input transform and training source.
"""

from __future__ import annotations

from msjax.registry import Registry

METHODS = Registry("method", modules=("msjax.methods.eco", "msjax.methods.multiblock"))


def run(experiment, workdir) -> dict:
    """``train.py``'s work: the plain loop (``method=''``), or the method's own run."""
    from msjax import train

    if not experiment.method:
        return train.train_and_evaluate(experiment, workdir)
    return METHODS.get(experiment.method)(experiment, workdir)
