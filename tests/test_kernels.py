"""msjax.kernels: oneDNN convolutions (runtime.cpu_convolutions=onednn) compute what XLA's do, take
only what they can, are counted in the FLOPs, and train deterministically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import config_check, kernels, models, multiscale, train
from msjax.kernels import onednn
from tests.helpers import tiny_config

try:
    onednn._onednn_dirs()
except onednn.OneDNNUnavailable as e:  # not installed (e.g. not x86-64): nothing to test
    pytest.skip(str(e), allow_module_level=True)

NHWC = ("NHWC", "HWIO", "NHWC")
# (x shape, kernel shape, strides, padding, kernel dilation)
GEOMETRIES = [
    ((2, 9, 7, 3), (3, 3, 3, 5), (1, 1), "SAME", (1, 1)),          # RGB input, odd sizes
    ((2, 10, 10, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # strided down
    ((1, 8, 8, 4), (3, 3, 4, 4), (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilated
    ((2, 8, 8, 3), (1, 1, 3, 8), (1, 1), "VALID", (1, 1)),          # 1x1
    ((3, 11, 9, 5), (4, 4, 5, 7), (2, 1), ((2, 1), (0, 3)), (1, 1)),  # uneven everything
]


def _conv(x, w, strides, padding, dilation):
    return kernels.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                        dimension_numbers=NHWC)


def _value_and_grads(strides, padding, dilation):
    # A new function per call: jax caches a trace by function, not by the kernel choice.
    def loss(x, w):
        return jnp.sum(jnp.sin(_conv(x, w, strides, padding, dilation)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_onednn_convolution_and_both_gradients_match_xla(geometry):
    x_shape, w_shape, strides, padding, dilation = geometry
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    w = jnp.asarray(rng.standard_normal(w_shape, np.float32))
    reference = _value_and_grads(strides, padding, dilation)(x, w)
    with kernels.convolutions("onednn"):
        fn = _value_and_grads(strides, padding, dilation)
        lowered = fn.lower(x, w)
        ours = fn(x, w)
    assert lowered.as_text().count("msjax_onednn_conv") == 3  # forward, dx, dw: all oneDNN
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-4)
    # XLA's cost analysis sees no FLOPs in a custom call; msjax counts them as XLA would.
    ref_flops = multiscale.compiled_flops(_value_and_grads(strides, padding, dilation)
                                          .lower(x, w).compile())
    np.testing.assert_allclose(multiscale.compiled_flops(lowered.compile()), ref_flops,
                               rtol=1e-3)


def _uses_onednn(fn, *args) -> bool:
    with kernels.convolutions("onednn"):
        return "msjax_onednn_conv" in str(jax.make_jaxpr(fn)(*args))


def test_convolutions_onednn_cannot_run_stay_with_xla():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    conv = kernels.conv_general_dilated
    assert _uses_onednn(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC), x, w)
    assert not _uses_onednn(lambda x, w: conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                              (1, 1), "SAME", dimension_numbers=NHWC), x, w)
    assert not _uses_onednn(lambda x, w: conv(x, w[:, :, :2], (1, 1), "SAME",
                                              dimension_numbers=NHWC, feature_group_count=2),
                            x, w)
    assert not _uses_onednn(lambda x, w: conv(x, w, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
                                              dimension_numbers=NHWC), x, w)
    assert not _uses_onednn(lambda x, w: conv(x, w, (1, 1), ((-1, 1), (1, 1)),
                                              dimension_numbers=NHWC), x, w)
    assert not _uses_onednn(lambda x, w: conv(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1),
                                              (1, 1), "SAME"), x, w)
    # Outside the context everything is XLA's.
    assert "msjax_onednn_conv" not in str(jax.make_jaxpr(
        lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC))(x, w))


def test_a_model_runs_on_onednn_through_apply_with_and_matches_xla():
    model = models.create_model("resnet", hidden=8, nlayers=1)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((2, 16, 16, 3), np.float32))
    t = jnp.zeros((2,), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x, t, train=False)

    def grads(apply_fn):
        return jax.jit(jax.grad(lambda p: jnp.mean(apply_fn(p, x, t, train=False) ** 2)))

    ours = kernels.apply_with(model.apply, "onednn")
    assert ours != model.apply and kernels.apply_with(model.apply, "eigen") == model.apply
    assert "msjax_onednn_conv" in grads(ours).lower(params).as_text()
    for a, b in zip(jax.tree.leaves(grads(ours)(params)),
                    jax.tree.leaves(grads(model.apply)(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_training_on_onednn_is_deterministic_and_logs_its_flops(tmp_path):
    def run(name, conv):
        c = tiny_config(**{"runtime.cpu_convolutions": conv, "train.steps": 2,
                           "log.eval_every": 2, "mode": "single"})
        return train.train_and_evaluate(c, tmp_path / name)

    first, second, xla = run("a", "onednn"), run("b", "onednn"), run("c", "eigen")
    for key in ("loss", "psnr", "ssim"):  # bitwise: exact resume relies on it
        assert first[key] == second[key], key
        np.testing.assert_allclose(first[key], xla[key], rtol=1e-4)
    # The convolutions' counts agree to a few FLOPs; the programs around them differ a little
    # (XLA's own convolution gradients bring pads and reverses; 0.9% of this tiny net's step).
    np.testing.assert_allclose(first["flops"], xla["flops"], rtol=2e-2)


def test_onednn_that_cannot_run_is_refused_before_training(monkeypatch, tmp_path):
    with pytest.raises(config_check.ConfigError, match="num_devices=1"):
        config_check.validate(tiny_config(**{"runtime.cpu_convolutions": "onednn"}),
                              num_devices=2)
    monkeypatch.setenv("MSJAX_ONEDNN_ROOT", str(tmp_path))  # holds no oneDNN
    with pytest.raises(onednn.OneDNNUnavailable, match="pip install onednn-cpu-gomp"):
        onednn.build()

    def missing():
        raise onednn.OneDNNUnavailable("no C++ compiler found")

    monkeypatch.setattr(onednn, "load", missing)
    with pytest.raises(config_check.ConfigError, match="cpu_convolutions=onednn: no C"):
        config_check.validate(tiny_config(**{"runtime.cpu_convolutions": "onednn"}))
    # A flax without nn.Conv's conv_general_dilated field cannot reach oneDNN: refused too.
    monkeypatch.setattr(kernels, "FLAX_HOOK", False)
    with pytest.raises(config_check.ConfigError, match="conv_general_dilated"):
        config_check.validate(tiny_config(**{"runtime.cpu_convolutions": "onednn"}))


def test_auto_is_onednn_on_one_cpu_device_where_it_loads_else_eigen(monkeypatch, caplog):
    assert tiny_config().runtime.cpu_convolutions == "auto"
    assert kernels.choose("auto", devices=1) == "onednn"
    assert kernels.choose("auto", devices=2) == "eigen"  # batch-sharded: XLA's kernels
    assert kernels.choose("ynnpack", devices=1) == "ynnpack"
    model = models.create_model("residual_cnn", features=4, depth=2)
    with pytest.raises(ValueError, match="one CPU device"):
        kernels.apply_with(model.apply, "onednn", devices=2)
    assert kernels.apply_with(model.apply, "auto", devices=2) == model.apply

    def missing():
        raise onednn.OneDNNUnavailable("no C++ compiler found")

    monkeypatch.setattr(onednn, "load", missing)
    monkeypatch.setattr(kernels, "_warned", [])
    with caplog.at_level("WARNING"):
        assert kernels.choose("auto", devices=1) == "eigen"
    assert "no C++ compiler found" in caplog.text
