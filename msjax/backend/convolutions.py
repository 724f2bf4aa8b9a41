"""Which kernels the models' convolutions run on under XLA:CPU: XLA's own, or oneDNN's.

Models take their convolution module as a field (``conv``, ``models/layers.py``); on CPU the
backend passes ``layers.Conv`` with ``convolution=dispatch`` below. ``dispatch`` is
``lax.conv_general_dilated`` unless it is traced inside ``use("onednn")``, where 2-D float32
NHWC convolutions without input dilation or groups go to oneDNN (``onednn.conv2d``) and the rest
stay with XLA. The choice is made at trace time, so one model serves every kernel: the backend
traces each program under the kind it compiles it for.

jax caches a jitted function's trace by the function, not by this choice: trace a function object
under one choice only (the backend lowers a fresh ``jax.jit`` per kind).
"""

from __future__ import annotations

import contextlib
import contextvars

from jax import lax

from msjax.backend import onednn

_use_onednn = contextvars.ContextVar("msjax_onednn_convolutions", default=False)


@contextlib.contextmanager
def use(kind: str):
    """Convolutions traced inside run on ``kind``: "onednn" (built and loaded now; raises
    ``onednn.OneDNNUnavailable``), or anything else for XLA's."""
    if kind == "onednn":
        onednn.load()
    token = _use_onednn.set(kind == "onednn")
    try:
        yield
    finally:
        _use_onednn.reset(token)


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


def dispatch(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, on oneDNN where ``use("onednn")`` says and it can."""
    if _use_onednn.get():
        geometry = _onednn_geometry(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, preferred_element_type)
        if geometry is not None:
            return onednn.conv2d(lhs, rhs, geometry)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
