"""msjax.backend: the CPU convolution kernels compute what XLA's do and are counted in the FLOPs;
``auto`` picks the faster kernel by measurement, caches the verdict and reuses a checkpoint's
choice; compile options reach XLA; a run names its devices and warns beside an idle GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import backend, build, errors, parallel, rundir, train
from msjax.backend import convolutions, cpu, machine, onednn, xla_cpu
from tests.helpers import tiny_config

try:
    onednn.load()
    HAVE_ONEDNN = True
except onednn.OneDNNUnavailable:  # not installed (e.g. not x86-64)
    HAVE_ONEDNN = False
needs_onednn = pytest.mark.skipif(not HAVE_ONEDNN, reason="oneDNN is not installed here")

NHWC = ("NHWC", "HWIO", "NHWC")
# (x shape, kernel shape, strides, padding, kernel dilation)
GEOMETRIES = [
    ((2, 9, 7, 3), (3, 3, 3, 5), (1, 1), "SAME", (1, 1)),          # RGB input, odd sizes
    ((2, 10, 10, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # strided down
    ((1, 8, 8, 4), (3, 3, 4, 4), (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilated
    ((2, 8, 8, 3), (1, 1, 3, 8), (1, 1), "VALID", (1, 1)),          # 1x1
    ((3, 11, 9, 5), (4, 4, 5, 7), (2, 1), ((2, 1), (0, 3)), (1, 1)),  # uneven everything
]


def _value_and_grads(strides, padding, dilation):
    # A new function per call: jax caches a trace by function, not by the kernel choice.
    def loss(x, w):
        y = convolutions.dispatch(x, w, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=NHWC)
        return jnp.sum(jnp.sin(y))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _cpu_backend(**runtime):
    c = tiny_config(**{f"runtime.{k}": v for k, v in runtime.items()})
    return cpu.CpuBackend(c.runtime, parallel.make_mesh(c.runtime.num_devices))


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_onednn_convolution_and_both_gradients_match_xla_and_count_as_xla(geometry):
    x_shape, w_shape, strides, padding, dilation = geometry
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    w = jnp.asarray(rng.standard_normal(w_shape, np.float32))
    reference = _value_and_grads(strides, padding, dilation)(x, w)
    with convolutions.use("onednn"):
        fn = _value_and_grads(strides, padding, dilation)
        lowered = fn.lower(x, w)
        ours = fn(x, w)
    assert lowered.as_text().count("msjax_onednn_conv") == 3  # forward, dx, dw: all oneDNN
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-4)
    # XLA's cost analysis sees no FLOPs in a custom call; the CPU backend counts them as XLA would.
    xla_flops = backend.cost_flops(_value_and_grads(strides, padding, dilation)
                                   .lower(x, w).compile())
    np.testing.assert_allclose(_cpu_backend().flops(lowered.compile()), xla_flops, rtol=1e-3)
    assert backend.cost_flops(lowered.compile()) < 0.5 * xla_flops


def _uses_onednn(fn, *args) -> bool:
    with convolutions.use("onednn"):
        return "msjax_onednn_conv" in str(jax.make_jaxpr(fn)(*args))


@needs_onednn
def test_convolutions_onednn_cannot_run_stay_with_xla():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    conv = convolutions.dispatch
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


@needs_onednn
def test_a_model_built_for_the_cpu_backend_runs_on_onednn_and_matches_xla():
    c = tiny_config(**{"model": "resnet", "runtime.cpu_convolutions": "onednn"})
    c.model_kwargs = dict(hidden=8, nlayers=1)
    onednn_backend = backend.make_backend(c.runtime, parallel.make_mesh(1))
    model = build.make_model(c.model, c.model_kwargs, c.dtype, onednn_backend)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((2, 16, 16, 3), np.float32))
    t = jnp.zeros((2,), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x, t, train=False)

    def grads(p):
        return jax.grad(lambda p: jnp.mean(model.apply(p, x, t, train=False) ** 2))(p)

    on_onednn = onednn_backend.jit(grads)
    with convolutions.use("onednn"):
        assert "msjax_onednn_conv" in jax.jit(grads).lower(params).as_text()
    for a, b in zip(jax.tree.leaves(on_onednn(params)), jax.tree.leaves(jax.jit(grads)(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_training_on_onednn_is_deterministic_and_logs_its_flops(tmp_path):
    def run(name, conv):
        c = tiny_config(**{"runtime.cpu_convolutions": conv, "train.steps": 2,
                           "log.eval_every": 2, "mode": "single"})
        return train.train_and_evaluate(c, tmp_path / name)

    first, second, xla = run("a", "onednn"), run("b", "onednn"), run("c", "eigen")
    for key in ("loss", "psnr", "ssim"):  # bitwise: exact resume relies on it
        assert first[key] == second[key], key
        np.testing.assert_allclose(first[key], xla[key], rtol=1e-4)
    # The convolutions' counts agree; the programs around them differ a little (XLA's own
    # convolution gradients bring pads and reverses).
    np.testing.assert_allclose(first["flops"], xla["flops"], rtol=2e-2)


def test_onednn_that_cannot_run_is_refused_before_training(monkeypatch, tmp_path):
    if jax.device_count() >= 2:
        with pytest.raises(errors.ConfigError, match="runtime.num_devices=1"):
            _cpu_backend(cpu_convolutions="onednn", num_devices=2)
    monkeypatch.setenv("MSJAX_ONEDNN_ROOT", str(tmp_path))  # holds no oneDNN
    with pytest.raises(onednn.OneDNNUnavailable, match=r"pip install 'msjax\[onednn\]'"):
        onednn.build()

    def missing():
        raise onednn.OneDNNUnavailable("no C++ compiler found")

    monkeypatch.setattr(onednn, "load", missing)
    with pytest.raises(errors.ConfigError, match="cpu_convolutions=onednn: no C"):
        _cpu_backend(cpu_convolutions="onednn")
    for field, value in (("cpu_convolutions", "mkl"), ("cpu_reductions", "eigen")):
        with pytest.raises(errors.ConfigError, match=f"runtime.{field}={value!r} is unknown"):
            _cpu_backend(**{field: value})
    # auto without oneDNN: eigen alone on one device, and the start banner says why.
    alone = _cpu_backend(cpu_convolutions="auto")
    assert alone.candidates == ("eigen",) and alone.convolution is None
    assert any("no C++ compiler found" in line for line in alone.describe())


def _step_args():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 4), np.float32))
    w = jnp.ones((3, 3, 4, 4), jnp.float32)
    return (lambda w, x: convolutions.dispatch(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
            .sum()), (w, x)


def test_auto_measures_the_candidates_once_per_program_and_keeps_the_faster(tmp_path):
    calls = []

    def timer(programs, args, donate):
        calls.append(sorted(programs))
        for program in programs.values():  # each candidate really runs on the arguments
            program(*args)
        return {k: (0.5 if k == "eigen" else 1.0) for k in programs}

    c = tiny_config(**{"runtime.cpu_convolutions": "auto"})
    mesh = parallel.make_mesh(1)
    verdicts = cpu.Verdicts(tmp_path / "verdicts.json")
    auto = cpu.CpuBackend(c.runtime, mesh, verdicts=verdicts, timer=timer)
    fn, args = _step_args()
    if not HAVE_ONEDNN:
        pytest.skip("one candidate only: nothing to measure")
    assert auto.candidates == ("onednn", "eigen")
    first = auto.compile(fn, args, name="stage 0")
    assert first.kernels == "eigen" and calls == [["eigen", "onednn"]]
    assert first.timings == {"onednn": 1.0, "eigen": 0.5}
    np.testing.assert_allclose(first(*args), fn(*args), rtol=1e-6)
    # The same program again, even in another process (a new backend): the cached verdict.
    again = cpu.CpuBackend(c.runtime, mesh, verdicts=verdicts, timer=timer)
    assert again.compile(fn, args).kernels == "eigen" and len(calls) == 1
    # What a checkpoint recorded wins without measuring (exact resume on the same machine).
    assert again.compile(fn, args, recorded="onednn").kernels == "onednn" and len(calls) == 1
    # Another program is measured on its own.
    other = (jnp.ones((3, 3, 4, 4), jnp.float32), jnp.ones((4, 16, 16, 4), jnp.float32))
    assert again.compile(fn, other).kernels == "eigen" and len(calls) == 2


def test_auto_on_several_devices_weighs_eigen_against_ynnpack():
    if jax.device_count() < 2:
        pytest.skip("needs simulated devices")
    several = _cpu_backend(cpu_convolutions="auto", num_devices=2)
    assert several.candidates == ("eigen", "ynnpack") and several.convolution is None
    assert several.sync_each_step


def test_the_real_timer_measures_every_program_on_copies_of_donated_arguments():
    x = jnp.arange(4.0)
    donated = jax.jit(lambda x: x * 2, donate_argnums=(0,)).lower(x).compile()
    times = cpu.time_calls({"a": donated, "b": donated}, (x,), donate_argnums=(0,),
                           min_rounds=2, budget_s=0.0)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    np.testing.assert_array_equal(x, jnp.arange(4.0))  # the caller's array is still alive


def test_a_run_records_its_kernels_in_the_checkpoint_and_resumes_without_measuring(
        tmp_path, monkeypatch):
    if not HAVE_ONEDNN:
        pytest.skip("one candidate only: nothing to measure")
    measured = []

    def timer(programs, args, donate):
        measured.append(sorted(programs))
        return {k: (0.5 if k == "onednn" else 1.0) for k in programs}

    monkeypatch.setattr(cpu, "time_calls", timer)
    c = tiny_config(**{"runtime.cpu_convolutions": "auto", "train.steps": 2, "mode": "single",
                       "log.eval_every": 1, "log.checkpoint_every": 1})
    train.train_and_evaluate(c, tmp_path / "run")
    assert measured == [["eigen", "onednn"]]
    ckpt_meta = tmp_path / "run" / "checkpoints" / "2" / "meta" / "metadata"
    assert '"0": "onednn"' in ckpt_meta.read_text()
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("MSJAX_CACHE", str(tmp_path / "cache"))  # the verdict cache is gone
    c.train.steps = 3  # extend: the resumed stage reuses the checkpoint's choice
    train.train_and_evaluate(c, tmp_path / "run", extend=True)
    assert len(measured) == 1


def test_options_map_the_kernel_choices_and_drop_what_this_xla_does_not_know():
    kinds = xla_cpu.YNN_FUSION_TYPE
    # jax 0.10-0.12 know the option and its enum names.
    assert xla_cpu.options("eigen") == {kinds: "LIBRARY_FUSION_TYPE_REDUCE"}
    assert xla_cpu.options("onednn") == xla_cpu.options("eigen")
    assert xla_cpu.options("eigen", "xla") == {kinds: ""}
    assert xla_cpu.options("ynnpack") is None
    assert xla_cpu.options("ynnpack", "xla") == {kinds: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
    cheap = xla_cpu.options("eigen", fast_compile=True)
    assert cheap.items() >= xla_cpu.cheap_compile().items() and len(cheap) > 1
    # An option this XLA does not know is dropped (an unknown one would fail every compile).
    assert xla_cpu.supported({"xla_no_such_option_anywhere": True}) == {}
    assert xla_cpu.supported({kinds: "LIBRARY_FUSION_TYPE_NONE_SUCH"}) == {}


def test_every_kernel_choice_computes_the_same_layer_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 8), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 8), np.float32))
    b = jnp.asarray(rng.standard_normal((8,), np.float32))

    def loss(x, w, b):  # the bias gradient is a reduction that keeps the channel axis
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
        return jnp.sum(jnp.tanh(y + b) ** 2)

    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, w, b)
    results = {(c, r): lowered.compile(xla_cpu.options(c, r))(x, w, b)
               for c in ("eigen", "ynnpack") for r in xla_cpu.CPU_REDUCTIONS}
    reference = results.pop(("eigen", "xla"))
    for choice, result in results.items():
        for a, ref in zip(jax.tree.leaves(result), jax.tree.leaves(reference)):
            np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-4, err_msg=str(choice))


def test_a_run_beside_an_idle_gpu_warns_with_the_install_command(monkeypatch):
    warning = machine.idle_accelerator_warning("cpu", probe_gpus=lambda: ["NVIDIA H100 80GB"],
                                               probe_tpu=lambda: False)
    assert "NVIDIA H100 80GB" in warning and "pip install 'msjax[cuda]'" in warning
    assert machine.idle_accelerator_warning("gpu", probe_gpus=lambda: ["x"]) is None
    assert machine.idle_accelerator_warning("cpu", probe_gpus=lambda: [],
                                            probe_tpu=lambda: True).count("msjax[tpu]") == 1
    assert machine.idle_accelerator_warning("cpu", probe_gpus=lambda: [],
                                            probe_tpu=lambda: False) is None
    monkeypatch.setattr(machine, "nvidia_gpus", lambda: ["NVIDIA A100-SXM4-40GB"])
    lines = _cpu_backend().describe()
    assert lines[0].startswith("devices: 1 x cpu (") and machine.vector_isa() in lines[0]
    assert any("NVIDIA A100-SXM4-40GB" in line and "jax runs on the CPU" in line
               for line in lines)


def test_the_default_workdir_follows_the_config_and_an_overridden_mode(tmp_path):
    assert rundir.default_workdir("configs/deblur_stl10.py") == rundir.RUNS / "deblur_stl10"
    assert rundir.default_workdir("configs/deblur_stl10.py", "fullmultiscale") \
        == rundir.RUNS / "deblur_stl10_fullmultiscale"
    assert rundir.default_workdir("configs/sr_urban100.py:resnet") \
        == rundir.RUNS / "sr_urban100_resnet"
