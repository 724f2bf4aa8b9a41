"""Which kernels a model's convolutions run on: XLA's (any backend) or oneDNN's (CPU).

Models build their convolutions with ``conv_general_dilated`` below (``models/layers.py``). It is
``lax.conv_general_dilated`` unless it is traced inside ``convolutions("onednn")``, where 2-D
float32 NHWC convolutions without input dilation or groups go to oneDNN (``onednn.conv2d``) and
the rest stay with XLA. ``apply_with`` ties that choice to a model's apply function, so every
program that traces it (train step, evaluation, ECO teacher) gets it.

``runtime.cpu_convolutions`` picks: ``eigen`` / ``ynnpack`` are XLA:CPU kernel choices made by
compile options (``xla_options``); ``onednn`` is this module's, on CPU only (elsewhere the apply
function is returned unchanged), with XLA's Eigen kernels for what oneDNN does not take. It runs
on one CPU device: oneDNN spreads each convolution over every core itself, and XLA's partitioner
would gather a batch-sharded operand onto every device before a custom call. ``auto`` (the
default) is ``onednn`` on one CPU device where it can be built and loaded, else ``eigen``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging

import flax.linen as nn
import jax
from jax import lax

from msjax.kernels import onednn

# Models hand their convolutions to ``conv_general_dilated`` through this field of ``nn.Conv``
# (``models/layers.py``); flax marks it deprecated, and without it oneDNN cannot be reached.
FLAX_HOOK = "conv_general_dilated" in getattr(nn.Conv, "__dataclass_fields__", {})

log = logging.getLogger(__name__)
_warned = []
_use_onednn = contextvars.ContextVar("msjax_onednn_convolutions", default=False)


@contextlib.contextmanager
def convolutions(kind: str):
    """Convolutions traced inside run on ``kind``: "onednn" (loaded now; raises
    ``onednn.OneDNNUnavailable``), or anything else for XLA's.

    jax caches a jitted function's trace by the function, not by this choice: trace a function
    object under one choice only (``apply_with`` makes a new one per choice).
    """
    if kind == "onednn":
        require_onednn()
    token = _use_onednn.set(kind == "onednn")
    try:
        yield
    finally:
        _use_onednn.reset(token)


def require_onednn() -> None:
    """Builds and loads the kernels (once); raises ``onednn.OneDNNUnavailable`` saying why not."""
    if not FLAX_HOOK:
        raise onednn.OneDNNUnavailable(
            f"flax {getattr(nn, '__version__', '')} has no nn.Conv.conv_general_dilated field, "
            f"through which msjax's models reach oneDNN; use runtime.cpu_convolutions=eigen")
    onednn.load()


def choose(cpu_convolutions: str, devices: int = 1) -> str:
    """The kernels ``runtime.cpu_convolutions`` stands for on this machine with ``devices``
    devices: "auto" becomes "onednn" or "eigen" (with a warning saying why not oneDNN)."""
    if cpu_convolutions != "auto":
        return cpu_convolutions
    if jax.default_backend() != "cpu" or devices != 1:
        return "eigen"
    try:
        require_onednn()
        return "onednn"
    except onednn.OneDNNUnavailable as e:
        if not _warned:
            _warned.append(e)
            log.warning("runtime.cpu_convolutions=auto: XLA's Eigen convolutions, not oneDNN's "
                        "(train steps about 1.2-1.4x slower): %s", e)
        return "eigen"


def apply_with(apply_fn, cpu_convolutions: str, devices: int = 1):
    """``apply_fn`` whose convolutions run on ``choose(cpu_convolutions, devices)`` (see module
    doc). For oneDNN on CPU this builds and loads the kernels now and raises
    ``onednn.OneDNNUnavailable`` saying what is missing."""
    kind = choose(cpu_convolutions, devices)
    if kind != "onednn" or jax.default_backend() != "cpu":
        return apply_fn
    if devices != 1:
        raise ValueError(f"runtime.cpu_convolutions=onednn runs on one CPU device, not {devices}")
    require_onednn()  # fail here, before any long work, if it cannot be built

    @functools.wraps(apply_fn)
    def apply(*args, **kwargs):
        with convolutions("onednn"):
            return apply_fn(*args, **kwargs)

    return apply


def _pairs(padding, x_shape, w_shape, strides, dilation):
    if isinstance(padding, str):
        dilated = [dilation[i] * (w_shape[i] - 1) + 1 for i in range(2)]
        return tuple(lax.padtype_to_pads(x_shape[1:3], dilated, strides, padding))
    return tuple(tuple(int(v) for v in p) for p in padding)


def _onednn_geometry(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                     dimension_numbers, feature_group_count, batch_group_count,
                     preferred_element_type):
    """(strides, padding, dilation) when oneDNN takes this convolution, else None."""
    if (lhs.ndim != 4 or rhs.ndim != 4 or lhs.dtype != "float32" or rhs.dtype != "float32"
            or feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type not in (None, lhs.dtype)
            or any(d != 1 for d in (lhs_dilation or (1, 1)))):
        return None
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dims != lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")):
        return None
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    pads = _pairs(padding, lhs.shape, rhs.shape, strides, dilation)
    if any(v < 0 for p in pads for v in p):
        return None
    return strides, pads, dilation


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, on oneDNN where ``convolutions("onednn")`` says and it can."""
    if _use_onednn.get():
        geometry = _onednn_geometry(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, preferred_element_type)
        if geometry is not None:
            return onednn.conv2d(lhs, rhs, geometry)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
