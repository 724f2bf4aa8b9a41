"""Two real jax.distributed processes on localhost (CPU collectives) train like one process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from msjax import runs, train
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_and_match_one_process(tmp_path):
    port, workdir = _free_port(), tmp_path / "shared_workdir"
    # One CPU device per process: a global mesh of 2 devices over 2 processes.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    procs = [subprocess.Popen([sys.executable, "tests/multihost_worker.py", str(i), "2", str(port),
                               str(workdir), str(tmp_path / f"process{i}")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=150)[0])
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    dumps = [np.load(tmp_path / f"process{i}" / "params.npz") for i in range(2)]
    assert int(dumps[0]["step"]) == int(dumps[1]["step"]) == 3
    names = [k for k in dumps[0].files if k not in ("step", "psnr")]
    assert names and sorted(names) == sorted(k for k in dumps[1].files if k not in ("step", "psnr"))
    for k in names:
        np.testing.assert_array_equal(dumps[0][k], dumps[1][k])  # one replicated state
    # Process 0 alone wrote the logs: one row per step, not two.
    assert (workdir / "train.csv").read_text().count("\n") == 1 + 3

    # The same global batch on 2 devices of one process gives the same parameters: each process
    # loaded exactly its own rows of every batch.
    single = tmp_path / "single"
    train.train_and_evaluate(tiny_config(**{"mode": "multiscale", "mge.batch_growth": 2,
                                            "runtime.num_devices": 2}), single)
    state, _, _ = runs.load_state(single, "latest")
    import jax

    for path, a in jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, state.params)):
        b = dumps[0][jax.tree_util.keystr(path)]
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a), jax.tree_util.keystr(path)


def test_sigterm_to_one_process_stops_every_process_at_the_same_saved_step(tmp_path):
    port, workdir = _free_port(), tmp_path / "shared_workdir"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    procs = [subprocess.Popen([sys.executable, "tests/multihost_worker.py", str(i), "2", str(port),
                               str(workdir), str(tmp_path), "preempt"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    try:
        log = workdir / "train.csv"
        deadline = time.time() + 120
        while not (log.exists() and log.read_text().count("\n") >= 3):  # header + 2 rows
            assert time.time() < deadline and all(p.poll() is None for p in procs), "no progress"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "received by another process" in outputs[0] and "another" not in outputs[1]
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    # One checkpoint, written by both together at a step where they agreed (a log step).
    assert len(steps) == 1 and steps[0] % 5 == 0 and 10 <= steps[0] < 2000
    for out in outputs:
        assert f"at step {steps[0]};" in out
