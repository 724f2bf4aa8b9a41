"""bench/gpu_check.py, shrunk (--tiny) on the CPU: the same code the GPU session runs writes
every row with real figures, and a spent time budget still leaves the quickstart and a clean
record of what was skipped."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

STEP_ROWS = [s["id"] for s in gpu_check.row_specs(tiny=True) if s["id"] != "quickstart"]


def _records(out: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    return lines[0], lines[1:]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    return out


def test_the_tiny_run_writes_every_row_with_finite_positive_timings(tiny_run):
    head, rows = _records(tiny_run)
    assert head["kind"] == "header" and not head["gpu"]
    assert head["line"].startswith("gpu_check: no GPU visible, running on cpu")
    assert [r["id"] for r in rows] == ["quickstart"] + STEP_ROWS
    assert all(r["status"] == "ok" and _positive(r["seconds"]) for r in rows)
    for r in rows[1:]:
        assert _positive(r["ms_k1"]) and _positive(r["ms_k"]) and r["k"] >= 1
        assert _positive(r["flops"]) and _positive(r["gflops_k1"])
        assert _positive(r["gflops_trained"])
        assert r["torch"]  # why PyTorch did or did not run beside it
    fms = [r for r in rows[1:] if r["mode"] == "fullmultiscale"]
    assert [r["grid"] for r in fms] == [4, 8, 16]  # coarse first, one row per stage
    assert [len(r["batches"]) for r in fms] == [1, 2, 3]
    assert {r["dtype"] for r in rows[1:]} == {"float32", "bfloat16"}
    table = (tiny_run / "gpu_check.md").read_text()
    assert head["line"] in table and all(f"| {name} |" in table for name in STEP_ROWS)


def test_the_quickstart_row_has_its_psnr_compile_share_and_steps_per_call(tiny_run):
    quick = _records(tiny_run)[1][0]
    assert quick["id"] == "quickstart" and quick["steps"] == 6
    assert math.isfinite(quick["psnr"]) and math.isfinite(quick["input_psnr"])
    assert 0.0 <= quick["compile_share"] <= 1.0 and quick["compile_s"] > 0
    assert len(quick["steps_per_call"]) == 2 and all(k >= 1 for k in quick["steps_per_call"])
    assert "compiling:" in (tiny_run / "quickstart_train.log").read_text()


def test_a_spent_budget_keeps_the_quickstart_and_marks_the_rest_skipped(tmp_path):
    assert gpu_check.main(["--tiny", "--budget_s", "0", "--out", str(tmp_path)]) == 0
    _, rows = _records(tmp_path)
    assert [r["id"] for r in rows] == ["quickstart"] + STEP_ROWS
    assert rows[0]["status"] == "ok" and math.isfinite(rows[0]["psnr"])
    assert all(r["status"].startswith("skipped for time") for r in rows[1:])
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| quickstart |" in table
    assert all(f"- {name}: skipped" in table for name in STEP_ROWS)
