"""XLA compile options msjax passes to every program it compiles (``.compile(options)`` /
``jax.jit(..., compiler_options=...)``), per run rather than through process-wide XLA_FLAGS, so a
library caller gets the same programs as ``train.py``.

On CPU three choices matter (measured in bench/conv_grads.py and bench/step_time.py):

- ``runtime.cpu_convolutions``: jax 0.10-0.12's XLA:CPU hands convolutions to YNNPACK by default,
  whose kernel-gradient convolution runs 3-4x slower than the forward; XLA's own Eigen
  convolutions (left out of ``xla_cpu_experimental_ynn_fusion_type``) run a 3x3 layer's forward +
  both gradients 1.1-3x faster on the layers that dominate a step (8x8 to 64x64, 3 to 512
  channels, batch x pixels >= 4096), and up to 2x slower on tiny ones (under 2 ms).
  ``eigen`` or ``ynnpack``; ``onednn`` (msjax/kernels) replaces the models' convolutions with
  oneDNN's at trace time and leaves the rest on Eigen; ``auto`` (default) is ``onednn`` where it
  can run, else ``eigen``.
- ``runtime.cpu_reductions``: XLA's own reductions over large tensors that keep the channel axis
  (every convolution's bias gradient) run 20-40x slower than YNNPACK's (a 16x64x64x128 bias
  gradient: 31 ms against 0.8 ms; XLA rewrites it into a strided reduce-window), which cost the
  ResNet b16 step an eighth of its time. ``ynnpack`` (default, as in XLA's default) or ``xla``
  (XLA's fused loops: faster on small steps whose reductions are small and fuse with their
  neighbours, e.g. SRNet at batch 4).
- ``runtime.fast_compile``: cheap optimisation for programs that run a few times, where compile
  time dominates (a pyramidal44 MGE step compiled 4x faster and ran 1.7x slower).

On GPU / TPU no option is passed.
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

log = logging.getLogger(__name__)

CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                 "xla_cpu_use_fusion_emitters": False}
# The YNNPACK fusion kinds XLA:CPU may form (a comma-separated list of enum names; options
# passed per compile take no +/- edits of the default). XLA's default (no option) hands both
# convolutions and reductions to YNNPACK; what is left out goes to XLA's own (Eigen) kernels.
YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
YNN_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
YNN_REDUCTIONS = "LIBRARY_FUSION_TYPE_REDUCE"
# "onednn" runs the model's convolutions on oneDNN (msjax/kernels; "auto" where it can); what it
# leaves to XLA gets Eigen's kernels.
CPU_CONVOLUTIONS = ("auto", "onednn", "eigen", "ynnpack")
CPU_REDUCTIONS = ("ynnpack", "xla")
_warned: set[str] = set()


@functools.cache
def _known(name: str, value) -> bool:
    """Whether this jax's XLA accepts the option with this value: options and their enum values
    come and go between versions (jax 0.12 has no xla_cpu_use_fusion_emitters) and an unknown
    one fails the compile."""
    try:
        jax.jit(lambda x: x).lower(np.float32(0)).compile({name: value})
        return True
    except Exception as e:  # JaxRuntimeError: INVALID_ARGUMENT: No such compile option / ...
        if "No such compile option" in str(e) or "not a valid enum value" in str(e):
            return False
        raise


def supported(options: dict) -> dict:
    """``options`` less those this XLA does not know (logged once each)."""
    kept = {}
    for k, v in options.items():
        if _known(k, v):
            kept[k] = v
        elif k not in _warned:
            _warned.add(k)
            log.warning("XLA option %s=%r is unknown to jax %s; not used", k, v, jax.__version__)
    return kept


def cheap_compile() -> dict:
    """CHEAP_COMPILE as far as this XLA knows it (CPU only)."""
    return supported(CHEAP_COMPILE)


def ynn_fusion_types(cpu_convolutions: str, cpu_reductions: str) -> dict:
    """The YNNPACK fusion option for the two kernel choices; {} when both are XLA's defaults."""
    for name, value, allowed in (("cpu_convolutions", cpu_convolutions, CPU_CONVOLUTIONS),
                                 ("cpu_reductions", cpu_reductions, CPU_REDUCTIONS)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r}; use one of {allowed}")
    if cpu_convolutions == cpu_reductions == "ynnpack":
        return {}
    kinds = [kind for kind, choice in ((YNN_CONVOLUTIONS, cpu_convolutions),
                                       (YNN_REDUCTIONS, cpu_reductions)) if choice == "ynnpack"]
    return {YNN_FUSION_TYPE: ",".join(kinds)}


def cpu_options(*, cpu_convolutions: str = "eigen", cpu_reductions: str = "ynnpack",
                fast_compile: bool = False) -> dict | None:
    """Options for this process's backend: None off CPU, else the kernel and compile-cost
    choices (see the module docstring)."""
    if jax.devices()[0].platform != "cpu":
        return None
    options = ynn_fusion_types(cpu_convolutions, cpu_reductions)
    if fast_compile:
        options.update(CHEAP_COMPILE)
    return supported(options) or None


def for_config(config) -> dict | None:
    """The run's options from ``config.train`` (``cpu_convolutions``, ``cpu_reductions``,
    ``fast_compile``)."""
    return cpu_options(cpu_convolutions=config.runtime.cpu_convolutions,
                       cpu_reductions=config.runtime.cpu_reductions,
                       fast_compile=config.runtime.fast_compile)
