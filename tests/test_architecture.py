"""The layout keeps its promises: the config is read by ``build`` alone and only once, the loop is
one flat function, functions stay short, and a new task is one registration away."""

import ast
import dataclasses
import types
from pathlib import Path
from typing import Any

import flax.linen as nn

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from msjax import build, evaluate, multiscale, optim, runs, tasks, train
from msjax.models import MODELS
from tests.helpers import tiny_config

PACKAGE = Path(__file__).resolve().parents[1] / "msjax"
# The modules that may read a config: the command line, the validator, the defaults, the
# builder, the saved-run loader (which hands config.json to the builder) and the experiments.
CONFIG_READERS = {"cli.py", "config_check.py", "defaults.py", "build.py", "runs.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != "configs":
            yield rel, ast.parse(path.read_text(), filename=str(path))


def _handed_to_build(tree) -> set[int]:
    """The ``config`` names passed straight to ``build.experiment`` (handing a config to the
    builder is not reading it)."""
    return {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "experiment"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "build"
            for arg in node.args if isinstance(arg, ast.Name)}


def _config_reads(tree) -> list[str]:
    """Imports of the config machinery and every use of a name or attribute ``config``
    (``jax.config``, JAX's own settings, and a config handed to ``build.experiment`` aside)."""
    found, handed = [], _handed_to_build(tree)
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "config"]
    only_handed = all(id(n) in handed for n in names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "ml_collections"
                      or a.name in ("msjax.defaults", "msjax.config_check")]
        elif isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if (node.module or "").split(".")[0] == "ml_collections" or (
                    node.module == "msjax" and names & {"defaults", "config_check"}) or \
                    node.module in ("msjax.defaults", "msjax.config_check"):
                found.append(f"from {node.module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Name) and node.id == "config" and id(node) not in handed:
            found.append(f"line {node.lineno}: name config")
        elif isinstance(node, ast.arg) and node.arg == "config" and not only_handed:
            found.append(f"line {node.lineno}: argument config")
        elif isinstance(node, ast.Attribute) and node.attr == "config" and not (
                isinstance(node.value, ast.Name) and node.value.id == "jax"):
            found.append(f"line {node.lineno}: attribute .config")
    return found


def test_no_module_below_build_reads_a_config():
    offenders = {str(rel): reads for rel, tree in _modules()
                 if str(rel) not in CONFIG_READERS and (reads := _config_reads(tree))}
    assert not offenders, offenders


def _values(obj, seen=None):
    """Every value reachable through dataclass fields, mappings and sequences."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _values(getattr(obj, f.name), seen)
    elif isinstance(obj, (dict, types.MappingProxyType)):
        for v in obj.values():
            yield from _values(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _values(v, seen)


def test_the_experiment_is_frozen_and_holds_no_config():
    exp = build.experiment(tiny_config(mode="fullmultiscale"))
    assert not any(isinstance(v, ml_collections.ConfigDict) for v in _values(exp))
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.stages = ()
    replanned = exp.replan(exp.stages[:-1])
    assert replanned.total_steps < exp.total_steps and exp.total_steps == 3  # a new one


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_run_builds_its_stages_and_learning_rate_schedule_once(tmp_path, monkeypatch):
    schedules = _counting(monkeypatch, multiscale, "make_schedule")
    rates = _counting(monkeypatch, optim, "learning_rate")
    train.train_and_evaluate(tiny_config(mode="fullmultiscale"), tmp_path / "run")
    assert (len(schedules), len(rates)) == (1, 1)


def test_an_adaptive_run_builds_its_schedule_once_plus_once_per_decision(tmp_path, monkeypatch):
    c = tiny_config(**{"mode": "fullmultiscale", "fms.schedule": "adaptive", "fms.window": 1,
                       "fms.min_improvement": 10.0, "fms.min_share": 0.01,
                       "fms.stage_weights": (4, 4, 1), "train.steps": 9})
    schedules = _counting(monkeypatch, multiscale, "make_schedule")
    rates = _counting(monkeypatch, optim, "learning_rate")
    train.train_and_evaluate(c, tmp_path / "run")
    decisions = (tmp_path / "run" / "train.log").read_text().count(" moves on at step ")
    assert decisions == 2 and len(schedules) == 1 and len(rates) == 1 + decisions


# --- the loop and function sizes ---------------------------------------------------------------

def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_functions_are_short_and_the_loop_is_one_flat_function():
    long = {f"{rel}:{fn.name}": fn.end_lineno - fn.lineno + 1
            for rel, tree in _modules() for fn in _functions(tree)
            if fn.end_lineno - fn.lineno + 1 > 120 and fn.name != "get_config"}
    assert not long, long
    source = (PACKAGE / "train.py").read_text()
    assert len(source.splitlines()) <= 300
    loop = next(fn for fn in _functions(ast.parse(source)) if fn.name == "train_and_evaluate")
    assert loop.end_lineno - loop.lineno + 1 <= 150
    assert not [n for n in ast.walk(loop) if isinstance(n, ast.FunctionDef) and n is not loop]


def test_nothing_inside_the_loop_closes_over_a_name_the_loop_rebinds():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    fn = next(f for f in _functions(tree) if f.name == "train_and_evaluate")
    loop = next(n for n in ast.walk(fn) if isinstance(n, ast.While))
    rebound = {t.id for n in ast.walk(loop) for t in ast.walk(n)
               if isinstance(n, (ast.Assign, ast.AugAssign, ast.For, ast.With, ast.NamedExpr))
               and isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    closures = [n for n in ast.walk(fn) if isinstance(n, ast.Lambda)]
    free = {n.id for lam in closures for n in ast.walk(lam.body) if isinstance(n, ast.Name)}
    assert rebound and not (free & rebound), free & rebound


# --- one registry shape: a task and a model, one registration each ------------------------------

@MODELS.register("gain", upsamples=False)
class Gain(nn.Module):
    """A toy model: one learned gain on the input."""

    dtype: Any = jnp.float32
    conv: Any = None

    @nn.compact
    def __call__(self, x, t=None, train=False):
        return x * self.param("gain", nn.initializers.ones, (1,))


@tasks.TASKS.register("darken")
def _darken(settings, *, operator_per_level):
    """A toy task: the input is the image at ``t_max`` of its brightness."""
    def corrupt(x, key, level):
        return x * settings.t_max, None
    return dict(corrupt=corrupt, time_conditioned=False)


def test_a_task_and_a_model_registered_in_a_test_train_and_evaluate(tmp_path):
    c = tiny_config(**{"task.name": "darken", "task.t_max": 0.5, "task.residual": False,
                       "model": "gain", "train.steps": 2, "log.eval_every": 2, "mode": "single",
                       "train.lr": 0.1})
    c.model_kwargs = {}
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert result["step"] == 2 and np.isfinite(result["psnr"])
    state, exp, _ = runs.load_state(tmp_path / "run", "latest")
    x = jnp.full((1, 16, 16, 3), 0.8)
    np.testing.assert_allclose(exp.task.corrupt(x, None, 0)[0], 0.4)
    rows = evaluate.evaluate_validation(state, exp)
    assert len(rows) == 4 and all(np.isfinite(r["psnr"]) for r in rows)
    assert "darken" in tasks.TASKS.names() and "gain" in MODELS.names()
    assert float(state.params["gain"][0]) > 1.0  # it learns to undo the darkening
