"""The workdir lock: a second trainer is refused naming the holder; a dead holder's lock is taken
over with a message; a holder on another host is judged by its heartbeat."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msjax.errors import RunDirError
from msjax.lock import WorkdirLock

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from msjax.lock import WorkdirLock
lock = WorkdirLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
if sys.argv[2] == "forever":
    time.sleep(600)
lock.release()
"""


def start_holder(workdir, mode="forever"):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), mode],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def test_second_process_is_refused_naming_the_holder_then_takes_over_after_sigkill(tmp_path):
    holder = start_holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirError) as info:
            WorkdirLock(tmp_path / "run").acquire()
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} (since 20" in message
        assert "in use" in message and "--workdir" in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    messages = []
    with WorkdirLock(tmp_path / "run", on_message=messages.append) as lock:
        assert lock.held
        assert len(messages) == 1 and f"pid {holder.pid}" in messages[0]
        assert "taking over" in messages[0] and "no longer running" in messages[0]
        record = json.loads((tmp_path / "run" / "lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert (tmp_path / "run" / "lock").read_text() == ""  # released: no holder named


def test_a_run_that_ended_cleanly_leaves_no_holder(tmp_path):
    holder = start_holder(tmp_path / "run", mode="release")
    assert holder.wait(timeout=60) == 0
    messages = []
    with WorkdirLock(tmp_path / "run", on_message=messages.append):
        pass
    assert messages == []


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    with WorkdirLock(tmp_path):
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            WorkdirLock(tmp_path).acquire()
    with WorkdirLock(tmp_path):  # released: free again
        pass


def write_record(workdir, host, pid=12345, age_s=0.0):
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "lock"
    path.write_text(json.dumps({"host": host, "pid": pid, "start": 1,
                                "since": "2030-01-01T00:00:00+00:00"}))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_holder_on_another_host_is_refused_while_its_heartbeat_is_fresh(tmp_path):
    # Where flock does not cross hosts the file is free to us; the record and mtime decide.
    write_record(tmp_path, "elsewhere", age_s=10)
    with pytest.raises(RunDirError, match="pid 12345 on host elsewhere .*heartbeat 10 s ago"):
        WorkdirLock(tmp_path, stale_after_s=60).acquire()
    write_record(tmp_path, "elsewhere", age_s=120)
    messages = []
    with WorkdirLock(tmp_path, stale_after_s=60, on_message=messages.append):
        assert "heartbeat stopped 120 s ago" in messages[0] and "host elsewhere" in messages[0]


def test_a_record_naming_a_dead_pid_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_record(tmp_path, socket.gethostname(), pid=dead.pid)
    messages = []
    with WorkdirLock(tmp_path, on_message=messages.append):
        assert f"pid {dead.pid}" in messages[0] and "no longer running" in messages[0]


def test_heartbeat_keeps_the_record_fresh(tmp_path):
    with WorkdirLock(tmp_path, heartbeat_s=0.05):
        path = tmp_path / "lock"
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        deadline = time.time() + 10
        while time.time() - path.stat().st_mtime > 100 and time.time() < deadline:
            time.sleep(0.02)
        assert time.time() - path.stat().st_mtime < 100
