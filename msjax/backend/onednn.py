"""oneDNN convolutions for XLA:CPU (``runtime.cpu_convolutions=onednn``, or ``auto`` where they
measure fastest).

``onednn_conv.cc`` wraps oneDNN's NHWC forward, input-gradient and kernel-gradient convolutions
as XLA FFI handlers; this module builds it on first use (a C++17 compiler, jax's FFI headers and
oneDNN's wheels: ``pip install 'msjax[onednn]'``), caches the library under
``$MSJAX_KERNEL_CACHE`` (default ``~/.cache/msjax/kernels``), registers the handlers and gives
``conv2d``, a float32 NHWC / HWIO convolution with a custom VJP whose three convolutions are
oneDNN's, and ``custom_call_flops``, which counts them as XLA's cost analysis counts a
convolution (it sees none inside a custom call).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("onednn_conv.cc")
TARGETS = {"forward": "MsjaxConvForward", "backward_data": "MsjaxConvBackwardData",
           "backward_weights": "MsjaxConvBackwardWeights"}
INSTALL_HINT = ("it needs oneDNN (pip install 'msjax[onednn]' on x86-64 Linux, or "
                "MSJAX_ONEDNN_ROOT set to a oneDNN install with include/ and lib/) and a C++17 "
                "compiler (g++ or $CXX); or use runtime.cpu_convolutions=eigen")


class OneDNNUnavailable(RuntimeError):
    """oneDNN convolutions cannot be built or loaded here; the message says what is missing."""


def _package_file(dist: str, suffix: str) -> Path | None:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(f.locate()).resolve()
    return None


def _onednn_dirs() -> tuple[Path, Path]:
    """(include dir holding dnnl.hpp, lib dir holding libdnnl.so.3)."""
    root = os.environ.get("MSJAX_ONEDNN_ROOT")
    if root:
        header, library = Path(root) / "include" / "dnnl.hpp", Path(root) / "lib" / "libdnnl.so.3"
    else:
        header = _package_file("onednn-devel-cpu-gomp", "include/dnnl.hpp")
        library = _package_file("onednn-cpu-gomp", "/libdnnl.so.3")
    if header is None or library is None or not header.exists() or not library.exists():
        raise OneDNNUnavailable(f"oneDNN's headers or library were not found; {INSTALL_HINT}")
    return header.parent, library.parent


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise OneDNNUnavailable(f"no C++ compiler found (g++ / $CXX); {INSTALL_HINT}")
    return cxx


def _cache_dir() -> Path:
    return Path(os.environ.get("MSJAX_KERNEL_CACHE", Path.home() / ".cache" / "msjax" / "kernels"))


def build() -> Path:
    """The compiled handler library, built once per (source, jaxlib, oneDNN, compiler)."""
    include, lib = _onednn_dirs()
    cxx = _compiler()
    ffi_include = Path(jax.ffi.include_dir())
    key = hashlib.sha256("\0".join([SOURCE.read_text(), jax.lib.__version__, str(lib), cxx])
                         .encode()).hexdigest()[:16]
    out = _cache_dir() / key / "libmsjax_onednn.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("building oneDNN convolutions (once, a few seconds) into %s", out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [cxx, "-O2", "-std=c++17", "-w", "-shared", "-fPIC", str(SOURCE), f"-I{ffi_include}",
               f"-I{include}", f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}", "-o",
               str(tmp_out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise OneDNNUnavailable(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n"
                                    f"{done.stderr[-3000:]}")
        os.replace(tmp_out, out)  # atomic: concurrent builders each write their own temp file
    return out


@functools.cache
def _load() -> str:
    """"" once the handlers are registered with XLA:CPU, else why they cannot be (tried once)."""
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
    except OneDNNUnavailable as e:
        return str(e)
    except OSError as e:  # an unwritable cache, a library that does not load
        return (f"{e}; MSJAX_KERNEL_CACHE names a writable folder for the built kernels "
                f"(now {_cache_dir()})")
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(f"msjax_onednn_conv_{name}",
                                    jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return ""


def load() -> None:
    """Builds (once) and registers the handlers with XLA:CPU; raises OneDNNUnavailable."""
    error = _load()
    if error:
        raise OneDNNUnavailable(error)


def _call(name, shape, *operands, geometry):
    strides, padding, dilation = geometry
    attrs = {"stride_h": strides[0], "stride_w": strides[1],
             "pad_top": padding[0][0], "pad_bottom": padding[0][1],
             "pad_left": padding[1][0], "pad_right": padding[1][1],
             "dilation_h": dilation[0], "dilation_w": dilation[1]}
    return jax.ffi.ffi_call(f"msjax_onednn_conv_{name}",
                            jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential")(
        *operands, **{k: np.int64(v) for k, v in attrs.items()})


def output_shape(x_shape, w_shape, geometry) -> tuple[int, ...]:
    strides, padding, dilation = geometry
    spatial = [(x_shape[1 + i] + padding[i][0] + padding[i][1]
                - (dilation[i] * (w_shape[i] - 1) + 1)) // strides[i] + 1 for i in range(2)]
    return (x_shape[0], *spatial, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x, w, geometry):
    """NHWC x HWIO float32 convolution; ``geometry`` = (strides, ((top, bottom), (left, right))
    padding >= 0, kernel dilation), all tuples of ints."""
    return _call("forward", output_shape(x.shape, w.shape, geometry), x, w, geometry=geometry)


def _forward(x, w, geometry):
    return conv2d(x, w, geometry), (x, w)


def _backward(geometry, residuals, dy):
    x, w = residuals
    dx = _call("backward_data", x.shape, dy, w, geometry=geometry)
    dw = _call("backward_weights", w.shape, x, dy, geometry=geometry)
    return dx, dw


conv2d.defvjp(_forward, _backward)


_SHAPE = re.compile(r"f32\[([\d,]*)\]")
_ATTR = re.compile(r"(\w+) = (-?\d+) : i64")
# Which of (result, first operand, second operand) hold x, y and w, per handler.
_ROLES = {"forward": (1, 0, 2), "backward_data": (0, 1, 2), "backward_weights": (1, 2, 0)}


def _taps(size: int, out: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Kernel taps that land inside the input, summed over output positions (XLA counts only
    those)."""
    return sum(0 <= o * stride - pad + k * dilation < size
               for o in range(out) for k in range(kernel))


def custom_call_flops(hlo_text: str) -> float:
    """FLOPs of the oneDNN convolutions in a compiled program's HLO text, counted as XLA's cost
    analysis counts a convolution's (2 per multiply-add inside the input), which sees none in a
    custom call."""
    total = 0.0
    for line in hlo_text.splitlines():
        found = re.search(r'custom_call_target="msjax_onednn_conv_(\w+)"', line)
        if not found:
            continue
        head = line.split("custom-call(", 1)[0]
        operands = line.split("operand_layout_constraints=", 1)[1]
        shapes = [_SHAPE.search(head).group(1)] + _SHAPE.findall(operands)[:2]
        x, y, w = ([int(d) for d in shapes[i].split(",")] for i in _ROLES[found.group(1)])
        a = {k: int(v) for k, v in _ATTR.findall(line)}
        taps = [_taps(x[1 + i], y[1 + i], w[i], a[f"stride_{hw}"], a[f"pad_{lo}"],
                      a[f"dilation_{hw}"])
                for i, (hw, lo) in enumerate((("h", "top"), ("w", "left")))]
        total += 2.0 * y[0] * taps[0] * taps[1] * w[2] * w[3]
    return total
