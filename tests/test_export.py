"""Exported restorers (``python -m msjax.export``): the StableHLO artefact and the ONNX model,
reloaded from their files, reproduce ``run.restore`` on a real photo for a time-conditioned
run, a run trained on oneDNN's convolutions, an SR x2 run with the official normalisation and
an SR run that upsamples its input; what each card says; the refusals."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import skimage.data

from msjax import export, runs, train
from msjax.backend import onednn
from msjax.errors import MsjaxError
from tests.helpers import tiny_config
from tests.test_sr_eval import edsr_config

REPO = Path(__file__).resolve().parents[1]
try:
    import jax2onnx  # noqa: F401
    import onnxruntime
    HAVE_ONNX = True
except ImportError:
    HAVE_ONNX = False
try:
    import flatbuffers  # noqa: F401  (jax serializes its artefacts with it)
    HAVE_FLATBUFFERS = True
except ImportError:
    HAVE_FLATBUFFERS = False
try:
    onednn.load()
    HAVE_ONEDNN = True
except onednn.OneDNNUnavailable:
    HAVE_ONEDNN = False
WITHOUT_EXTRA = "the export extra is not installed: pip install -e '.[export]'"
needs_flatbuffers = pytest.mark.skipif(not HAVE_FLATBUFFERS, reason=WITHOUT_EXTRA)
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason=WITHOUT_EXTRA)
FORMATS = [pytest.param("stablehlo", marks=needs_flatbuffers),
           pytest.param("onnx", marks=needs_onnx)]
# Train quickly: one stage, two steps, a validation at the end (a best checkpoint).
QUICK = {"mode": "single", "train.steps": 2, "log.eval_every": 2}


@pytest.fixture(scope="module")
def photo():
    return skimage.data.astronaut().astype(np.float32) / 255


@pytest.fixture(scope="module")
def deblur_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("export") / "deblur"
    config = tiny_config(**QUICK, model="resnet")  # a model that reads t
    config.model_kwargs = dict(hidden=8, nlayers=1)
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("export") / "edsr"
    # The official loaders' Normalize, which the exported graph must apply itself.
    train.train_and_evaluate(edsr_config(**{"data.normalize": True, "data.mean": (0.4, 0.45, 0.5),
                                            "data.std": (0.25, 0.25, 0.3)}), workdir)
    return workdir


def run_exported(fmt, path, image, t=None, scale=1):
    """The file, loaded on its own, on one image: padded and cropped as the card says."""
    h, w = image.shape[:2]
    batch = export.pad_to_multiple(image[None])
    args = [batch] + ([np.full((1,), t, np.float32)] if t is not None else [])
    if fmt == "stablehlo":
        exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
        out = np.asarray(exported.call(*args))
    else:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, dict(zip([i.name for i in session.get_inputs()], args)))[0]
    return out[0, :h * scale, :w * scale]


def custom_calls(path) -> set:
    text = jax.export.deserialize(bytearray(Path(path).read_bytes())).mlir_module()
    return set(re.findall(r"custom_call @(\w+)", text))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_time_conditioned_run_exports_and_reproduces_restore(deblur_run, photo, tmp_path, fmt):
    done = export.export_run(deblur_run, fmt, out=tmp_path / f"deblur.{fmt}")
    run = runs.load_run(deblur_run)
    assert done.max_abs_diff <= export.TOLERANCE
    # A size no multiple of 8, another t than the card's default, another crop than the check's.
    image = photo[300:371, 100:153]
    for t in (run.experiment.task.eval_t, 0.2):
        out = run_exported(fmt, done.path, image, t=t)
        assert out.shape == image.shape
        np.testing.assert_allclose(out, run.restore(image, t=t), atol=export.TOLERANCE, rtol=0)
    # t matters: the file does not ignore it.
    assert np.abs(run_exported(fmt, done.path, image, t=0.0)
                  - run_exported(fmt, done.path, image, t=0.2)).max() > 0
    card = json.loads(done.card_path.read_text())
    assert done.card_path == tmp_path / f"deblur.{fmt}.json"
    assert card["file"] == f"deblur.{fmt}" and card["format"] == fmt
    assert card["step"] == run.step == 2 and card["checkpoint"] == "best"
    assert card["t_is_input"] and card["t_default"] == run.experiment.task.eval_t
    assert card["task"] == "deblur" and card["scale"] == 1 and card["model"] == "resnet"
    assert card["size_multiple"] == 8 and card["dynamic_height_width"]
    assert card["layout"] == "NHWC" and card["input_range"] == [0, 1]
    assert card["best_psnr"] > 10 and card["checked"]["max_abs_diff"] == done.max_abs_diff
    if fmt == "stablehlo":
        assert card["input_shapes"][0] == "(b, 8*h, 8*w, 3)"
        assert custom_calls(done.path) <= {"shape_assertion"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_sr_x2_run_exports_and_reproduces_restore(sr_run, photo, tmp_path, fmt):
    done = export.export_run(sr_run, fmt, checkpoint="latest", out=tmp_path / f"sr.{fmt}")
    run = runs.load_run(sr_run, "latest")
    image = photo[200:245, 60:93]
    out = run_exported(fmt, done.path, image, scale=2)
    assert out.shape == (90, 66, 3)
    np.testing.assert_allclose(out, run.restore(image), atol=export.TOLERANCE, rtol=0)
    assert done.card["scale"] == 2 and not done.card["t_is_input"]
    assert done.card["t_default"] is None and done.card["checkpoint"] == "latest"
    assert "mean [0.4, 0.45, 0.5], std [0.25, 0.25, 0.3]" in done.card["normalisation"]


@pytest.mark.skipif(not HAVE_ONEDNN, reason="oneDNN is not installed: pip install -e '.[onednn]'")
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_run_trained_on_onednn_exports_on_xla_convolutions(tmp_path_factory, photo, fmt):
    workdir = tmp_path_factory.mktemp("onednn") / "run"
    train.train_and_evaluate(tiny_config(**QUICK, **{"runtime.cpu_convolutions": "onednn"}),
                             workdir)
    run = runs.load_run(workdir)                    # restores on oneDNN, as it trained
    assert run.experiment.backend.choice == "onednn"
    done = export.export_run(workdir, fmt, out=workdir / f"model.{fmt}")
    if fmt == "stablehlo":
        assert custom_calls(done.path) <= {"shape_assertion"}   # no oneDNN custom call
    image = photo[:50, :70]
    np.testing.assert_allclose(run_exported(fmt, done.path, image, t=0.05),
                               run.restore(image, t=0.05), atol=export.TOLERANCE, rtol=0)


@needs_flatbuffers
def test_a_file_that_differs_from_restore_is_refused_and_removed(deblur_run, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference, even 0, is too much
    out = tmp_path / "refused.stablehlo"
    with pytest.raises(export.ExportError, match="differs from run.restore by .* the file is "
                       "removed") as e:
        export.export_run(deblur_run, "stablehlo", out=out)
    assert "\n" not in str(e.value)
    assert not out.exists() and not (tmp_path / "refused.stablehlo.json").exists()


@needs_flatbuffers
def test_a_step_the_run_does_not_keep_is_refused_with_the_steps_kept(deblur_run):
    with pytest.raises(MsjaxError, match=r"--checkpoint 7: .* keeps no checkpoint of that step; "
                       r"it keeps 1, 2 "):
        export.export_run(deblur_run, "stablehlo", checkpoint="7")
    done = export.export_run(deblur_run, "stablehlo", checkpoint="1")
    assert done.card["step"] == 1 and done.path.name == "resnet-step1.stablehlo"
    assert done.path.parent == deblur_run / "export"


def test_missing_run_unknown_format_and_missing_extra_are_one_line(tmp_path, deblur_run,
                                                                   monkeypatch):
    with pytest.raises(export.ExportError, match="run directory .* not found"):
        export.export_run(tmp_path / "nothing", "stablehlo")
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "config.json").write_text((deblur_run / "config.json").read_text())
    with pytest.raises(MsjaxError, match="no checkpoint in .*: the run saved none yet"):
        export.export_run(tmp_path / "untrained", "stablehlo")
    with pytest.raises(MsjaxError, match="--checkpoint newest: not best, latest or a step "
                                         "number; the run keeps steps 1, 2"):
        export.export_run(deblur_run, "stablehlo", checkpoint="newest")
    with pytest.raises(export.ExportError, match="--format 'tflite' is unknown"):
        export.export_run(deblur_run, "tflite")
    with pytest.raises(export.ExportError, match="--size '60x40'"):
        export.parse_size("60x40")
    assert export.parse_size("64x40") == (64, 40)
    # An import fails as if the package were not installed.
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    with pytest.raises(export.ExportError, match=r"needs jax2onnx .* pip install 'msjax\[export"):
        export.export_run(deblur_run, "onnx")
    monkeypatch.setitem(sys.modules, "flatbuffers", None)
    with pytest.raises(export.ExportError, match=r"flatbuffers .* pip install 'msjax\[export"):
        export.export_run(deblur_run, "stablehlo")


def test_the_command_line_prints_one_line_and_exits_2(deblur_run):
    done = subprocess.run([sys.executable, "-m", "msjax.export", str(deblur_run), "--format",
                           "stablehlo", "--checkpoint", "9"], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --checkpoint 9: {deblur_run / 'checkpoints'} keeps no checkpoint of that step; "
        "it keeps 1, 2 (or pass best, latest)"]


@needs_onnx
@needs_flatbuffers
def test_an_upsampling_sr_run_exports_to_onnx_at_a_fixed_size_only(tmp_path, photo):
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(**QUICK, **{
        "task.name": "sr", "task.scale": 2, "task.upsample_input": True, "data.patch": 32}),
        workdir)
    with pytest.raises(export.ExportError, match="only at a fixed size .* pass --size HxW"):
        export.export_run(workdir, "onnx")
    assert not list((workdir / "export").glob("*.onnx"))
    done = export.export_run(workdir, "onnx", size=(40, 32))
    run = runs.load_run(workdir)
    image = photo[7:47, 90:122]
    np.testing.assert_allclose(run_exported("onnx", done.path, image, scale=2),
                               run.restore(image), atol=export.TOLERANCE, rtol=0)
    assert not done.card["dynamic_height_width"] and not done.card["dynamic_batch"]
    assert done.card["upsampling_of_input"] == "bilinear, inside the exported graph"
    # StableHLO keeps the sizes free for the same run.
    free = export.export_run(workdir, "stablehlo")
    image = photo[:37, :29]
    np.testing.assert_allclose(run_exported("stablehlo", free.path, image, scale=2),
                               run.restore(image), atol=export.TOLERANCE, rtol=0)
