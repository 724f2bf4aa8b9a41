"""Data parallelism changes nothing but speed: 4 simulated devices train like 1."""

import jax
import numpy as np
import pytest

from msjax import parallel, runs, train
from tests.helpers import tiny_config


def _trained_params(workdir, num_devices, task):
    # Term batches 4, 8 (multiscale, growth 2): every term's batch splits over 4 devices.
    c = tiny_config(**{"task.name": task, "mode": "multiscale", "runtime.num_devices": num_devices,
                       "mge.batch_growth": 2})
    train.train_and_evaluate(c, workdir)
    state, _, step = runs.load_state(workdir, "latest")
    assert step == 3
    return jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("task", ["deblur", "inpaint"])
def test_four_devices_train_the_same_parameters_as_one(tmp_path, task):
    assert jax.device_count() >= 4, "tests/conftest.py sets JAX_NUM_CPU_DEVICES=4"
    one = _trained_params(tmp_path / "one", 1, task)
    four = _trained_params(tmp_path / "four", 4, task)
    for path, a in jax.tree_util.tree_leaves_with_path(one):
        b = four
        for key in path:
            b = b[key.key]
        rel = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
        assert rel <= 1e-5, f"{jax.tree_util.keystr(path)}: relative error {rel:.2e}"


def test_a_term_batch_that_does_not_divide_is_split_over_fewer_devices_and_trains_the_same(
        tmp_path):
    # Term batches 2, 4 on 4 devices: the first is split over 2 and copied on the other 2.
    def trained(name, devices):
        c = tiny_config(**{"runtime.num_devices": devices, "mode": "multiscale",
                           "mge.levels": 1, "mge.finest_batch": 2, "mge.batch_growth": 2})
        train.train_and_evaluate(c, tmp_path / name)
        state, _, _ = runs.load_state(tmp_path / name, "latest")
        return jax.tree.map(np.asarray, state.params)

    for a, b in zip(jax.tree.leaves(trained("one", 1)), jax.tree.leaves(trained("four", 4))):
        assert np.linalg.norm(a - b) <= 1e-5 * max(np.linalg.norm(a), 1e-12)
    mesh = parallel.make_mesh(4)
    assert parallel.devices_per_batch(mesh, 2) == 2 and parallel.devices_per_batch(mesh, 8) == 4
    assert parallel.batch_sharded(mesh, 2).shard_shape((2, 3)) == (1, 3)


def test_steady_state_runs_under_disallow_transfer_guard_on_four_devices(tmp_path):
    seen = []

    def record_guard(step, batches):  # runs inside the loop's step block
        seen.append(jax.config.jax_transfer_guard_host_to_device)
        return batches

    c = tiny_config(**{"runtime.num_devices": 4, "mode": "fullmultiscale", "mge.batch_growth": 2,
                       "batch_size": 8, "runtime.transfer_guard": "disallow"})
    result = train.train_and_evaluate(c, tmp_path / "run", transform=record_guard)
    assert np.isfinite(result["psnr"])
    assert seen == ["disallow"] * 3


def test_an_implicit_host_to_device_copy_in_the_loop_fails_the_run(tmp_path):
    def add_host_noise(step, batches):  # numpy + device array: an implicit transfer
        return tuple({**b, "target": b["target"] + np.zeros(b["target"].shape, np.float32)}
                     for b in batches)

    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        train.train_and_evaluate(tiny_config(**{"runtime.num_devices": 4}), tmp_path / "run",
                                 transform=add_host_noise)


@pytest.mark.parametrize("env_devices, num_devices, expected", [
    (None, 0, 1), (None, 3, 3), ("2", 0, 2)])
def test_cli_default_cpu_device_count(env_devices, num_devices, expected):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    if env_devices:
        env["JAX_NUM_CPU_DEVICES"] = env_devices
    code = ("from msjax import backend; from tests.helpers import tiny_config; "
            f"backend.set_cpu_devices(tiny_config(**{{'runtime.num_devices': {num_devices}}})"
            ".runtime); "
            "import jax; print(jax.device_count())")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == str(expected)
