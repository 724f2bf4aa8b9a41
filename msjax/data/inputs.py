"""A run's training input on the path ``data.on_device`` picks: the one object the loop holds.

On the device path the loop passes ``dataset`` to the compiled step, which calls
``device_batches`` with the step counter it already has (``state.step``); on the host path the
loop takes ``host_batches(step)`` and puts them on the devices. Both are cut by one sampler as
pure functions of (seed, step, term), so a resumed run sees the batches of the uninterrupted one;
it still resumes on the path it started on (``path`` is recorded with the run): the two paths'
float conversions are shown equal on the CPU, not on every accelerator.
"""

from __future__ import annotations

from msjax import multiscale, parallel
from msjax.data import device, pipeline, sampler
from msjax.data.host import HostBatches


def term_sizes(plan) -> tuple[int, ...]:
    """The global batch of each term a step draws (one for a shared-batch plan)."""
    return tuple(plan.batch_sizes[:1] if plan.shared_batch else plan.batch_sizes)


def device_batches(dataset: device.DeviceImages, seed_key, step, plan, *, patch: int,
                   augment, scale: int, mesh) -> tuple:
    """Inside the compiled step: every term's batch of ``step``, sharded on the batch axis."""
    return sampler.step_batches(dataset, seed_key, step, term_sizes(plan), patch=patch,
                                augment=augment, scale=scale,
                                sharding=lambda n: parallel.batch_sharded(mesh, n))


class TrainingInput:
    """The training batches of steps ``start <= step < stop`` of a run with ``stages``.

    ``on_device``, ``line`` (the start banner), ``path`` ('device' | 'host'); ``dataset`` (device
    path) or ``host_batches(step)`` (host path); ``close()`` stops the host workers."""

    def __init__(self, spec, source, mesh, *, seed: int, task, stages, start: int, stop: int,
                 path: str = ""):
        """``path`` ('device' | 'host') overrides the choice: a resumed run keeps the path it
        started on, whose batches it must see again."""
        c = spec
        placement = device.choose(c, source, mesh, host_corrupt=task.host_corrupt is not None)
        self.on_device, self.line = placement.on_device, placement.line
        if path and (path == "device") != self.on_device:
            self.on_device = path == "device"
            self.line = (f"input: {'on device' if self.on_device else 'host workers'}, as when "
                         "this run started (its batches depend on the path)")
        self.path = "device" if self.on_device else "host"
        self.dataset, self._host, self.stages = None, None, tuple(stages)
        resize = pipeline.whole_image_resize(c)
        if self.on_device:
            self.dataset = device.load(source, mesh, patch=c.patch, resize=resize,
                                       scale=task.scale, workers=c.host_workers)
            return
        corrupt = task.host_corrupt
        self._host = HostBatches(
            source, seed=seed, patch=c.patch, scale=task.scale, augment=c.augment,
            resize=resize, start=start, stop=stop,
            batch_sizes=self._term_sizes,
            rows=lambda n: parallel.process_rows(n, mesh),
            transform=(lambda b: {**b, "input": corrupt(b["target"])}) if corrupt else None,
            workers=c.host_workers, prefetch=c.host_prefetch,
            cache_bytes=int(c.host_cache_gib * 2**30))

    def _term_sizes(self, step: int) -> tuple[int, ...]:
        return term_sizes(self.stages[multiscale.stage_at(self.stages, step)].plan)

    def replan(self, stages) -> None:
        """New stages (an adaptive decision): the host workers drop the steps they built ahead,
        whose stage (and so batch shapes) may have changed."""
        self.stages = tuple(stages)
        if self._host is not None:
            self._host.restart(self.stages[-1].end_step)

    def host_batches(self, step: int) -> tuple:
        """This process's rows of every term batch of ``step`` (numpy), host path only."""
        if self._host is None:
            raise RuntimeError("the training input is on the device: the step cuts its batches")
        return self._host.get(step)

    def close(self):
        if self._host is not None:
            self._host.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
