"""XLA:CPU: which kernels a program's convolutions run on, chosen by measurement.

The fastest CPU convolution kernel differs between machines (oneDNN's wins on AVX-512 Xeons,
XLA's Eigen kernels on AVX2-only EPYCs; docs/benchmarks.md), so ``runtime.cpu_convolutions=auto``
does not guess: the first time a program (a stage's train step) is compiled on a machine, every
candidate kernel is compiled and timed on it, side by side on copies of the real arguments, and
the fastest is kept. The verdict is cached per (CPU model and ISA, jax version, program) in
``$MSJAX_CACHE/cpu_kernels.json`` (default ``~/.cache/msjax``), and the loop records each stage's
choice in its checkpoints, so a run resumed on the same machine reuses it without measuring and
stays bitwise exact. Candidates: on one device onednn (where it builds) and eigen; on several
devices eigen and ynnpack (XLA would all-gather a batch-sharded operand in front of every oneDNN
call, and YNNPACK, which leaves cores idle inside one convolution, only competes when several
devices share the cores).
Programs called with changing shapes (evaluation, tiles) are not measured: they run on the fixed
choice, or on Eigen under auto.
"""

from __future__ import annotations

import functools
import os
import hashlib
import logging
import time
from typing import Callable

import jax

from msjax.backend import Backend, Compiled, compile_cache, convolutions, machine, onednn, xla_cpu
from msjax.backend.measure import Verdicts, cache_dir, time_calls  # noqa: F401 (re-exported)
from msjax.errors import ConfigError

log = logging.getLogger(__name__)

ONE_DEVICE = ("onednn", "eigen")
SEVERAL_DEVICES = ("eigen", "ynnpack")


def _fresh(fn: Callable) -> Callable:
    """A new function object around ``fn``: jax caches traces by function, and each kernel
    choice must be traced on its own."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        return fn(*args, **kwargs)

    return traced


class CpuBackend(Backend):
    # XLA:CPU runs a convolution's kernel gradient some 25x slower inside a while loop than at
    # the top level of a program (Eigen kernels, jax 0.10 and 0.12): a k-step program inlines
    # its k steps instead of looping over them.
    unroll_steps = True

    @property
    def compiles_beside_training(self) -> bool:
        # Even on 2 cores, where a compile thread takes a core from training, the quickstart
        # with a warm cache ends sooner with the next stage compiled ahead (docs/benchmarks.md:
        # 45.5-47.0 s against 47.3-47.9 s, AMD EPYC). Not beside the collectives of simulated
        # devices, which can stall when a few cores are oversubscribed.
        return self.mesh.size == 1

    def __init__(self, runtime, mesh, verdicts: Verdicts | None = None, timer=None):
        super().__init__(runtime, mesh)
        self.sync_each_step = mesh.size > 1
        self.verdicts, self.timer = verdicts or Verdicts(), timer or time_calls
        self.choice = runtime.cpu_convolutions
        self.why_not_onednn = ""
        if self.choice not in xla_cpu.CPU_CONVOLUTIONS:
            raise ConfigError(f"runtime.cpu_convolutions={self.choice!r} is unknown; choose one "
                              f"of {', '.join(xla_cpu.CPU_CONVOLUTIONS)}")
        if runtime.cpu_reductions not in xla_cpu.CPU_REDUCTIONS:
            raise ConfigError(f"runtime.cpu_reductions={runtime.cpu_reductions!r} is unknown; "
                              f"choose one of {', '.join(xla_cpu.CPU_REDUCTIONS)}")
        if self.choice == "onednn":
            if mesh.size != 1:
                raise ConfigError(
                    f"runtime.cpu_convolutions=onednn runs on one CPU device (oneDNN spreads each "
                    f"convolution over every core itself), not {mesh.size}; set "
                    "runtime.num_devices=1 or use runtime.cpu_convolutions=eigen")
            try:
                onednn.load()
            except onednn.OneDNNUnavailable as e:
                raise ConfigError(f"runtime.cpu_convolutions=onednn: {e}") from None
            self.candidates = ("onednn",)
        elif self.choice == "auto":
            kinds = list(ONE_DEVICE if mesh.size == 1 else SEVERAL_DEVICES)
            if "onednn" in kinds:
                try:
                    onednn.load()
                except onednn.OneDNNUnavailable as e:
                    kinds.remove("onednn")
                    self.why_not_onednn = str(e)
            self.candidates = tuple(kinds)
        else:
            self.candidates = (self.choice,)
        self.inference_kind = self.choice if self.choice != "auto" else "eigen"
        uses_onednn = "onednn" in self.candidates
        # The models' convolutions go through the trace-time dispatch only where oneDNN may run.
        self.convolution = convolutions.dispatch if uses_onednn else None

    def describe(self) -> list[str]:
        lines = [f"devices: {self.mesh.size} x cpu ({machine.cpu_description()})",
                 compile_cache.CACHE.describe()]
        if self.choice == "auto" and len(self.candidates) > 1:
            lines.append(f"CPU convolutions: auto, the faster of {' and '.join(self.candidates)} "
                         "measured on each stage's step (once per machine and program)")
        elif self.choice == "auto":
            lines.append(f"CPU convolutions: auto: {self.candidates[0]}")
        else:
            lines.append(f"CPU convolutions: {self.choice}")
        if self.why_not_onednn:
            lines.append(f"note: oneDNN convolutions are not available ({self.why_not_onednn})")
        warning = machine.idle_accelerator_warning("cpu")
        if warning:
            lines.append(warning)
        return lines


    def options(self, kind: str) -> dict | None:
        return xla_cpu.options(kind, self.runtime.cpu_reductions, self.runtime.fast_compile)

    def flops(self, executable) -> float:
        flops = super().flops(executable)
        text = executable.as_text() or ""
        if "msjax_onednn_conv" in text:
            flops += onednn.custom_call_flops(text) * self.mesh.size
        return flops

    def _lower(self, fn, args, kind, donate_argnums, out_shardings):
        with convolutions.use(kind):
            return jax.jit(_fresh(fn), donate_argnums=donate_argnums,
                           out_shardings=out_shardings).lower(*args)

    def compile(self, fn, args, *, donate_argnums=(), out_shardings=None, name: str = "",
                recorded: str = "", measure: bool = True) -> Compiled | None:
        t0 = time.perf_counter()
        kinds = (recorded,) if recorded in self.candidates else self.candidates
        lower = functools.partial(self._lower, fn, args, donate_argnums=donate_argnums,
                                  out_shardings=out_shardings)
        if len(kinds) == 1:
            exe = lower(kinds[0]).compile(self.options(kinds[0]))
            return Compiled(exe, self.flops(exe), kinds[0], time.perf_counter() - t0)
        reference = lower("eigen")
        key = hashlib.sha256("\0".join([
            machine.cpu_description(), jax.__version__, self.runtime.cpu_reductions,
            str(self.runtime.fast_compile), ",".join(kinds), reference.as_text()]).encode()
        ).hexdigest()[:24]
        verdict = self.verdicts.get(key)
        if verdict in kinds:
            lowered = reference if verdict == "eigen" else lower(verdict)
            exe = lowered.compile(self.options(verdict))
            return Compiled(exe, self.flops(exe), verdict, time.perf_counter() - t0)
        if not measure:
            return None
        programs = {k: (reference if k == "eigen" else lower(k)).compile(self.options(k))
                    for k in kinds}
        timings = self.timer(programs, args, donate_argnums)
        best = min(timings, key=timings.get)
        self.verdicts.put(key, best, timings)
        log.info("%s: convolutions %s (%s)", name or "program", best,
                 ", ".join(f"{k} {v:.4g} s" for k, v in timings.items()))
        exe = programs[best]
        return Compiled(exe, self.flops(exe), best, time.perf_counter() - t0, timings)

    def jit(self, fn: Callable, **jit_kwargs) -> Callable:
        kind = self.inference_kind
        jitted = jax.jit(_fresh(fn), compiler_options=self.options(kind), **jit_kwargs)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            with convolutions.use(kind):
                return jitted(*args, **kwargs)

        return call

    def machine(self) -> str:
        return machine.cpu_description()

    def init_options(self) -> dict | None:
        # Initialisation runs once; XLA's default optimisation of every parameter's unrolled
        # random initializer costs far more compile time than it saves.
        return xla_cpu.cheap_compile() or None
