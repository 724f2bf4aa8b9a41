"""Training methods that wrap the loop, picked by name like the models: ECO noise-free SR
training, Multiblock phased training.

A method registers its ``run(experiment, workdir)`` with the settings class of its config section
(``settings=``), and optionally ``check(settings, experiment)`` (refusals before any data is
read) and ``phases(settings, optimizer) -> [phase]`` (a method that runs phases: ``build``
makes one Experiment per phase from ``phase.overrides``). It receives the built Experiment, its
typed settings in ``experiment.method_settings``, and plugs into the loop through
``train.train_and_evaluate``'s hooks, input transform and training source. ``train.run`` picks
the plain loop or the method's run.
"""

from __future__ import annotations

from msjax.registry import METHODS

__all__ = ["METHODS"]
