"""One error path for every write a run makes, and writes that leave nothing partial.

Every writer of msjax (CSVs, ``train.log``, images, TensorBoard events, config.json, the lock,
summaries, checkpoints) turns a failing write into one ``StorageError`` line that names the path,
the operating system's reason (``No space left on device, ENOSPC``) and the last good checkpoint
of the run being written, which is where the same command resumes once the disk is fixed.

Whole files are written to a temporary name in their folder and renamed (``write_file``), so a
failed write leaves the old file or none, never a partial one. Appended files are cut back to
their last whole line when a run reopens them (``cut_partial_line``).

Libraries report their own failures as long tracebacks: Orbax logs one per writer thread when a
disk fills, TensorStore's futures leave "Exception ignored" coroutines behind, and threads
print what kills them. ``LibraryNoise`` sends all of that to ``train.log`` instead of the
terminal, where the error's one line already says what happened.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from msjax.errors import StorageError

REASONS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO")
FIX = "Free space or fix the folder's permissions, then run the same command to resume"

# The checkpoint folder of the run being written (``for_run``): every storage error names its
# last good checkpoint.
_checkpoints: Path | None = None
# Where library tracebacks went: None when none came, else whether train.log took all of them.
details_kept: bool | None = None


def cause(e: BaseException) -> str:
    """The operating system's reason inside an error, as 'No space left on device, ENOSPC'
    (TensorStore wraps it in long messages); the error's first line otherwise."""
    if isinstance(e, OSError) and e.errno in errno.errorcode:
        return f"{os.strerror(e.errno)}, {errno.errorcode[e.errno]}"
    text = " ".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)
    for name in REASONS:
        if os.strerror(getattr(errno, name)) in text:
            return f"{os.strerror(getattr(errno, name))}, {name}"
    return first_line(e)


def first_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line. TensorStore's messages chain every layer's context
    ('OUT_OF_RANGE: Error opening "cast" driver: ...: <the cause>') and end in annotations
    ('[source locations=...]', '[tensorstore_spec=...]'): those are dropped, and a long chain
    keeps its status code and its end, where the cause is."""
    text = str(e).strip().splitlines()
    line = re.sub(r"\s+", " ", text[0]) if text else ""
    line = re.sub(r"\s*\[(source locations|tensorstore_spec)=.*$", "", line)
    if len(line) > limit:
        code = re.match(r"[A-Z_]+: ", line)
        head = code.group(0) if code else ""
        line = f"{head}... {line[len(line) - (limit - len(head) - 4):]}"
    return f"{type(e).__name__}: {line}"


GOOD_KEY = "good"  # a checkpoint's metric: 0 when it failed the loop's probe (msjax/hooks.py)


def committed_steps(folder: Path) -> list[int]:
    """Steps whose checkpoint folder was committed (Orbax renames it to its step when done)."""
    try:
        return sorted(int(p.name) for p in Path(folder).iterdir()
                      if p.is_dir() and p.name.isdigit())
    except OSError:
        return []


def _passed_probe(step_folder: Path) -> bool:
    """Whether a committed checkpoint passed the probe: its ``metrics`` item (an Orbax JSON
    item, read as a file here because the manager may be what failed) says good, or nothing."""
    try:
        metrics = json.loads((step_folder / "metrics" / "metrics").read_text())
    except (OSError, ValueError):
        return True  # older runs kept no verdict; an unreadable one is for restore to judge
    return bool(metrics.get(GOOD_KEY, 1))


def last_good(folder: Path | None) -> str:
    """'the last good checkpoint is step N in FOLDER' (committed, and not failed by the probe),
    or that there is none yet."""
    if folder is None:
        return ""
    committed = committed_steps(folder)
    steps = [s for s in committed if _passed_probe(Path(folder) / str(s))]
    if steps:
        return f"the last good checkpoint is step {steps[-1]} in {folder}"
    if committed:
        return f"no checkpoint in {folder} passed the probe (steps {committed[0]}-{committed[-1]})"
    return f"no checkpoint was saved in {folder} yet"


def error(what: str, e: BaseException, checkpoints: Path | None = None) -> StorageError:
    """The one line for a failed write: ``what`` ('writing PATH'), the reason, the last good
    checkpoint (of ``checkpoints``, else of the run being written) and the fix."""
    good = last_good(checkpoints if checkpoints is not None else _checkpoints)
    return StorageError(f"{what} failed ({cause(e)}); {good + '. ' if good else ''}{FIX}")


@contextlib.contextmanager
def writing(path, what: str | None = None):
    """Turns an OSError raised inside into the one-line StorageError about ``path``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise error(what or f"writing {path}", e) from e


def write_file(path, write: Callable[[Path], None] | bytes | str) -> Path:
    """``path`` made whole or not at all: ``write(tmp)`` (or the bytes / text given) goes to a
    temporary name in the same folder, which is then renamed over ``path``. On failure the
    temporary file is removed and StorageError names ``path``."""
    path = Path(path)
    tmp = None
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            if isinstance(write, bytes):
                tmp.write_bytes(write)
            elif isinstance(write, str):
                tmp.write_text(write, encoding="utf-8")
            else:
                write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the file it replaces was not
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    return path


def cut_partial_line(path) -> None:
    """Drops a last line without its newline (a write cut short), so appends start whole."""
    path = Path(path)
    with writing(path):
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)


@contextlib.contextmanager
def for_run(checkpoints: Path):
    """Storage errors raised inside name the last good checkpoint in ``checkpoints``."""
    global _checkpoints
    before, _checkpoints = _checkpoints, Path(checkpoints).absolute()
    try:
        yield
    finally:
        _checkpoints = before


class _Divert(logging.Filter):
    """Library records that carry a traceback or an error go to train.log, not the terminal."""

    def __init__(self, noise: "LibraryNoise"):
        super().__init__()
        self.noise = noise

    def filter(self, record):
        if record.name.startswith("msjax") or not (record.exc_info or
                                                   record.levelno >= logging.ERROR):
            return True
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.noise.keep(text)
        return False


class LibraryNoise:
    """``with LibraryNoise(workdir / 'train.log'): ...``: library tracebacks (logged errors,
    unraisable exceptions, threads' uncaught ones) are appended to the log, best effort;
    ``details_kept`` says afterwards whether all of them could be written. Disabled (the
    processes of a multi-host run other than the one that writes the logs), it changes
    nothing."""

    def __init__(self, log_path: Path, enabled: bool = True):
        self.path, self.enabled = Path(log_path), enabled
        self.filter = _Divert(self)
        self._handlers = []
        self._lock = threading.Lock()

    def keep(self, text: str) -> None:
        global details_kept
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = "".join(f"{stamp} library: {line}\n" for line in text.rstrip().splitlines())
        with self._lock:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(lines)
                details_kept = details_kept is not False
            except OSError:
                details_kept = False

    def _unraisable(self, u) -> None:
        where = f"exception ignored in {u.object!r}" if u.object is not None else \
            "exception ignored"
        self.keep(where + "\n" + "".join(traceback.format_exception(
            u.exc_type, u.exc_value, u.exc_traceback)))

    def _thread(self, a) -> None:
        if a.exc_type is SystemExit:
            return
        self.keep(f"exception in thread {a.thread.name if a.thread else '?'}\n" + "".join(
            traceback.format_exception(a.exc_type, a.exc_value, a.exc_traceback)))

    def __enter__(self):
        global details_kept
        details_kept = None
        if not self.enabled:
            return self
        from absl import logging as absl_logging

        self._hooks = sys.unraisablehook, threading.excepthook
        sys.unraisablehook, threading.excepthook = self._unraisable, self._thread
        targets = [absl_logging.get_absl_handler(), *logging.getLogger().handlers,
                   logging.lastResort]
        self._handlers = [h for h in dict.fromkeys(targets) if h is not None]
        for handler in self._handlers:
            handler.addFilter(self.filter)
        return self

    def __exit__(self, *exc):
        if not self.enabled:
            return
        gc.collect()  # abandoned coroutines report now, while the hooks still divert them
        sys.unraisablehook, threading.excepthook = self._hooks
        for handler in self._handlers:
            handler.removeFilter(self.filter)


def divert_until_exit(log_path: Path, enabled: bool = True) -> None:
    """``LibraryNoise`` for the rest of a process that ends with an error: the tasks and threads
    a failed save abandoned report as they are collected, after the run has returned."""
    LibraryNoise(log_path, enabled).__enter__()


def noise_note(final_line_kept: bool | None = None) -> str:
    """What the terminal's last line adds when train.log could not take the libraries'
    tracebacks or the line itself (``final_line_kept`` False); nothing otherwise."""
    if details_kept is False or final_line_kept is False:
        return " (train.log could not be written: the details behind this line are lost)"
    return ""
