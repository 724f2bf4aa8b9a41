"""Tests run on CPU with simulated devices; the flag must be set before JAX starts."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
# Kernel verdicts and built kernels of the tests stay out of the user's cache.
os.environ.setdefault("MSJAX_CACHE", tempfile.mkdtemp(prefix="msjax-test-cache-"))
# One compilation cache for the whole suite, in a temporary folder (never the user's).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ["MSJAX_CACHE"], "xla"))
