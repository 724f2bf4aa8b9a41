"""The run's training input on either path: what the loop and the compiled step receive."""

import functools

import jax
import numpy as np

from helpers import tiny_config
from msjax import build, data, parallel


def run_input(on_device, task_name="deblur", mode="fullmultiscale", **fields):
    c = tiny_config(**{"mode": mode, "data.on_device": on_device, "task.name": task_name,
                       **fields})
    if task_name == "damage":
        c.task.damage = "jpeg"
    task = build.make_task(c)
    stages = build.stages(c)
    mesh = parallel.make_mesh(2)
    source = data.open_source(build.input_spec(c), "train")
    return c, task, stages, mesh, data.TrainingInput(build.input_spec(c), source, mesh,
                                                     seed=c.seed, task=task, stages=stages,
                                                     start=0, stop=stages[-1].end_step)


def test_device_path_gives_each_stage_its_term_batches_inside_jit():
    c, task, stages, mesh, run = run_input("auto")
    assert run.on_device and run.path == "device" and run.line.startswith("input: on device")
    seed_key = parallel.put_replicated(jax.random.PRNGKey(c.seed), mesh)
    for stage in stages:
        cut = jax.jit(functools.partial(data.inputs.device_batches, plan=stage.plan,
                                        patch=c.data.patch, augment=True, scale=1, mesh=mesh))
        step = parallel.put_replicated(np.int32(stage.first_step), mesh)
        batches = cut(run.dataset, seed_key, step)
        assert [b["target"].shape[0] for b in batches] == list(stage.plan.batch_sizes)
        assert batches[0]["target"].shape[1:] == (c.data.patch, c.data.patch, 3)


def test_host_path_gives_term_batch_for_each_stage_and_this_process_rows():
    c, task, stages, mesh, run = run_input("false")
    assert not run.on_device and run.path == "host"
    with run:
        for stage in stages:
            got = run.host_batches(stage.first_step)
            assert len(got) == len(stage.plan.batch_sizes)
            expected = data.term_batch(data.open_source(build.input_spec(c), "train"), seed=c.seed,
                                       step=stage.first_step, term=0,
                                       batch=stage.plan.batch_sizes[0], patch=c.data.patch)
            np.testing.assert_array_equal(got[0]["target"], expected["target"])


def test_a_task_that_corrupts_on_the_host_stays_on_the_host_and_gets_its_input():
    *_, run = run_input("auto", task_name="damage", mode="single")
    with run:
        assert not run.on_device and "corrupts images on the host" in run.line
        (batch,) = run.host_batches(0)
        assert batch["input"].shape == batch["target"].shape
        assert not np.array_equal(batch["input"], batch["target"])
