"""XLA:CPU compile options, passed per compile (``.compile(options)``) rather than through the
process-wide XLA_FLAGS, so a library caller gets the same programs as ``train.py``.

Three choices matter on CPU (bench/conv_grads.py and bench/step_time.py measure them):

- Convolution kernels: XLA:CPU hands convolutions to YNNPACK by default, whose kernel-gradient
  convolution is several times slower than its forward; leaving convolutions out of
  ``xla_cpu_experimental_ynn_fusion_type`` gives them to XLA's own Eigen kernels. ``onednn``
  (``backend/convolutions.py``) replaces the models' convolutions at trace time and leaves the
  rest on Eigen.
- Reduction kernels: XLA's own reductions over large tensors that keep the channel axis (every
  convolution's bias gradient) become strided reduce-windows, 20-40x slower than YNNPACK's
  (Intel Xeon, AVX-512), so reductions stay with YNNPACK by default (``xla``: XLA's fused loops, better where reductions
  are tiny and fuse with their neighbours).
- Cheap compiles (``runtime.fast_compile``) for programs that run a few times, where compile
  time dominates.

Per-compile options take explicit enum lists (every fusion type to keep), not the ``+``/``-``
edits the flag's help text describes.
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
# "auto" measures the others on each compiled step (backend/cpu.py); "onednn" runs the models'
# convolutions on oneDNN and leaves the rest to Eigen.
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


def supported(options: dict, *, warn: bool = True) -> dict:
    """``options`` less those this XLA does not know, each logged once: as a warning where the
    option decides which kernels run (``warn``), else at info level."""
    kept = {}
    for k, v in options.items():
        if _known(k, v):
            kept[k] = v
        elif k not in _warned:
            _warned.add(k)
            (log.warning if warn else log.info)(
                "XLA option %s=%r is unknown to jax %s; not used", k, v, jax.__version__)
    return kept


def cheap_compile() -> dict:
    """CHEAP_COMPILE as far as this XLA knows it (CPU only). An option a newer XLA dropped only
    makes some compiles slower, nothing a user can act on, so it is not a warning."""
    return supported(CHEAP_COMPILE, warn=False)


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


def options(cpu_convolutions: str = "eigen", cpu_reductions: str = "ynnpack",
            fast_compile: bool = False) -> dict | None:
    """The compile options of one kernel choice (``onednn`` compiles like ``eigen``: what oneDNN
    does not take stays with XLA's own kernels), None when they are XLA's defaults."""
    kind = "eigen" if cpu_convolutions == "onednn" else cpu_convolutions
    chosen = supported(ynn_fusion_types(kind, cpu_reductions))
    return {**chosen, **(cheap_compile() if fast_compile else {})} or None
