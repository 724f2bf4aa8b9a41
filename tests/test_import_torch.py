"""Importing PyTorch weights (msjax.import_torch) against PyTorch's own outputs.

The fixtures (tests/fixtures/torch_import/, made by bench/make_import_fixtures.py with torch)
hold random-weight state dicts at reduced depth in every file form (an official checkpoint dict
as zip, legacy and ``module.``-prefixed files, safetensors, BasicSR ``params`` / ``params_ema``)
and PyTorch's outputs on a crop of a photo. msjax's outputs through ``run.restore`` must agree
within REL_TOL of the output's largest value: float32 convolutions in another order differ by
~1e-6 relative (measured: at most ~1e-6 here), while a wrong layout, channel order or constant
moves outputs by about the 0.1 the fixtures' networks add to the image.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from msjax import checkpoints, cli, errors, import_torch, runs, warmstart
from msjax.configs import denoise_cifar10, sr_builtin_x2, sr_urban100
from msjax.models import create_model, torch_keys

FIXTURES = Path(__file__).parent / "fixtures" / "torch_import"
REL_TOL = 1e-5
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURES / "expected.npz"))


def _mge(model, **kwargs):
    c = denoise_cifar10.get_config("official")
    c.model, c.model_kwargs = model, kwargs
    return c


def _srnet():
    return sr_urban100.get_config("srnet")


def _sr(model, scale, **kwargs):
    c = sr_builtin_x2.get_config()
    c.task.scale = scale
    c.model, c.model_kwargs = model, dict(scale=scale, **kwargs)
    c.data.valid_images = 2
    c.data.valid_patch = 32 * scale
    return c


CASES = {
    # name: (file, expected key, config, scheme the keys show)
    "unet": ("unet_official.pt", "unet",
             lambda: _mge("unet", model_channels=16, channel_mult=(1, 2)), "official"),
    "resnet": ("resnet_official_legacy.pth", "resnet",
               lambda: _mge("resnet", hidden=128, nlayers=1), "official"),
    "srnet": ("srnet_official_module.pth", "srnet", _srnet, "official"),
    **{f"edsr_x{s}": (f, f"edsr_x{s}", lambda s=s: _sr("edsr", s, n_resblocks=2, n_feats=16,
                                                       res_scale=0.1), "edsr")
       for s, f in ((2, "edsr_x2.safetensors"), (4, "edsr_x4.pt"))},
    **{f"basicsr_x{s}": (f"basicsr_edsr_x{s}.pth", f"basicsr_x{s}",
                         lambda s=s: _sr("edsr", s, n_resblocks=2, n_feats=16), "basicsr")
       for s in (2, 4)},
    **{f"rcan_x{s}": (f"rcan_x{s}.pt", f"rcan_x{s}",
                      lambda s=s: _sr("rcan", s, n_resgroups=2, n_resblocks=2, n_feats=16,
                                      reduction=4), "edsr") for s in (2, 4)},
    **{f"msrn_x{s}": (f"msrn_x{s}.pt", f"msrn_x{s}",
                      lambda s=s: _sr("msrn", s, n_blocks=2, n_feats=8), "edsr")
       for s in (2, 4)},
}


def _no_score(config):
    """The config with validation data that is not at hand (faster: scoring is tested apart)."""
    config.data.source = "folder"
    config.data.valid_dir = "/nonexistent-msjax-valid"
    config.data.train_dir = "/nonexistent-msjax-train"
    return config


@pytest.mark.parametrize("name", list(CASES))
def test_imported_weights_restore_as_pytorch_does(name, expected, tmp_path):
    file, key, make_config, scheme = CASES[name]
    config = make_config() if name == "edsr_x2" else _no_score(make_config())
    notes = []
    result = import_torch.import_file(FIXTURES / file, config, tmp_path / "run",
                                      write=notes.append)
    assert result["scheme"] == scheme
    run = runs.load_run(tmp_path / "run")
    image, want = expected[f"{key}/input"], expected[f"{key}/output"]
    t = float(expected[f"{key}/t"]) if run.experiment.task.time_conditioned else None
    got = run.restore(image, t=t)
    assert got.shape == want.shape
    error = float(np.abs(got - want).max())
    assert error <= REL_TOL * float(np.abs(want).max()), f"{name}: max |msjax - torch| {error}"
    # The networks change the image far beyond the tolerance: agreement is not a coincidence.
    scale = want.shape[0] // image.shape[0]
    assert np.abs(want - image.repeat(scale, 0).repeat(scale, 1)).mean() > 0.02
    if scheme == "official":
        assert result["wrapper"] == "model_state_dict" and "iter" in result
    if name == "srnet":
        assert result["prefix"] == "module."
    if name == "edsr_x2":  # builtin data is at hand: scored, the run's best checkpoint
        assert np.isfinite(result["psnr"]) and any("validation:" in n for n in notes)
        ckpt = checkpoints.Checkpoints(tmp_path / "run" / "checkpoints", read_only=True)
        try:
            assert ckpt.best_step() == 0
        finally:
            ckpt.close()
    else:
        assert result["psnr"] is None and any(n.startswith("not scored") for n in notes)


def _flat_shapes(model, sample_side: int) -> dict:
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                               jnp.zeros((1, sample_side, sample_side, 3)), jnp.zeros((1,)))
    import flax

    return {k: tuple(v.shape) for k, v in
            flax.traverse_util.flatten_dict(variables["params"], sep="/").items()}


FULL = {  # the full-size PyTorch networks, by the msjax model that takes them
    "unet_official": ("unet", {}, "official"),
    "resnet_official": ("resnet", {}, "official"),
    "resnet_sr_official": ("resnet", dict(hidden=100, nlayers=9, time_embed=False), "official"),
    "srnet_official": ("srnet", {}, "official"),
    **{f"edsr_x{s}": ("edsr", dict(scale=s), "edsr") for s in (2, 4)},
    **{f"basicsr_edsr_x{s}": ("edsr", dict(scale=s), "basicsr") for s in (2, 4)},
    **{f"rcan_x{s}": ("rcan", dict(scale=s), "edsr") for s in (2, 4)},
    **{f"msrn_x{s}": ("msrn", dict(scale=s), "edsr") for s in (2, 4)},
}


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_mapping_names_every_pytorch_key_with_its_shape(name):
    """The mapping of the published sizes, from msjax's parameter shapes alone, gives exactly
    the key -> shape list PyTorch's networks have (recorded by the fixture script)."""
    torch_shapes = {k: tuple(v) for k, v in
                    json.loads((FIXTURES / "full_shapes.json").read_text())[name].items()}
    family, kwargs, scheme = FULL[name]
    model = create_model(family, **kwargs)
    params = _flat_shapes(model, 8)
    entries = torch_keys.entries(family, model, scheme)
    mapped = {e.key: (e.value.shape if not e.path else
                      torch_keys.torch_shape(e.kind, params[e.path], e.dims)) for e in entries}
    assert mapped == torch_shapes
    assert {e.path for e in entries if e.path} == set(params)
    assert torch_keys.detect_scheme(torch_shapes) == scheme


def _tensors(file):
    return import_torch.read_state_dict(FIXTURES / file)[0]


def test_a_renamed_key_and_a_changed_shape_are_named_in_one_error(tmp_path):
    tensors = _tensors("edsr_x4.pt")
    tensors["body.0.body.O.weight"] = tensors.pop("body.0.body.0.weight")
    tensors["tail.1.bias"] = np.zeros(4, np.float32)
    bad = tmp_path / "bad.safetensors"
    safetensors.numpy.save_file(tensors, bad)
    config = _no_score(_sr("edsr", 4, n_resblocks=2, n_feats=16))
    with pytest.raises(errors.DataError) as info:
        import_torch.import_file(bad, config, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message
    for part in ("missing from the file: body.0.body.0.weight (16, 16, 3, 3)",
                 "tail.1.bias (4,) (the model needs (3,))",
                 "left over in the file: body.0.body.O.weight (16, 16, 3, 3)",
                 "nothing was written"):
        assert part in message
    assert not (tmp_path / "run").exists()


def test_weights_of_another_size_are_refused_by_the_shapes_they_show(tmp_path):
    """Blocks and features come from the config: a file of 2 blocks x 16 features against a
    config of 3 x 16 names the absent block; the scale shows in the upsampler."""
    config = _no_score(_sr("edsr", 2, n_resblocks=3, n_feats=16))
    with pytest.raises(errors.DataError, match=r"missing from the file: body\.2\.body\.0\.weight"
                       ) as info:
        import_torch.import_file(FIXTURES / "edsr_x4.pt", config, tmp_path / "run")
    assert "(the file shows n_feats=16, n_resblocks=2, scale=4)" in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", list(FULL))
def test_the_sizes_a_full_size_file_shows(name):
    family, kwargs, scheme = FULL[name]
    shapes = json.loads((FIXTURES / "full_shapes.json").read_text())[name]
    shown = torch_keys.revealed(shapes, family, scheme)
    model = create_model(family, **kwargs)
    assert bool(shown) == (family != "srnet")  # SRNet has no size to show
    assert all(getattr(model, k) == v for k, v in shown.items()), shown


def test_another_mean_shift_is_refused(tmp_path):
    tensors = _tensors("edsr_x2.safetensors")
    tensors["sub_mean.bias"] = tensors["sub_mean.bias"] / 255  # a model trained on [0, 1]
    odd = tmp_path / "range1.safetensors"
    safetensors.numpy.save_file(tensors, odd)
    with pytest.raises(errors.DataError, match="rgb_range"):
        import_torch.import_file(odd, _no_score(_sr("edsr", 2, n_resblocks=2, n_feats=16)),
                                 tmp_path / "run")


class _RunsACommand:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_a_pickle_that_would_run_code_is_refused(form, tmp_path):
    payload = pickle.dumps({"conv.weight": _RunsACommand()}, protocol=2)
    evil = tmp_path / "evil.pth"
    if form == "zip":
        with zipfile.ZipFile(evil, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        evil.write_bytes(payload)
    config = _no_score(_sr("edsr", 2, n_resblocks=2, n_feats=16))
    with pytest.raises(errors.DataError, match="never runs code") as info:
        import_torch.import_file(evil, config, tmp_path / "run")
    assert "\n" not in str(info.value) and "system" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_an_imported_run_is_a_warm_start_and_fine_tunes_in_its_workdir(tmp_path):
    from msjax import train

    config = _sr("edsr", 2, n_resblocks=2, n_feats=16, res_scale=0.1)
    config.train.steps = 2
    config.log.eval_every = 2
    config.log.checkpoint_every = 2
    import_torch.import_file(FIXTURES / "edsr_x2.safetensors", config, tmp_path / "run",
                             write=lambda _: None)
    state, _, _ = runs.load_state(tmp_path / "run")
    fresh = jax.tree.map(jnp.zeros_like, state.params)
    _, report = warmstart.match_tensors(fresh, state.params)
    assert not report.skipped and not report.unused
    result = train.run(config, tmp_path / "run")
    assert result["step"] == 2
    assert "fine-tuning the weights imported from" in (tmp_path / "run" / "train.log").read_text()


def test_command_line_imports_and_refuses_in_one_line(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    base = [sys.executable, "-m", "msjax.import_torch"]
    ok = subprocess.run(base + [str(FIXTURES / "basicsr_edsr_x2.pth"), "--config",
                                "configs/sr_builtin_x2.py", "--config.model_kwargs.n_feats=16",
                                "--config.model_kwargs.n_resblocks=2",
                                "--config.data.valid_images=2", "--workdir", str(tmp_path / "run")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "imported 16 tensors (basicsr scheme, params)" in ok.stdout
    again = subprocess.run(base + [str(FIXTURES / "basicsr_edsr_x2.pth"), "--config",
                                   "configs/sr_builtin_x2.py", "--workdir", str(tmp_path / "run")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and again.stderr.startswith("error: ")


def test_official_checkpoints_take_the_official_variant_of_their_config():
    paper = str(ROOT / "configs" / "denoise_cifar10.py")
    assert cli.official_variant(paper, "official") == paper + ":official"
    assert cli.official_variant(paper + ":official", "official") == paper + ":official"
    assert cli.official_variant(paper, "edsr") == paper
    sr = str(ROOT / "configs" / "sr_urban100.py")  # its argument is the model: no such variant
    assert cli.official_variant(sr, "official") == sr
