"""msjax.xla_options: the CPU kernel choices and compile-cost options reach XLA, and the kernels
compute the same thing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import config_check, xla_options
from tests.helpers import tiny_config


def test_default_run_leaves_convolutions_off_ynnpack_keeps_ynnpack_reductions_and_checks():
    kinds = xla_options.YNN_FUSION_TYPE
    # jax 0.10-0.12 know the option and its enum names.
    assert xla_options.for_config(tiny_config()) == {kinds: "LIBRARY_FUSION_TYPE_REDUCE"}
    assert xla_options.for_config(tiny_config(**{"runtime.cpu_reductions": "xla"})) == {kinds: ""}
    assert xla_options.for_config(tiny_config(**{"runtime.cpu_convolutions": "ynnpack"})) is None
    assert xla_options.for_config(tiny_config(**{"runtime.cpu_convolutions": "ynnpack",
                                                 "runtime.cpu_reductions": "xla"})) == {
        kinds: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
    cheap = xla_options.for_config(tiny_config(**{"runtime.fast_compile": True}))
    assert cheap.items() >= xla_options.cheap_compile().items() and len(cheap) > 1
    with pytest.raises(config_check.ConfigError, match="runtime.cpu_convolutions"):
        config_check.validate(tiny_config(**{"runtime.cpu_convolutions": "mkl"}))
    with pytest.raises(config_check.ConfigError, match="runtime.cpu_reductions"):
        config_check.validate(tiny_config(**{"runtime.cpu_reductions": "eigen"}))
    # An option this XLA does not know is dropped (an unknown one would fail every compile).
    assert xla_options.supported({"xla_no_such_option_anywhere": True}) == {}
    unknown_kind = {xla_options.YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_NONE_SUCH"}
    assert xla_options.supported(unknown_kind) == {}


def test_every_kernel_choice_computes_the_same_layer_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 8), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 8), np.float32))
    b = jnp.asarray(rng.standard_normal((8,), np.float32))

    def loss(x, w, b):  # the bias gradient is a reduction that keeps the channel axis
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.tanh(y + b) ** 2)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    lowered = fn.lower(x, w, b)
    results = {(c, r): lowered.compile(xla_options.cpu_options(cpu_convolutions=c,
                                                               cpu_reductions=r))(x, w, b)
               for c in xla_options.CPU_CONVOLUTIONS for r in xla_options.CPU_REDUCTIONS}
    reference = results.pop(("eigen", "xla"))
    for choice, result in results.items():
        for a, ref in zip(jax.tree.leaves(result), jax.tree.leaves(reference)):
            np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-4, err_msg=str(choice))
