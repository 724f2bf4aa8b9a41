"""Host buffers on transparent huge pages: the CLIs restart themselves once with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (Linux, glibc >= 2.35) before jax starts.

XLA:CPU allocates a step's large buffers afresh every step, and glibc serves each from a new
``mmap`` that the kernel fills 4 KiB page by page; with the tunable glibc asks for 2 MiB pages on
those mappings (``madvise``, which is what a default THP setting honours), so a step takes a few
hundred page faults instead of tens of thousands (82k for a ResNet batch-16 step; 6-8% faster per
step on an Intel Xeon, docs/benchmarks.md). glibc reads tunables only
when a process starts, hence the restart (``execve``: same PID, arguments and environment plus
the tunable). An older glibc ignores the tunable; ``MSJAX_HUGE_PAGES=0`` skips it. Library
callers can export the variable themselves.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"


def restart_with_huge_pages() -> None:
    """Replaces this process by itself with the tunable set, unless it is set already, this is
    not Linux, or ``MSJAX_HUGE_PAGES=0``. Call it first thing in a ``__main__``."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (sys.platform != "linux" or os.environ.get("MSJAX_HUGE_PAGES", "1") == "0"
            or TUNABLE in tunables):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, f"{TUNABLE}=1") if t))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # cannot restart (e.g. no executable path): run on as is
        return
