"""Checkpoints: damaged ones are caught by their digest, set aside and fallen back from; a run with
nothing readable is refused; a failed save is one StorageError, never a hang."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from msjax import checkpoints
from tests.helpers import can_mount_tmpfs
from msjax.errors import RunDirError, StorageError

REPO = Path(__file__).resolve().parents[1]


@flax.struct.dataclass
class State:
    step: jax.Array
    params: dict
    opt_state: object
    model_state: dict


def make_state(seed, n=64):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal((n, n)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal((n,)), jnp.float32)}
    opt_state = optax.adam(1e-3).init(params)
    return State(step=jnp.int32(seed), params=params, opt_state=opt_state, model_state={})


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(checkpoints._savable(state))]


def assert_states_equal(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def save_steps(directory, steps, n=64):
    ckpt = checkpoints.Checkpoints(directory)
    for s in steps:
        ckpt.save(s, make_state(s, n), {"step": s})
    ckpt.close()
    return {s: make_state(s, n) for s in steps}


def data_files(step_dir):
    return sorted((f for f in step_dir.rglob("*") if f.is_file() and "/d/" in str(f)),
                  key=lambda f: f.stat().st_size)


def garble(path, offset, nbytes=4096, seed=0):
    """Overwrites ``nbytes`` in place: the file keeps its size, as after a silent disk fault."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(seed).bytes(min(nbytes, size - offset)))
    assert path.stat().st_size == size


def orbax_reads_it_silently(directory, step, saved):
    """Restores with Orbax alone (no digest): True if it loads without error but wrong values."""
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True), item_names=("state", "meta"))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, checkpoints._savable(saved))
    try:
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception:
        return False
    finally:
        manager.close()
    got = [np.asarray(x) for x in jax.tree.leaves(out["state"])]
    return not all(np.array_equal(g, e, equal_nan=True) for g, e in zip(got, leaves(saved)))


def garble_undetected_by_orbax(directory, step, saved):
    """Garbles 4 KB of the step's largest data file at the first offset Orbax reads silently."""
    big = data_files(directory / str(step))[-1]
    original = big.read_bytes()
    for offset in range(0, len(original) - 4096, 2048):
        garble(big, offset)
        if orbax_reads_it_silently(directory, step, saved):
            return offset
        big.write_bytes(original)
    raise AssertionError("no 4 KB garble that Orbax reads silently was found")


# --- integrity -------------------------------------------------------------------------------


def test_round_trip_is_bitwise_and_the_meta_carries_the_digest(tmp_path):
    saved = save_steps(tmp_path / "ck", [1, 2])
    ckpt = checkpoints.Checkpoints(tmp_path / "ck")
    state, meta, step = ckpt.restore_latest(make_state(0))
    assert step == 2 and meta["step"] == 2
    assert meta[checkpoints.DIGEST_KEY] == checkpoints.state_digest(
        checkpoints._savable(saved[2]))
    assert_states_equal(state, saved[2])
    assert ckpt.set_aside == [] and ckpt.steps() == [1, 2]
    ckpt.close()


def test_digest_depends_on_values_and_not_on_device_layout():
    state = checkpoints._savable(make_state(1))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    assert checkpoints.state_digest(sharded) == checkpoints.state_digest(state)
    bumped = jax.tree.map(lambda x: x, state)
    bumped["params"]["w"] = state["params"]["w"].at[3, 5].add(1e-7)
    assert checkpoints.state_digest(bumped) != checkpoints.state_digest(state)
    retyped = {**state, "step": state["step"].astype(jnp.uint32)}  # same bytes, other dtype
    assert checkpoints.state_digest(retyped) != checkpoints.state_digest(state)


def test_garble_orbax_misses_is_caught_set_aside_and_the_step_saved_again(tmp_path):
    directory = tmp_path / "ck"
    saved = save_steps(directory, [1, 2], n=256)
    garble_undetected_by_orbax(directory, 2, saved[2])
    messages = []
    ckpt = checkpoints.Checkpoints(directory)
    state, _, step = ckpt.restore_latest(make_state(0, 256), on_fallback=messages.append)
    assert step == 1
    assert_states_equal(state, saved[1])
    assert len(messages) == 1 and "checkpoint 2" in messages[0]
    assert "does not match the digest" in messages[0] and "damaged-2-1" in messages[0]
    assert ckpt.set_aside == [checkpoints.SetAside(2, directory / "damaged-2-1",
                                                   ckpt.set_aside[0].reason)]
    assert (directory / "damaged-2-1" / "WHY.txt").exists() and ckpt.steps() == [1]
    # Training on from step 1 saves step 2 again: no collision with the damaged copy.
    ckpt.save(2, saved[2], {"step": 2})
    ckpt.close()
    again = checkpoints.Checkpoints(directory)
    state, _, step = again.restore_latest(make_state(0, 256))
    assert step == 2
    assert_states_equal(state, saved[2])
    again.close()


def test_truncated_newest_falls_back_and_a_second_damage_gets_a_new_folder(tmp_path):
    directory = tmp_path / "ck"
    saved = save_steps(directory, [1, 2])
    (directory / "damaged-2-1").mkdir()  # set aside by an earlier run
    big = data_files(directory / "2")[-1]
    os.truncate(big, big.stat().st_size // 2)
    ckpt = checkpoints.Checkpoints(directory)
    state, _, step = ckpt.restore_latest(make_state(0))
    assert step == 1 and ckpt.set_aside[0].folder.name == "damaged-2-2"
    assert "unreadable" in ckpt.set_aside[0].reason
    assert_states_equal(state, saved[1])
    ckpt.close()


def test_nothing_readable_is_refused_listing_each_step_and_changing_nothing(tmp_path):
    directory = tmp_path / "ck"
    saved = save_steps(directory, [1, 2], n=256)
    garble_undetected_by_orbax(directory, 2, saved[2])
    os.truncate(data_files(directory / "1")[-1], 100)
    before = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
    ckpt = checkpoints.Checkpoints(directory)
    with pytest.raises(RunDirError) as info:
        ckpt.restore_latest(make_state(0, 256))
    message = str(info.value)
    assert "step 1: unreadable" in message and "step 2: its state does not match" in message
    assert "Nothing was changed" in message and "--workdir" in message
    assert "\n" not in message
    ckpt.close()
    assert sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) == before


def test_only_set_aside_folders_left_is_refused_not_a_fresh_start(tmp_path):
    directory = tmp_path / "ck"
    save_steps(directory, [1])
    (directory / "1").rename(directory / "damaged-1-1")
    ckpt = checkpoints.Checkpoints(directory)
    with pytest.raises(RunDirError, match="set aside earlier: damaged-1-1"):
        ckpt.restore_latest(make_state(0))
    ckpt.close()
    empty = checkpoints.Checkpoints(tmp_path / "new")
    assert empty.restore_latest(make_state(0)) is None  # a new run: nothing to resume
    empty.close()


def test_restore_before_sets_aside_the_step_and_newer_so_they_can_be_saved_again(tmp_path):
    directory = tmp_path / "ck"
    ckpt = checkpoints.Checkpoints(directory)
    saved = {s: make_state(s) for s in (1, 2, 3)}
    for s in (1, 2, 3):  # LatestN(2) keeps the newest two: 2 and 3
        ckpt.save(s, saved[s], {"step": s})
    ckpt.wait()
    assert ckpt.steps() == [2, 3]
    messages = []
    state, _, step = ckpt.restore_before(3, make_state(0), on_fallback=messages.append)
    assert step == 2
    assert_states_equal(state, saved[2])
    assert messages and "checkpoint 3" in messages[0] and "non-finite" in messages[0]
    assert ckpt.steps() == [2] and (directory / "damaged-3-1").is_dir()
    assert ckpt.restore_before(2, make_state(0)) is None  # nothing older: the caller decides
    ckpt.save(3, saved[3], {"step": 3})
    ckpt.close()


def test_read_only_falls_back_without_renaming_and_restore_names_the_damage(tmp_path):
    directory = tmp_path / "ck"
    saved = save_steps(directory, [1, 2], n=256)
    garble_undetected_by_orbax(directory, 2, saved[2])
    ckpt = checkpoints.Checkpoints(directory, read_only=True)
    messages = []
    assert ckpt.restore_latest(make_state(0, 256), on_fallback=messages.append).step == 1
    assert "left in place (read-only)" in messages[0] and (directory / "2").is_dir()
    with pytest.raises(checkpoints.DamagedCheckpointError, match="checkpoint 2 .* is damaged"):
        ckpt.restore(2, make_state(0, 256))
    ckpt.close()


# --- storage faults --------------------------------------------------------------------------


def _failing_makedirs(code):
    real = os.makedirs

    def makedirs(path, *args, **kwargs):
        if ".orbax-checkpoint-tmp" in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)
    return makedirs


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_failed_save_is_one_storage_error_naming_path_and_last_good(tmp_path, monkeypatch, code):
    # The filesystem refusing the step's folder (Orbax makes it with os.makedirs), as on a
    # read-only remount, a folder without write permission, or a full disk.
    directory = tmp_path / "ck"
    ckpt = checkpoints.Checkpoints(directory)
    ckpt.save(1, make_state(1), {"step": 1})
    ckpt.wait()
    monkeypatch.setattr(os, "makedirs", _failing_makedirs(code))
    with pytest.raises(StorageError) as info:
        ckpt.save(2, make_state(2), {"step": 2})
    message = str(info.value)
    assert f"saving checkpoint 2 to {directory} failed" in message
    assert os.strerror(code) in message and "last good checkpoint is step 1" in message
    assert "\n" not in message
    with pytest.raises(StorageError):  # the run must stop: later saves refuse too
        ckpt.save(3, make_state(3), {"step": 3})
    ckpt.close()  # raised already: close neither raises again nor waits
    monkeypatch.undo()
    assert checkpoints.Checkpoints(directory, read_only=True).steps() == [1]


WORKER = textwrap.dedent("""
    import os, resource, signal, sys, time
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    from test_checkpoints import make_state
    from msjax import checkpoints
    from msjax.errors import StorageError
    directory, mode = sys.argv[1], sys.argv[2]
    ckpt = checkpoints.Checkpoints(directory)
    ckpt.save(1, make_state(1, 256), {{"step": 1}})
    ckpt.wait()
    if mode == "fsize":  # every file write past 64 KB fails (EFBIG), for root too
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
    elif mode == "remount-ro":
        os.system("mount -o remount,ro " + directory)
    start = None
    try:
        ckpt.save(2, make_state(2, 256), {{"step": 2}})
        start = time.time()
        while time.time() - start < 60:  # no further save: the loop only polls
            ckpt.raise_if_save_failed()
            time.sleep(0.05)
        ckpt.wait()
        print("NO ERROR")
    except StorageError as e:
        when = "in save" if start is None else f"after {{time.time() - start:.1f}} s"
        print(f"STORAGE ERROR {{when}}:", e, flush=True)
    finally:
        ckpt.close()
""")


def run_worker(directory, mode, wrap=()):
    code = WORKER.format(repo=str(REPO), tests=str(REPO / "tests"))
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONPATH=str(REPO))
    # The timeout is the point: a failed save used to leave Orbax threads waiting minutes.
    return subprocess.run([*wrap, sys.executable, "-c", code, str(directory), mode], env=env,
                          capture_output=True, text=True, timeout=120)


def check_storage_failure(proc, directory):
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("STORAGE ERROR")]
    assert len(lines) == 1, proc.stdout + proc.stderr[-3000:]
    assert f"to {directory} failed" in lines[0]
    assert "the last good checkpoint is step 1" in lines[0]
    return lines[0]


def test_a_write_failing_in_the_background_stops_the_process_promptly(tmp_path):
    directory = tmp_path / "ck"
    proc = run_worker(directory, "fsize")
    line = check_storage_failure(proc, directory)
    assert "(File too large, EFBIG)" in line
    assert float(line.split("after ")[1].split(" s")[0]) < 10  # seen by polling, no next save
    # The failed save left its temporary folder; the next start removes it and says so.
    assert list(directory.glob("*.orbax-checkpoint-tmp*"))
    messages = []
    ckpt = checkpoints.Checkpoints(directory, on_message=messages.append)
    assert messages and "partial checkpoint folder" in messages[0]
    ckpt.save(2, make_state(2, 256), {"step": 2})
    ckpt.close()
    assert not list(directory.glob("*.orbax-checkpoint-tmp*"))
    assert checkpoints.Checkpoints(directory, read_only=True).steps() == [1, 2]


needs_mount = pytest.mark.skipif(
    sys.platform != "linux" or not can_mount_tmpfs(),
    reason="needs a private mount namespace (unshare -m, root) to mount a small tmpfs; "
           "test_a_write_failing_in_the_background_stops_the_process_promptly covers the "
           "same path without it")


@needs_mount
@pytest.mark.parametrize("mode", ["full", "remount-ro"])
def test_real_full_and_read_only_filesystems(tmp_path, mode):
    directory = tmp_path / "ck"
    directory.mkdir()
    size = "400k" if mode == "full" else "20m"  # one 256x256 checkpoint is about 260 KB
    mount = f"mount -t tmpfs -o size={size} tmpfs {directory} && exec \"$@\""
    proc = run_worker(directory, mode, wrap=("unshare", "-m", "sh", "-c", mount, "sh"))
    line = check_storage_failure(proc, directory)
    assert ("(No space left on device, ENOSPC)" if mode == "full"
            else "(Read-only file system, EROFS)") in line
