"""Devices: one global ``data`` mesh, replicated state, batch-sharded inputs, multi-host helpers.

Data parallelism is plain ``jax.jit`` over this mesh: parameters and optimizer state are
replicated, every MGE term's batch is sharded on its batch axis, and XLA inserts the gradient
all-reduce. A term batch that does not divide by the device count is split over the largest
count that divides it and replicated over the rest (``batch_sharded``).

Several processes (hosts) form one global mesh: each loads only the rows of every batch that land
on its own devices, and arrays the loop reads back are replicated, so every process can read them.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)


def _distributed_is_initialized() -> bool:
    check = getattr(jax.distributed, "is_initialized", None)
    if check is not None:
        return check()
    from jax._src import distributed  # jax without is_initialized()

    return distributed.global_state.client is not None


def initialize_distributed(runtime) -> None:
    """Joins a multi-process job when ``runtime.distributed``, ``runtime.coordinator_address`` or
    $JAX_COORDINATOR_ADDRESS asks for one. Each unset field comes from the environment
    ($JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID), else from JAX's cluster
    auto-detection (SLURM, Open MPI, Kubernetes, Cloud TPU). Must run before any JAX computation."""
    address = runtime.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if not (runtime.distributed or address) or _distributed_is_initialized():
        return
    num_processes = runtime.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0))
    process_id = runtime.process_id
    if process_id < 0:
        process_id = int(os.environ.get("JAX_PROCESS_ID", -1))
    # CPU processes need a cross-process collective library (older jax defaulted to none).
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address or None,
                               num_processes=num_processes or None,
                               process_id=process_id if process_id >= 0 else None)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A one-axis ``data`` mesh over every device (or the first ``num_devices``), Auto axis type:
    explicit sharding mode is not needed and, on jax 0.10, breaks rfft2/irfft2 on sharded batches."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,),
                         devices=devices)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh, batch: int | None = None) -> NamedSharding:
    """How a batch of ``batch`` rows lies on the mesh: split over every device where it divides,
    else split over the largest device count that divides it and replicated over the rest
    (a term of 4 images on 8 devices: 4 x 2), so every config runs unchanged on any device
    count and computes the same estimator."""
    groups = math.gcd(batch, mesh.size) if batch else mesh.size
    if groups == mesh.size:
        return NamedSharding(mesh, P("data"))
    split = Mesh(mesh.devices.reshape(groups, mesh.size // groups), ("data", "replica"),
                 axis_types=(AxisType.Auto, AxisType.Auto))
    return NamedSharding(split, P("data"))


def devices_per_batch(mesh, batch: int) -> int:
    """Over how many devices a batch of ``batch`` rows is split (the rest hold copies)."""
    return math.gcd(batch, mesh.size)


def process_rows(global_batch: int, mesh=None) -> slice:
    """The rows of a global batch this process loads: those its devices hold in ``mesh`` (without
    a mesh, an equal split by process index)."""
    if mesh is None:
        per = global_batch // jax.process_count()
        return slice(jax.process_index() * per, (jax.process_index() + 1) * per)
    index = batch_sharded(mesh, global_batch).addressable_devices_indices_map((global_batch,))
    spans = sorted(idx[0].indices(global_batch)[:2] for idx in index.values())
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in set(spans)) != stop - start:
        raise ValueError(f"this process's devices hold non-contiguous rows {spans} of the batch")
    return slice(start, stop)


def _from_local_rows(x: np.ndarray, sharding, global_shape, first_row: int = 0):
    """A global array from host data holding rows ``first_row...`` of it: each local device gets
    its block by ``jax.device_put`` (an explicit transfer, allowed under the loop's transfer
    guard; ``make_array_from_process_local_data`` counts as implicit there)."""
    blocks = []
    for device, index in sharding.addressable_devices_indices_map(global_shape).items():
        rows = index[0].indices(global_shape[0]) if index else (0, 0, 1)
        local = (slice(rows[0] - first_row, rows[1] - first_row),) + tuple(index[1:])
        blocks.append(jax.device_put(x[local] if x.ndim else x, device))
    return jax.make_array_from_single_device_arrays(global_shape, sharding, blocks)


def put_batch(tree, mesh, global_batch: int | None = None):
    """Host arrays (this process's rows of a ``global_batch``-row batch, ``process_rows``) ->
    global arrays laid out by ``batch_sharded``. ``global_batch`` defaults to an even split of
    the local rows over the processes."""
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def put(x):
        x = np.asarray(x)
        n = global_batch or x.shape[0] // local * mesh.size
        sharding = batch_sharded(mesh, n)
        if local == mesh.size:
            return jax.device_put(x, sharding)
        first = process_rows(n, mesh).start
        return _from_local_rows(x, sharding, (n,) + x.shape[1:], first)

    return jax.tree.map(put, tree)


def put_global_batch(tree, mesh):
    """Host arrays holding the whole global batch on every process (e.g. the fixed validation
    set) -> global arrays sharded on the batch axis; each device takes its own rows."""
    sizes = {len(x) for x in jax.tree.leaves(tree)}
    (n,) = sizes
    return put_batch(jax.tree.map(lambda x: np.asarray(x)[process_rows(n, mesh)], tree), mesh, n)


def put_replicated(tree, mesh):
    """Host values, equal on every process -> arrays replicated over the mesh."""
    sharding = replicated(mesh)

    def put(x):
        if sharding.is_fully_addressable or (isinstance(x, jax.Array)
                                             and not x.is_fully_addressable):
            return jax.device_put(x, sharding)
        # Onto other processes' devices too: from host memory, each process filling its own.
        x = np.asarray(jax.device_get(x))
        return _from_local_rows(x, sharding, x.shape)

    return jax.tree.map(put, tree)


def fetch(tree):
    """Device -> host numpy. Replicated arrays are read from this process's own copy, so every
    process can fetch them; a sharded array must live on this process's devices."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError("cannot fetch an array sharded over other processes' devices; "
                                 "give the jit that makes it out_shardings=replicated(mesh)")
            x = x.addressable_data(0)
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def agreed_signal(local: int | None) -> int | None:
    """The stop signal as every process sees it: the largest signal number any process received,
    None if none did. A collective: every process must call it at the same step."""
    from jax.experimental import multihost_utils

    received = multihost_utils.process_allgather(np.int32(local or 0))
    return int(np.max(received)) or None
