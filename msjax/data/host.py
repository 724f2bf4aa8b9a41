"""The host path for images too large to sit on the device: decode once, cut patches ahead.

``DecodedImages`` wraps a source so that each image is decoded (and resized) once per process and
kept in a least-recently-used cache bounded in bytes; two threads that want the same image wait
for one decode. ``HostBatches`` builds future steps' batches on a thread pool while the device
computes. Batches are exactly ``sampler.term_batch``'s (the same pure function of
(seed, step, term), equal to the device path's), only made from cached images and in parallel.

Threads rather than processes: Pillow, zlib and ArrayRecord release the GIL while decoding, which
is where the time goes, and one shared cache means one decode per image per process (worker
processes would each decode and cache every image, and copy batches back).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import Callable, Sequence

from msjax.data.sampler import term_batch


def _nbytes(item) -> int:
    if isinstance(item, dict):
        return sum(a.nbytes for a in item.values())
    return sum(a.nbytes for a in item) if isinstance(item, tuple) else item.nbytes


class DecodedImages:
    """Random access to ``source``'s images decoded (and ``resize``d) once, LRU-cached."""

    def __init__(self, source, *, resize=None, cache_bytes: int = 4 * 2**30):
        self.source, self.resize, self.cache_bytes = source, resize, int(cache_bytes)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._pending: dict = {}
        self._held = 0
        self._lock = threading.Lock()
        self.decodes = 0  # how many decodes ran (a cache that holds everything: len(source))

    def __len__(self):
        return len(self.source)

    def _decode(self, i):
        item = self.source[i]
        return (item if self.resize is None or isinstance(item, (tuple, dict))
                else self.resize(item))

    def __getitem__(self, i):
        i = int(i)
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
            waiting = self._pending.get(i)
            if waiting is None:
                waiting = self._pending[i] = concurrent.futures.Future()
                owner = True
            else:
                owner = False
        if not owner:
            return waiting.result()
        try:
            item = self._decode(i)
        except BaseException as e:
            with self._lock:
                del self._pending[i]
            waiting.set_exception(e)
            raise
        with self._lock:
            self.decodes += 1
            del self._pending[i]
            size = _nbytes(item)
            if size <= self.cache_bytes:
                self._cache[i] = item
                self._held += size
                while self._held > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._held -= _nbytes(old)
        waiting.set_result(item)
        return item


    def fill(self, pool: concurrent.futures.Executor) -> bool:
        """Decodes every image now on ``pool`` if the decoded source fits in the cache (by its
        estimated size: ``device.estimate``); returns whether it did. Random draws would
        otherwise take most of a run to touch every image of a large dataset once."""
        from msjax.data.device import estimate

        # Sized from headers or array shapes only (decoding a sample to size it would cost a
        # decode); the size before any resize, which mostly shrinks.
        footprint = estimate(self.source, sample=False)
        if footprint is None or footprint.bytes > self.cache_bytes:
            return False
        for _ in pool.map(self.__getitem__, range(len(self))):
            pass
        return True


class HostBatches:
    """Training batches built ahead on worker threads; ``get(step)`` returns step's tuple of
    term batches (numpy dicts, as ``term_batch`` makes them).

    ``batch_sizes(step)`` gives the per-term global batch sizes of a step (one entry for a shared
    batch), ``rows(global_batch)`` this process's rows of a term batch (None: all), ``transform``
    (optional) rewrites each term batch on the worker (e.g. a host-side corruption: it must be
    deterministic, like the sampling).
    Steps are built for ``start <= step < stop``, ``prefetch`` steps ahead of the last ``get``;
    an error in a worker is raised by the ``get`` of its step. With ``fill``, a source whose
    decoded images fit in the cache is decoded whole at construction, on the workers. Use as a
    context manager, or call ``close()``.
    """

    def __init__(self, source, *, seed: int, patch: int,
                 batch_sizes: Callable[[int], Sequence[int]], start: int, stop: int,
                 scale: int = 1, augment=True, resize=None,
                 rows: Callable[[int], slice | None] | None = None, transform=None,
                 workers: int = 0, prefetch: int = 4, cache_bytes: int = 4 * 2**30,
                 fill: bool = True):
        self.images = source if isinstance(source, DecodedImages) else DecodedImages(
            source, resize=resize, cache_bytes=cache_bytes)
        self._term = dict(seed=seed, patch=patch, scale=scale, augment=augment)
        self._batch_sizes, self._rows, self._transform = batch_sizes, rows, transform
        self._stop, self._prefetch = stop, max(1, prefetch)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            workers or os.cpu_count(), thread_name_prefix="msjax-batches")
        self.filled = fill and self.images.fill(self._pool)
        self._futures: dict[int, list] = {}
        self._next = start
        self._closed = False
        self._fill(start)

    def _make_term(self, step: int, term: int, batch: int) -> dict:
        rows = self._rows(batch) if self._rows is not None else None
        out = term_batch(self.images, step=step, term=term, batch=batch, rows=rows,
                         **self._term)
        return self._transform(out) if self._transform is not None else out

    def _submit(self, step: int):
        self._futures[step] = [self._pool.submit(self._make_term, step, k, n)
                               for k, n in enumerate(self._batch_sizes(step))]

    def _fill(self, current: int):
        while self._next < min(current + self._prefetch, self._stop):
            if self._next >= current:
                self._submit(self._next)
            self._next += 1

    def get(self, step: int) -> tuple:
        if self._closed:
            raise RuntimeError("HostBatches is closed")
        futures = self._futures.pop(step, None)
        if futures is None:  # not prefetched (a jump): build it now, refill from there
            for stale in list(self._futures):
                for f in self._futures.pop(stale):
                    f.cancel()
            self._next = step + 1
            self._submit(step)
            futures = self._futures.pop(step)
        self._fill(step + 1)
        return tuple(f.result() for f in futures)

    def restart(self, stop: int) -> None:
        """Drops the steps built ahead (a new plan may change their batches) and builds up to
        ``stop`` from the next ``get`` on."""
        for futures in self._futures.values():
            for f in futures:
                f.cancel()
        self._futures.clear()
        self._stop = stop

    def close(self):
        if not self._closed:
            self._closed = True
            for futures in self._futures.values():
                for f in futures:
                    f.cancel()
            self._futures.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
