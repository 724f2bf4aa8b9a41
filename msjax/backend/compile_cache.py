"""jax's persistent compilation cache, on by default: a rerun, a resume and ``eval.py`` load the
programs an earlier process compiled instead of compiling them again.

``runtime.compilation_cache``: '' is ``$MSJAX_CACHE/xla`` (default ``~/.cache/msjax/xla``), a
path names another folder, ``none`` turns it off; a folder set through jax itself
(``$JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``) wins over all three. Every
program is cached, small ones too (jax's defaults leave out those that compile in under a
second, which is most of a small run's programs), and the folder is bounded by
``runtime.compilation_cache_gib`` (least recently used entries go, jax's own LRU eviction).

The cache is trusted like code: an entry is an executable that jax loads and runs, so the folder
must not be writable by anyone you would not let run code on the machine.

A folder that cannot be made, or that fills up or turns read-only later, is a warning, never an
error: jax compiles what it cannot load or store. ``CACHE.counts()`` says how many programs this
process loaded from the cache and how many it compiled; ``CACHE.problems`` holds, one line each,
why an entry could not be read or written (jax and XLA have open reports of CPU entries refused
on reload on some AVX-512 CPUs).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import jax

OFF = "none"
# The thread that compiles programs ahead of their use (``loop.StepPrograms``).
AHEAD_THREAD = "msjax-compile-ahead"
# What compiling a program costs, as jax times it: tracing, lowering, and XLA's compile (or the
# cache's load, which takes its place).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_READ_ERROR = "Error reading persistent compilation cache entry"
_WRITE_ERROR = "Error writing persistent compilation cache entry"


class CompileCache:
    """The process's cache: where it is (``directory``, None when off), why (``origin``), and
    what it did (``counts``, ``problems``)."""

    def __init__(self):
        self.directory: str | None = None
        self.origin = "off"
        self.problems: list[str] = []
        self._requests = self._hits = 0
        self._seconds = 0.0
        self._ahead = self._ahead_waited = 0.0  # compiled ahead in all; of that, waited for
        self._lock = threading.Lock()
        self._listening = False

    # -- what it did ---------------------------------------------------------------------------

    def _on_event(self, event: str, *args, **kwargs) -> None:
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            with self._lock:
                self._requests += 1
        elif event == "/jax/compilation_cache/cache_hits":
            with self._lock:
                self._hits += 1

    def _on_duration(self, event: str, duration: float, *args, **kwargs) -> None:
        if event not in _COMPILE_EVENTS:
            return
        with self._lock:
            # Compiles ahead happen beside training, not in its way, unless it waits for them.
            if threading.current_thread().name.startswith(AHEAD_THREAD):
                self._ahead += duration
            else:
                self._seconds += duration

    def add_waited(self, seconds: float) -> None:
        """Time spent waiting for a program compiled ahead: compile time after all."""
        with self._lock:
            self._seconds += seconds
            self._ahead_waited += seconds

    def hidden_seconds(self) -> float:
        """Compile time spent ahead of use, beside training, that nobody waited for."""
        with self._lock:
            return max(0.0, self._ahead - self._ahead_waited)

    def counts(self) -> tuple[int, int]:
        """(programs loaded from the cache, programs compiled) by this process so far, among
        those jax looked up in the cache."""
        with self._lock:
            return self._hits, self._requests - self._hits

    def snapshot(self) -> tuple[int, int, float, float]:
        """(loaded, compiled, seconds waited for compiling or loading, seconds compiled ahead
        and not waited for) so far: ``summary`` takes two of these."""
        hidden = self.hidden_seconds()
        with self._lock:
            return self._hits, self._requests - self._hits, self._seconds, hidden

    def summary(self, start: tuple, wall_seconds: float) -> str:
        """One line for the end of a run: what compiling cost since ``start`` (a snapshot), as
        a share of the run's ``wall_seconds``, what was compiled ahead unseen, and what the
        cache gave."""
        loaded, compiled, seconds, hidden = (b - a for a, b in zip(start, self.snapshot()))
        share = seconds / wall_seconds if wall_seconds > 0 else 0.0
        line = (f"compiling: {seconds:.1f} s of the run's {wall_seconds:.1f} s ({share:.0%}) "
                "waited for")
        if hidden > 0.05:
            line += f", {hidden:.1f} s more compiled ahead beside training"
        if self.directory is None:
            return line + "; compilation cache off"
        line += f"; programs: {loaded} loaded from the compilation cache, {compiled} compiled"
        return line + (f"; {self.problems[-1]}" if self.problems else "")

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        jax.monitoring.register_event_listener(self._on_event)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        shown = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            text = str(message)
            if text.startswith((_READ_ERROR, _WRITE_ERROR)):
                kind = "read" if text.startswith(_READ_ERROR) else "written"
                cause = text.split(": ", 1)[-1].splitlines()[0][:200]
                self.problems.append(f"a compilation cache entry could not be {kind} ({cause})")
                return
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning

    # -- turning it on -------------------------------------------------------------------------

    def enable(self, setting: str, max_gib: float) -> None:
        """Points jax at the folder ``setting`` names (see the module doc). Idempotent; a later
        call with another folder moves the cache there."""
        from jax.experimental.compilation_cache import compilation_cache as cc

        self._listen()
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        jax.config.update("jax_compilation_cache_max_size", int(max_gib * 2**30) or -1)
        by_jax = os.environ.get("JAX_COMPILATION_CACHE_DIR") or (
            jax.config.jax_compilation_cache_dir if self.origin != "msjax" else None)
        if by_jax:
            self.directory, self.origin = str(by_jax), "jax"
            return
        if setting.strip().lower() == OFF:
            if self.directory is not None:
                cc.reset_cache()
                jax.config.update("jax_compilation_cache_dir", None)
            self.directory, self.origin = None, "off"
            return
        folder = Path(setting or Path(os.environ.get("MSJAX_CACHE", "~/.cache/msjax")) / "xla")
        folder = folder.expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.problems.append(f"the compilation cache folder {folder} cannot be made "
                                 f"({e.strerror or e}); every program compiles")
            return
        if str(folder) != self.directory:
            if self.directory is not None:
                cc.reset_cache()
            cc.set_cache_dir(str(folder))
        self.directory, self.origin = str(folder), "msjax"

    def describe(self) -> str:
        """One line for the start of a run."""
        if self.directory is None:
            return ("compilation cache: off" + (f" ({self.problems[-1]})" if self.problems
                                                 else " (runtime.compilation_cache=none)"))
        by = " (set through jax)" if self.origin == "jax" else ""
        return f"compilation cache: {self.directory}{by}"


CACHE = CompileCache()


def enable(runtime) -> CompileCache:
    """The cache ``runtime`` asks for (``compilation_cache``, ``compilation_cache_gib``)."""
    CACHE.enable(runtime.compilation_cache, runtime.compilation_cache_gib)
    return CACHE
