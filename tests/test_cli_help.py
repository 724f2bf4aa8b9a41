"""``--help`` of train.py and eval.py lists the script's own flags (absl shows only the main
module's key flags there, and the flags are defined in msjax/cli.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, names", [
    ("eval.py", ["--workdir", "--checkpoint", "--input_dir", "--target_dir", "--output_dir",
                 "--[no]overwrite", "--bad_images", "--tile", "--[no]self_ensemble",
                 "--crop_border", "--[no]y_channel", "--benchmark_root"]),
    ("train.py", ["--config", "--workdir"]),
])
def test_help_lists_the_scripts_own_flags(script, names):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr  # absl exits 1 after --help
    listed = proc.stdout.split("flags:", 1)[-1] if "flags:" in proc.stdout else proc.stdout
    for name in names:
        assert f"  {name}:" in listed, (name, proc.stdout[-2000:])
