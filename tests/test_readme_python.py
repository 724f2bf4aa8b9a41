"""Every ```python block of README.md and docs/python_api.md runs as written, in a folder holding
the run the blocks load (``runs/quickstart``, trained here in a few steps of a tiny config) and
the ONNX file the README's export command writes (``model.onnx``, where the export extra is
installed)."""

import re
from pathlib import Path

import pytest

from msjax import export, train
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", ROOT / "docs" / "python_api.md",
         ROOT / "docs" / "import_export.md")
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUNS = ("runs/quickstart",)          # what the blocks load: trained before they run


def _blocks():
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            found.append(pytest.param(page, line, m.group(1),
                                      id=f"{page.relative_to(ROOT)}:{line}"))
    return found


BLOCKS = _blocks()


def test_the_pages_have_python_blocks_and_load_only_known_runs():
    assert len(BLOCKS) >= 2
    loaded = {m for b in BLOCKS for m in re.findall(r"load_run\(\"([^\"]+)\"", b.values[2])}
    assert loaded <= set(RUNS), f"train {sorted(loaded - set(RUNS))} in this test's fixture"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with the runs the blocks load, trained for a few steps."""
    folder = tmp_path_factory.mktemp("readme")
    for run in RUNS:
        train.train_and_evaluate(tiny_config(), folder / run)
    try:
        import jax2onnx  # noqa: F401
    except ImportError:
        pass  # the blocks that run model.onnx skip
    else:  # python -m msjax.export runs/quickstart --format onnx --out model.onnx
        export.export_run(folder / "runs/quickstart", "onnx", out=folder / "model.onnx")
    return folder


@pytest.mark.parametrize("page, line, code", BLOCKS)
def test_a_python_block_runs_as_written(folder, monkeypatch, page, line, code):
    monkeypatch.chdir(folder)
    if "model.onnx" in code and not (folder / "model.onnx").exists():
        pytest.skip("the export extra is not installed: pip install -e '.[export]'")
    # Running the page's code is the point. Compiled under the page's name and line, so a
    # failure points at the block.
    program = compile("\n" * (line - 1) + code, str(page), "exec")
    exec(program, {"__name__": "__main__"})  # noqa: S102
