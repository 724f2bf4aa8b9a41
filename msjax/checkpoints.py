"""Orbax checkpoints: the latest (for resume) and the best by validation PSNR, both kept.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it). Each
checkpoint's meta carries a SHA-256 digest of the state as it was saved, checked on restore: Orbax
checks only its index files, so a garbled data file can otherwise load as wrong numbers. A
checkpoint that cannot be read or fails its digest is set aside (renamed ``damaged-<step>-<n>``,
out of Orbax's view, so the step can be saved again) and the one before it is used; when none can
be read, restore refuses with what it found instead of letting a run start over. A failed save
raises ``StorageError`` naming the path and the last good checkpoint.

A checkpoint is "good" when its parameters are finite and its probe loss passed the loop's test
(``hooks.Probe``); its meta says so (``GOOD_KEY``) and so do its Orbax metrics, so that the newest
good checkpoint is kept whatever newer ones are saved (``NewestGood``), and a resume starts from it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from msjax import storage
from msjax.errors import RunDirError, StorageError

log = logging.getLogger(__name__)

DIGEST_KEY = "state_sha256"
GOOD_KEY = storage.GOOD_KEY
DAMAGED_PREFIX = "damaged-"
_PARTIAL = "*.orbax-checkpoint-tmp*"


class DamagedCheckpointError(RunDirError):
    """A checkpoint that cannot be read, or whose state does not match its digest."""

    def __init__(self, step: int, directory: Path, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"checkpoint {step} in {directory} is damaged ({reason}); evaluate or "
                         "resume from another step")


class Restored(NamedTuple):
    state: object
    meta: dict
    step: int


class SetAside(NamedTuple):
    step: int
    folder: Path
    reason: str


def _psnr(metrics) -> float:
    # A checkpoint whose metrics carry only its goodness never ranks as a best one.
    return float(metrics.get("psnr", -np.inf))


class NewestGood(policies.PreservationPolicy):
    """Keeps the newest checkpoint not marked bad in its metrics (``GOOD_KEY``: 0), so a run
    that goes bad keeps a state to fall back to however many checkpoints it saves meanwhile."""

    def should_preserve(self, checkpoints, *, context):
        good = [i for i, c in enumerate(checkpoints) if (c.metrics or {}).get(GOOD_KEY, 1)]
        newest = max(good, key=lambda i: checkpoints[i].step, default=None)
        return [i == newest for i in range(len(checkpoints))]


@jax.jit
def _all_finite(leaves):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def params_finite(state) -> bool:
    """Whether every parameter of ``state`` is finite (one compiled reduction, fetched once)."""
    return bool(_all_finite(jax.tree.leaves(state.params)))


class Checkpoints:
    def __init__(self, directory: Path, *, keep_best: int = 1, read_only: bool = False,
                 on_message: Callable[[str], None] | None = None):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self.on_message = on_message or log.warning
        self.set_aside: list[SetAside] = []  # what restores moved out of the way, oldest first
        self._pending: int | None = None  # a step whose asynchronous save is not confirmed yet
        self._background_error: Exception | None = None
        self._watcher: threading.Thread | None = None
        self._failed: StorageError | None = None
        if not read_only and _is_primary():
            partial = sorted(p.name for p in self.directory.glob(_PARTIAL))
            if partial:
                self.on_message(f"removing {len(partial)} partial checkpoint folder(s) left by an "
                                f"interrupted save in {self.directory}: {', '.join(partial)}")
        options = ocp.CheckpointManagerOptions(
            best_fn=_psnr, best_mode="max", read_only=read_only,
            # The legacy max_to_keep=1 + best_fn deletes the latest and breaks resume; this policy
            # keeps the newest two (the older one is the fallback if the newest is damaged) and
            # the best ones side by side.
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=2), NewestGood(),
                policies.BestN(get_metric_fn=_psnr, n=keep_best,
                               keep_checkpoints_without_metrics=False)]),
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=True,
            # With directories made in the background, a directory that cannot be made leaves
            # the writer threads waiting for a "created" signal for Orbax's barrier timeout, and
            # the process cannot exit meanwhile; made in save(), the failure is raised there.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=("state", "meta"))
        except OSError as e:
            raise StorageError(f"cannot open the checkpoint folder {self.directory} "
                               f"({storage.first_line(e)}); check that it is writable") from e

    # -- saving ------------------------------------------------------------------------------

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Starts saving ``state`` as ``step``; the write finishes in the background. Raises
        StorageError if this save or the previous one failed."""
        self.raise_if_save_failed(wait=True)
        savable = _savable(state)
        meta = {**meta, DIGEST_KEY: state_digest(savable)}
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(savable), meta=ocp.args.JsonSave(meta)),
                metrics=metrics, force=True)
        except Exception as e:  # nothing else is written between here and the filesystem
            raise self._storage_error(step, e) from e
        self._pending, self._background_error = step, None
        # Orbax raises a background failure only to a thread that waits for it, once per
        # thread: this one waits, so the loop can ask without blocking.
        self._watcher = threading.Thread(target=self._watch, name="checkpoint_save_watcher",
                                         daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._background_error = e

    def raise_if_save_failed(self, wait: bool = False) -> None:
        """Raises StorageError if a save started earlier has failed; with ``wait``, waits for it
        first. Without ``wait`` it only reads a flag: the loop calls it at every log step, so a
        failure stops the run within a log interval instead of at the next save."""
        if self._failed is not None:
            raise self._failed
        if self._pending is None:
            return
        step = self._pending
        if wait:
            try:
                self.manager.wait_until_finished()
            except Exception as e:
                self._background_error = e
            self._watcher.join()
        if self._background_error is not None:
            self._pending = None
            raise self._storage_error(step, self._background_error) from self._background_error
        if wait:
            self._pending = None

    def wait(self) -> None:
        """Waits for the background save; raises StorageError if it failed."""
        self.raise_if_save_failed(wait=True)

    def close(self) -> None:
        """Waits for the last save and releases Orbax's threads. Never hangs after a failed save;
        raises StorageError only for a failure not raised before."""
        raised_before, error = self._failed, None
        try:
            self.raise_if_save_failed(wait=True)
        except StorageError as e:
            error = e
        try:
            self.manager.close()
        except Exception as e:  # the failure itself is reported once, as a StorageError
            log.debug("closing checkpoints after a failed save: %s", storage.first_line(e))
        if error is not None and error is not raised_before:
            raise error

    def _storage_error(self, step: int, e: BaseException) -> StorageError:
        self._failed = storage.error(f"saving checkpoint {step} to {self.directory}", e,
                                     self.directory)
        return self._failed

    # -- reading -----------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        step = self.manager.best_step()
        if step is None or not np.isfinite(_psnr(self.manager.metrics(step) or {})):
            return None
        return step

    def restore(self, step: int, template) -> tuple[object, dict]:
        """(state, meta) of ``step``, laid out like ``template`` (shapes, dtypes, shardings).
        Raises DamagedCheckpointError if it cannot be read or does not match its digest."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(template))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise DamagedCheckpointError(step, self.directory,
                                         f"unreadable: {storage.first_line(e)}") from e
        meta = dict(out["meta"])
        expected = meta.get(DIGEST_KEY)
        if expected is None:
            log.info("checkpoint %s has no state digest (written by an older msjax); not "
                     "verified", step)
        elif state_digest(out["state"]) != expected:
            raise DamagedCheckpointError(step, self.directory,
                                         "its state does not match the digest saved with it")
        return template.replace(**out["state"]), meta

    def restore_latest(self, template, on_fallback=None, *, skip_steps=(),
                       skip_reason: str = "skipped by the caller") -> Restored | None:
        """The newest readable checkpoint not in ``skip_steps``, as (state, meta, step).

        Damaged and skipped checkpoints newer than it are set aside (see ``set_aside``) so the
        run can save those steps again; each is named in a message to ``on_fallback``. Returns
        None only for a folder with no checkpoint at all; raises RunDirError, changing nothing,
        when there are checkpoints but none can be read."""
        say = on_fallback or self.on_message
        skip = set(skip_steps)
        found = self.steps()
        failures: list[tuple[int, str]] = [(s, skip_reason) for s in found if s in skip]
        for step in reversed([s for s in found if s not in skip]):
            try:
                state, meta = self.restore(step, template)
            except DamagedCheckpointError as e:
                failures.append((step, e.reason))
                continue
            # Resuming from a state that went bad would only repeat what made it bad.
            if meta.get(GOOD_KEY) is False:
                failures.append((step, "it failed the probe test when saved (" +
                                 str(meta.get("probe", "")) + ")"))
                continue
            if not params_finite(state):
                failures.append((step, "its parameters are not finite"))
                continue
            newer = sorted((s, r) for s, r in failures if s > step)
            if newer and not self.read_only:
                _sync("msjax_checkpoints_found_damage")  # every process has read them first
            for s, reason in newer:
                folder = self._set_aside(s, reason)
                where = f"set aside as {folder.name}" if folder else "left in place (read-only)"
                say(f"checkpoint {s} in {self.directory} cannot be used ({reason}); {where}, "
                    f"falling back to checkpoint {step}")
            if newer and not self.read_only:
                _sync("msjax_checkpoints_set_aside")
                self.manager.reload()
            return Restored(state, meta, step)
        if skip:
            return None  # the caller asked for an older one than it has and there is none
        damaged = sorted(p.name for p in self.directory.glob(DAMAGED_PREFIX + "*"))
        if failures or damaged:
            listed = "; ".join(f"step {s}: {r}" for s, r in sorted(failures))
            aside = f"; set aside earlier: {', '.join(damaged)}" if damaged else ""
            raise RunDirError(
                f"no usable checkpoint in {self.directory} ({listed or 'none left'}{aside}). "
                "Nothing was changed: move the workdir aside and start a new run, or pass "
                "another --workdir")
        return None

    def restore_before(self, step: int, template, on_fallback=None,
                       reason: str = "non-finite step right after restoring it"
                       ) -> Restored | None:
        """The newest readable checkpoint older than ``step``, setting aside ``step`` and any
        newer one (with ``reason``); None if there is no older readable checkpoint."""
        return self.restore_latest(template, on_fallback,
                                   skip_steps=[s for s in self.steps() if s >= step],
                                   skip_reason=reason)

    # -- setting aside -----------------------------------------------------------------------

    def _set_aside(self, step: int, reason: str) -> Path | None:
        if self.read_only:
            return None
        n = 1
        while (self.directory / f"{DAMAGED_PREFIX}{step}-{n}").exists():
            n += 1
        target = self.directory / f"{DAMAGED_PREFIX}{step}-{n}"
        if _is_primary():
            source = self.directory / str(step)
            try:
                source.rename(target)
                (target / "WHY.txt").write_text(f"set aside by msjax: {reason}\n")
            except OSError as e:
                raise StorageError(f"cannot set aside damaged checkpoint {source} ({e}); move it "
                                   "out of the checkpoint folder by hand and run again") from e
        self.set_aside.append(SetAside(step, target, reason))
        return target

    def _finalized_steps(self) -> list[int]:
        """Steps whose folder was committed (renamed from its temporary name), read from disk."""
        return storage.committed_steps(self.directory)


def state_digest(tree) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in pytree order, on the host.
    The same values give the same digest whatever their device layout."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = _host_array(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _host_array(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("a checkpoint digest needs every state array replicated or "
                             "addressable by this process")
        x = x.addressable_data(0)  # a replicated array: any copy is the whole value
    return np.asarray(jax.device_get(x))


def _savable(state):
    """The parts of a TrainState that a checkpoint holds (apply_fn and tx are code, not data)."""
    savable = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
               "model_state": state.model_state}
    if getattr(state, "ema_params", None) is not None:  # only runs that keep an average
        savable["ema_params"] = state.ema_params
    return savable


def _is_primary() -> bool:
    return jax.process_index() == 0


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)

