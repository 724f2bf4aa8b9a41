"""What machine this is: the CPU's model and vector ISA (benchmarks and the CPU kernel verdicts
are labelled with it), and accelerators that are present but that jax does not use."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def vector_isa() -> str:
    flags = cpu_flags()
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return platform.machine() or "unknown ISA"


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """e.g. 'AMD EPYC, AVX2, 2 cores': the label of every CPU figure msjax prints."""
    return f"{cpu_model()}, {vector_isa()}, {os.cpu_count()} cores"


def nvidia_gpus(timeout: float = 5.0) -> list[str]:
    """Names of the NVIDIA GPUs the driver sees (``nvidia-smi -L``), [] if none or no driver."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout)
            names = [line.split(":", 1)[1].split("(UUID")[0].strip()
                     for line in out.stdout.splitlines() if line.startswith("GPU ")]
            if names:
                return names
        except (OSError, subprocess.TimeoutExpired):
            pass
    gpus = Path("/proc/driver/nvidia/gpus")
    return [f"NVIDIA GPU {p.name}" for p in sorted(gpus.iterdir())] if gpus.is_dir() else []


def tpu_present() -> bool:
    """A Cloud TPU VM exposes its chips as /dev/accel* (v4 and later) or /dev/vfio (v5e/v6e)."""
    return any(Path("/dev").glob("accel*")) or (Path("/dev/vfio").is_dir()
                                                 and any(Path("/dev/vfio").glob("[0-9]*")))


def idle_accelerator_warning(platform_name: str, probe_gpus=None,
                             probe_tpu=None) -> str | None:
    """A warning when jax runs on the CPU beside a GPU or TPU it could use, naming the install
    command; None otherwise."""
    if platform_name != "cpu":
        return None
    gpus = (probe_gpus or nvidia_gpus)()
    if gpus:
        return (f"warning: {len(gpus)} NVIDIA GPU(s) visible ({gpus[0]}) but jax runs on the CPU; "
                "install jax's CUDA build: pip install 'msjax[cuda]' (CUDA 13 drivers; "
                "'msjax[cuda12]' for CUDA 12), then run again")
    if (probe_tpu or tpu_present)():
        return ("warning: a TPU is visible but jax runs on the CPU; install jax's TPU build: "
                "pip install 'msjax[tpu]', then run again")
    return None
