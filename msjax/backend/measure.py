"""Measuring on this machine, and remembering what was measured.

``time_calls`` times compiled programs side by side on copies of their real arguments;
``Verdicts`` keeps a choice made from such a measurement per (machine, jax version, program) in
a small JSON file under ``$MSJAX_CACHE`` (default ``~/.cache/msjax``), so a run on the same machine
chooses as the first did without measuring again, and two runs of one config run the same
programs. The CPU kernel choice (``backend/cpu.py``) and the steps per compiled call
(``steps_per_call``) are made this way; a run also records its choices in its checkpoints, so a
resumed run keeps them whatever the cache holds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from msjax.backend import machine

log = logging.getLogger(__name__)

# runtime.steps_per_call=auto: a compiled call lasts at least this long, so the loop's own work
# per call (dispatch, Python, the hooks' checks; about a millisecond on a CPU) stays a few
# percent of it; no more steps than this in one call.
MIN_CALL_SECONDS = 0.05
MAX_STEPS_PER_CALL = 64
# Several steps per call are kept only where each step is at least this much faster.
STEPS_PER_CALL_MARGIN = 0.03


def cache_dir() -> Path:
    return Path(os.environ.get("MSJAX_CACHE", Path.home() / ".cache" / "msjax"))


class Verdicts:
    """A measured choice per program on this machine, in a small JSON file."""

    def __init__(self, path: Path | None = None, name: str = "cpu_kernels.json"):
        self._path, self.name = path, name

    @property
    def path(self) -> Path:
        return self._path or cache_dir() / self.name

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> str | None:
        entry = self._read().get(key)
        return entry["kind"] if entry else None

    def put(self, key: str, kind: str, timings: dict) -> None:
        entries = self._read()
        entries[key] = {"kind": kind, "seconds": timings, "cpu": machine.cpu_description()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError as e:  # an unwritable cache costs a measurement next time, nothing else
            log.warning("cannot write the CPU kernel verdicts to %s: %s", self.path, e)


def time_calls(programs: dict, args: tuple, donate_argnums=(), *, min_rounds: int = 3,
               max_rounds: int = 10, budget_s: float = 3.0) -> dict:
    """Median seconds per call of each program on ``args``, measured round-robin after one
    warm-up call each (donated arguments are copied before every call)."""

    def call(program):
        fresh = list(args)
        for i in donate_argnums:
            fresh[i] = jax.tree.map(jnp.copy, fresh[i])
        jax.block_until_ready(fresh)
        t0 = time.perf_counter()
        jax.block_until_ready(program(*fresh))
        return time.perf_counter() - t0

    for program in programs.values():
        call(program)
    times = {k: [] for k in programs}
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - start < budget_s):
        for k, program in programs.items():
            times[k].append(call(program))
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}




def step_seconds(program, args: tuple, steps: int, *, calls: int = 8,
                 budget_s: float = 2.0) -> float:
    """Median seconds per step of ``program`` (``steps`` steps per call, state donated and
    returned first) called back to back as the training loop calls it: from a copy of the state
    in ``args``, each call on the state the last returned, waiting for each; one warm-up call."""
    state = jax.tree.map(jnp.copy, args[0])
    rest = tuple(args[1:])
    state = program(state, *rest)[0]
    jax.block_until_ready(state)
    times, start = [], time.perf_counter()
    while len(times) < 2 or (len(times) < calls and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        state = program(state, *rest)[0]
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / steps


def choose_steps_per_call(step_seconds: float, divides: int) -> int:
    """The steps a call runs so that it lasts ``MIN_CALL_SECONDS``: the largest divisor of
    ``divides`` (the log cadence, so calls end on log steps) not above what that needs."""
    want = min(MAX_STEPS_PER_CALL, max(1, math.ceil(MIN_CALL_SECONDS / max(step_seconds, 1e-9))))
    return max(d for d in range(1, want + 1) if divides % d == 0)
