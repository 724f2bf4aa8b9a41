"""What is specific to a platform, behind one seam.

``make_backend(runtime, mesh)`` gives one object the rest of msjax asks, whatever it runs on:

- ``convolution``: the function the models' convolution modules call (the CPU kernel dispatch
  where oneDNN may run; None, the models' default, elsewhere);
- ``compile(fn, args, ...)``: a jitted, lowered and compiled program, with its FLOPs and the
  kernels it runs on; on CPU with ``runtime.cpu_convolutions=auto`` the candidate kernels are
  compiled and timed on the program itself, once per machine and program (``backend/cpu.py``);
- ``jit(fn)``: a jitted function for programs called with changing shapes (evaluation, tiles);
- ``describe()``: the lines a run prints at start (platform, devices, kernels);
- ``sync_each_step``: whether the loop waits for every step (simulated CPU devices can stall in
  collectives otherwise).

Nothing outside this package names oneDNN or XLA:CPU options.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from typing import Any, Callable

import jax

from msjax.backend import compile_cache, machine, measure


@dataclasses.dataclass
class Compiled:
    """A compiled program: call it like the function. ``flops`` is one call's count over all
    devices, ``kernels`` what its convolutions run on ('' off CPU), ``seconds`` the time spent
    compiling (and, under auto, measuring)."""

    executable: Any
    flops: float
    kernels: str = ""
    seconds: float = 0.0
    timings: dict = dataclasses.field(default_factory=dict)

    def __call__(self, *args):
        return self.executable(*args)


def cost_flops(executable) -> float:
    """FLOPs of one call of a compiled program from XLA's cost analysis (one device's share of
    a partitioned program); NaN where the backend reports none."""
    analysis = executable.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returns one dict per device program
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", float("nan")))


class Backend:
    """GPU, TPU and any other XLA platform: XLA's own kernels and default options."""

    convolution = None         # the models keep their default convolution
    sync_each_step = False
    # A compile beside training takes host cores the accelerator's steps do not use.
    compiles_beside_training = True
    unroll_steps = 1           # a k-step program's scan: a loop (1) or inlined (True)

    def __init__(self, runtime, mesh):
        self.runtime, self.mesh = runtime, mesh
        self.platform = mesh.devices.flat[0].platform

    def describe(self) -> list[str]:
        devices = list(self.mesh.devices.flat)
        kind = getattr(devices[0], "device_kind", self.platform)
        hosts = jax.process_count()
        return [f"devices: {len(devices)} x {kind} ({self.platform})"
                + (f" on {hosts} processes" if hosts > 1 else ""), compile_cache.CACHE.describe()]

    def flops(self, executable) -> float:
        return cost_flops(executable) * self.mesh.size


    def compile(self, fn: Callable, args: tuple, *, donate_argnums=(), out_shardings=None,
                name: str = "", recorded: str = "", measure: bool = True) -> Compiled | None:
        """``jax.jit(fn)`` lowered on ``args`` and compiled. ``name`` says what it is (for the
        CPU kernel verdicts); ``recorded`` is the kernel choice a checkpoint holds for it.
        ``measure=False``: None where the choice of kernels would need a measurement (which
        must not run beside training)."""
        del name, recorded, measure
        t0 = time.perf_counter()
        exe = jax.jit(fn, donate_argnums=donate_argnums,
                      out_shardings=out_shardings).lower(*args).compile()
        return Compiled(exe, self.flops(exe), "", time.perf_counter() - t0)

    def jit(self, fn: Callable, **jit_kwargs) -> Callable:
        return jax.jit(fn, **jit_kwargs)

    def init_options(self) -> dict | None:
        """Compile options for programs that run once (parameter initialisation)."""
        return None

    def machine(self) -> str:
        """What a measurement on this backend is a measurement of."""
        return getattr(self.mesh.devices.flat[0], "device_kind", self.platform)

    def steps_per_call(self, one: Compiled, several: Callable[[int], Compiled], args: tuple,
                       *, divides: int) -> tuple[int, float]:
        """``runtime.steps_per_call=auto``: (steps per call, seconds per step) for a stage whose
        one-step program is ``one`` (``several(k)``: its k-step program). The one-step program
        is timed; where a call of it is shorter than ``measure.MIN_CALL_SECONDS``, the k-step
        program that would last that long is timed too, and kept only if its steps are faster
        (several steps in one program can cost more per step than they save in dispatch). Both
        run from a copy of the state in ``args``, as in training; the verdict is remembered per
        machine and program (``measure.Verdicts``), so a rerun chooses alike without timing."""
        key = hashlib.sha256("\0".join([
            self.machine(), str(self.mesh.size), jax.__version__, str(divides),
            one.executable.as_text()]).encode()).hexdigest()[:24]
        seen = STEP_TIMES.get(key)
        if seen is not None:
            k, seconds = seen.split(":")
            return int(k), float(seconds)
        seconds = measure.step_seconds(one, args, 1)
        k = measure.choose_steps_per_call(seconds, divides)
        timings = {"1": seconds}
        if k > 1:
            timings[str(k)] = measure.step_seconds(several(k), args, k)
            if timings[str(k)] < seconds * (1 - measure.STEPS_PER_CALL_MARGIN):
                seconds = timings[str(k)]
            else:
                k = 1
        STEP_TIMES.put(key, f"{k}:{seconds:.6g}", timings)
        return k, seconds


# Measured step times, beside the kernel verdicts.
STEP_TIMES = measure.Verdicts(name="step_times.json")


def make_backend(runtime, mesh) -> Backend:
    """The backend of ``mesh``'s platform for the ``runtime`` config section. Raises
    ``errors.ConfigError`` for a kernel choice this machine cannot run (before any long work)."""
    if mesh.devices.flat[0].platform == "cpu":
        from msjax.backend import cpu

        return cpu.CpuBackend(runtime, mesh)
    return Backend(runtime, mesh)


# Simulated CPU devices when the user sets none. One device: XLA:CPU's and oneDNN's convolution
# kernels each spread over every core, and splitting a batch over simulated devices only adds
# collectives (docs/benchmarks.md, devices). A constant, not the core count, so a run gives the
# same numbers (and resumes exactly) on any machine.
DEFAULT_CPU_DEVICES = 1


def set_cpu_devices(runtime) -> None:
    """runtime.num_devices, else DEFAULT_CPU_DEVICES simulated CPU devices, unless
    JAX_NUM_CPU_DEVICES or XLA_FLAGS' --xla_force_host_platform_device_count already say. Call
    before jax starts its backends."""
    if ("JAX_NUM_CPU_DEVICES" in os.environ
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return
    jax.config.update("jax_num_cpu_devices", runtime.num_devices or DEFAULT_CPU_DEVICES)


@functools.cache
def idle_accelerator_warning() -> str | None:
    """A GPU or TPU that jax does not use, as a warning line with the install command."""
    return machine.idle_accelerator_warning(jax.default_backend())
