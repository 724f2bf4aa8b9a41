"""One trainer per workdir: an exclusive lock on ``<workdir>/lock`` held while the run uses it.

The lock is ``fcntl.flock`` on the file, which the kernel releases when the holder dies, however
it dies, so a killed run never blocks the next one. The file also names its holder (host, pid,
process start time, since when) for the refusal message. Where ``flock`` does not reach across
hosts (some network filesystems), a holder on another host is recognised by that record and a
heartbeat (the holder touches the file every ``HEARTBEAT_S``): a fresh heartbeat refuses, a stale
one is taken over. On the holder's own host, a record whose process is gone is taken over at
once.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from msjax import storage
from msjax.errors import RunDirError

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # several missed heartbeats, with room for clock skew between hosts


class WorkdirLock:
    """``with WorkdirLock(workdir): ...``, or ``acquire()`` / ``release()``.

    A second process taking it on a workdir in use gets RunDirError naming the holder. Only one
    process of a multi-host run should take it (the one with ``jax.process_index() == 0``)."""

    def __init__(self, workdir, *, on_message: Callable[[str], None] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
        self.workdir = Path(workdir).absolute()
        self.path = self.workdir / LOCK_NAME
        self.on_message = on_message or log.warning
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._fd: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self.held:
            return
        with storage.writing(self.path, f"creating the lock file {self.path}"):
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunDirError(f"workdir {self.workdir} is in use by {_describe(holder)}; wait "
                              "for that run to end or stop it, or pass another --workdir") from None
        try:
            holder = _read(fd)
            if holder:
                self._check_previous(fd, holder)
            with storage.writing(self.path, f"writing the lock file {self.path}"):
                _write(fd, _me())
        except BaseException:
            os.close(fd)  # closing releases the flock
            raise
        self._fd = fd
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="workdir_lock_heartbeat",
                                           daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty file: no holder (the file stays, so no inode race)
        except OSError:
            pass  # a read-only filesystem now: the kernel lock still goes with the close
        os.close(fd)

    def _check_previous(self, fd: int, holder: dict) -> None:
        """A record left in a lock nobody holds: from a process that died, or from a live one on
        a host where flock does not reach us."""
        if holder.get("host") == socket.gethostname():
            if _alive(holder):
                raise RunDirError(
                    f"workdir {self.workdir} is in use by {_describe(holder)}, which is alive "
                    "but does not hold the lock file; stop it, or pass another --workdir")
            why = "which is no longer running"
        else:
            age = time.time() - os.fstat(fd).st_mtime
            if age < self.stale_after_s:
                raise RunDirError(
                    f"workdir {self.workdir} is in use by {_describe(holder)} (heartbeat "
                    f"{age:.0f} s ago); wait for that run to end or stop it, or pass another "
                    f"--workdir. If it is gone, delete {self.path}")
            why = f"whose heartbeat stopped {age:.0f} s ago"
        self.on_message(f"taking over the lock of {self.workdir} from {_describe(holder)}, {why}")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the holder keeps the lock; a missed beat only ages the record


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} "
            f"(since {holder.get('since')})")


def _alive(holder: dict) -> bool:
    """True if the pid runs and is the same process (its start time matches: pids are reused)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = _start_time(pid)
    return start is None or holder.get("start") is None or start == holder["start"]


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        holder = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    os.fsync(fd)
