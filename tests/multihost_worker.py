"""One process of a multi-process tiny training run (launched by tests/test_multihost.py).

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT_DIR [preempt]

Trains a tiny config in the shared WORKDIR, then restores the latest checkpoint on the global mesh
(the resume path) and writes this process's copy of the parameters to OUT_DIR/params.npz.
With ``preempt``: a long run that the test stops with SIGTERM to one process; prints the stop
message and exits 128 + signal, as train.py does.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from msjax import build, checkpoints, models, parallel, train  # noqa: E402
from tests.helpers import create_state, tiny_config  # noqa: E402


def main(process_id, num_processes, port, workdir, out_dir):
    c = tiny_config(**{"mode": "multiscale", "mge.batch_growth": 2, "runtime.num_devices": 0,
                       "runtime.coordinator_address": f"127.0.0.1:{port}",
                       "runtime.num_processes": num_processes, "runtime.process_id": process_id})
    result = train.train_and_evaluate(c, workdir)
    assert jax.process_count() == num_processes, jax.process_count()

    mesh = parallel.make_mesh()
    model = models.create_model(c.model, **c.model_kwargs)
    sample = np.zeros((1, c.data.patch, c.data.patch, 3), np.float32)
    template = create_state(model, c, sample, build.stages(c)[-1].end_step, mesh)
    ckpt = checkpoints.Checkpoints(Path(workdir) / "checkpoints", read_only=True)
    state, _ = ckpt.restore(max(ckpt.steps()), template)
    ckpt.close()
    flat = {jax.tree_util.keystr(p): v
            for p, v in jax.tree_util.tree_leaves_with_path(parallel.fetch(state.params))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", step=int(parallel.fetch(state.step)), psnr=result["psnr"], **flat)


def preempt(process_id, num_processes, port, workdir):
    c = tiny_config(**{"mode": "multiscale", "mge.batch_growth": 2, "runtime.num_devices": 0,
                       "runtime.coordinator_address": f"127.0.0.1:{port}",
                       "runtime.num_processes": num_processes, "runtime.process_id": process_id,
                       "train.steps": 2000, "log.every": 5, "log.eval_every": 2000,
                       "log.checkpoint_every": 2000})
    try:
        train.train_and_evaluate(c, workdir)
    except train.Preempted as e:
        print(f"PREEMPTED: {e}", flush=True)
        sys.exit(128 + e.signum)
    sys.exit("not preempted")


if __name__ == "__main__":
    pid, n, port = (int(a) for a in sys.argv[1:4])
    if sys.argv[6:] == ["preempt"]:
        preempt(pid, n, port, sys.argv[4])
    main(pid, n, port, sys.argv[4], sys.argv[5])
