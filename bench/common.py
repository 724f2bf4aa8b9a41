"""What the benchmarks share: a config's compiled train step, built exactly as the training loop
builds it (``msjax.build``), with random batches already on the device, and the machine's name."""

from __future__ import annotations

import statistics
import time


def compiled_step(config, stage: int = 0, *, seed: int = 0, recorded: str = ""):
    """(step(), FLOPs of one step over all devices, kernels, compile seconds, batch sizes) of
    ``config``'s stage ``stage``; ``step()`` runs one training step and waits for it."""
    import jax
    import numpy as np

    from msjax import build, parallel

    exp = build.experiment(config)
    plan = exp.stages[stage].plan
    side = config.data.patch
    state = build.initial_state(exp, (1, side // exp.task.scale, side // exp.task.scale, 3))
    rng = np.random.default_rng(seed)
    batches = tuple(parallel.put_batch({"target": rng.random((n, side, side, 3), np.float32)},
                                       exp.mesh, n) for n in plan.batch_sizes)
    key = parallel.put_replicated(jax.random.PRNGKey(seed), exp.mesh)
    program = build.compile_train_step(exp, stage, state, batches, key, recorded=recorded)
    holder = [state]

    def step():
        holder[0], metrics = program(holder[0], batches, key)
        jax.block_until_ready(metrics["loss"])

    return step, program.flops, program.kernels, program.seconds, plan.batch_sizes


def median_seconds(step, warmup: int, repeats: int) -> dict:
    """Median wall and CPU seconds of ``step()``, which must block until its work is done.

    CPU seconds over wall seconds is how many cores the step kept busy: a direct view of idle
    cores, and a steadier measure of work than wall time on a machine shared with other jobs.
    """
    for _ in range(warmup):
        step()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return dict(seconds=statistics.median(times), cpu_seconds=statistics.median(cpu), times=times)


def machine() -> str:
    """'CPU model, ISA, cores' (every benchmark names the machine its figures come from)."""
    from msjax.backend import machine as m

    return m.cpu_description()
