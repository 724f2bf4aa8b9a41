"""The persistent compilation cache: a second process loads what the first compiled, a rerun of a
run compiles nothing and trains the same bits, and a folder that cannot be used is a warning."""

import csv
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax
import numpy as np

from msjax import runs, train
from msjax.backend import compile_cache
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import sys, types
    from msjax.backend import compile_cache
    cache = compile_cache.enable(types.SimpleNamespace(compilation_cache=sys.argv[1],
                                                       compilation_cache_gib=1.0))
    import jax, jax.numpy as jnp
    jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(7)).block_until_ready()
    jax.jit(lambda x: x @ x.T)(jnp.ones((4, 4))).block_until_ready()
    print(cache.describe())
    print("counts", *cache.counts())
    print("problems", len(cache.problems))
""")


def _probe(tmp_path, setting):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(MSJAX_CACHE=str(tmp_path / "msjax_cache"), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", PROBE, setting], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    loaded, compiled = map(int, re.search(r"counts (\d+) (\d+)", out).groups())
    return out, loaded, compiled


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    out, loaded, compiled = _probe(tmp_path, "")  # the default folder under $MSJAX_CACHE
    folder = tmp_path / "msjax_cache" / "xla"
    assert f"compilation cache: {folder}" in out and loaded == 0 and compiled >= 2
    assert any(folder.iterdir())
    _, loaded_again, compiled_again = _probe(tmp_path, "")
    assert (loaded_again, compiled_again) == (compiled, 0)
    out, loaded, _ = _probe(tmp_path, "none")
    assert "compilation cache: off" in out and loaded == 0


def test_a_folder_that_cannot_be_made_is_a_warning_and_everything_compiles(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    out, loaded, compiled = _probe(tmp_path, str(tmp_path / "a_file" / "cache"))
    assert "compilation cache: off (the compilation cache folder" in out
    assert "cannot be made" in out and loaded == 0 and compiled >= 2


def test_a_rerun_loads_every_step_program_and_trains_the_same_bits(tmp_path):
    c = tiny_config(mode="fullmultiscale")
    train.train_and_evaluate(c, tmp_path / "first")
    train.train_and_evaluate(c, tmp_path / "second")  # a new workdir: everything again
    log = (tmp_path / "second" / "train.log").read_text()
    loaded, compiled = map(int, re.search(
        r"programs: (\d+) loaded from the compilation cache, (\d+) compiled", log).groups())
    assert loaded > 0 and compiled == 0
    assert re.search(r"compiling: [\d.]+ s of the run's [\d.]+ s \(\d+%\)", log)
    first, second = (runs.load_state(tmp_path / name, "latest")[0] for name in ("first",
                                                                                "second"))
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_next_stage_compiled_ahead_trains_the_same_bits(tmp_path):
    ahead = tiny_config(**{"mode": "fullmultiscale", "runtime.compile_ahead": "true"})
    train.train_and_evaluate(ahead, tmp_path / "ahead")
    train.train_and_evaluate(tiny_config(**{"mode": "fullmultiscale",
                                            "runtime.compile_ahead": "false"}),
                             tmp_path / "in_turn")
    log = (tmp_path / "ahead" / "train.log").read_text()
    # Stage 1 during the set-up, stages 2 and 3 while the one before trained.
    assert log.count("compiled ahead in") == 3
    assert "compiled ahead" not in (tmp_path / "in_turn" / "train.log").read_text()
    a, b = (runs.load_state(tmp_path / name, "latest")[0] for name in ("ahead", "in_turn"))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The ledger keeps compile time waited for apart from compile time hidden behind training.
    hidden = {name: [float(r["compile_hidden_seconds"]) for r in csv.DictReader(
        open(tmp_path / name / "train.csv"))] for name in ("ahead", "in_turn")}
    assert set(hidden["in_turn"]) == {0.0} and min(hidden["ahead"]) >= 0.0


def test_compile_time_ahead_counts_only_where_it_was_waited_for():
    cache = compile_cache.CompileCache()
    start = cache.snapshot()
    event = "/jax/core/compile/backend_compile_duration"
    cache._on_duration(event, 1.0)  # in the training thread: waited for
    ahead = threading.Thread(target=cache._on_duration, args=(event, 3.0),
                             name=compile_cache.AHEAD_THREAD + "_0")
    ahead.start(), ahead.join()
    assert cache.snapshot()[2:] == (1.0, 3.0)
    cache.add_waited(0.5)  # the loop then waited half a second for the program compiled ahead
    assert cache.snapshot()[2:] == (1.5, 2.5)
    line = cache.summary(start, wall_seconds=10.0)
    assert line.startswith("compiling: 1.5 s of the run's 10.0 s (15%) waited for, 2.5 s more "
                           "compiled ahead beside training")
