"""Devices: one global ``data`` mesh, replicated state, batch-sharded inputs, multi-host helpers.

Data parallelism is plain ``jax.jit`` over this mesh: parameters and optimizer state are
replicated, every MGE term's batch is sharded on its batch axis, and XLA inserts the gradient
all-reduce. On a CPU the mesh is also how msjax fills the cores (XLA:CPU leaves cores idle inside
one convolution; sharding the batch over simulated devices runs them in parallel).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def maybe_initialize_distributed(enabled: bool) -> None:
    """Joins a multi-host job (coordinator and process ids come from the environment / cluster)."""
    if enabled and jax.process_count() == 1:
        jax.distributed.initialize()


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A one-axis ``data`` mesh over every device (or the first ``num_devices``), Auto axis type:
    explicit sharding mode is not needed and, on jax 0.10, breaks rfft2/irfft2 on sharded batches."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def process_rows(global_batch: int) -> slice:
    """The rows of a global batch this process loads (each host loads only its own slice)."""
    per = global_batch // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def put_batch(tree, mesh):
    """Host arrays (this process's rows) -> global arrays sharded on the batch axis."""
    sharding = batch_sharded(mesh)

    def put(x):
        x = np.asarray(x)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, tree)


def put_replicated(tree, mesh):
    return jax.device_put(tree, replicated(mesh))


def fetch(tree):
    """Device -> host numpy (fully replicated or addressable arrays only)."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
