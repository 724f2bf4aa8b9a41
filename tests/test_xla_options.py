"""msjax.xla_options: the CPU convolution choice and compile-cost options reach XLA, and the two
convolution kernels compute the same thing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import config_check, xla_options
from tests.helpers import tiny_config


def test_default_run_uses_eigen_convolutions_and_options_are_checked():
    options = xla_options.for_config(tiny_config())
    assert options == xla_options.EIGEN_CONVOLUTIONS  # jax 0.10-0.12 know the option
    assert xla_options.for_config(tiny_config(**{"train.cpu_convolutions": "ynnpack"})) is None
    cheap = xla_options.for_config(tiny_config(**{"train.fast_compile": True}))
    assert cheap.items() >= xla_options.cheap_compile().items() and len(cheap) > 1
    with pytest.raises(config_check.ConfigError, match="train.cpu_convolutions"):
        config_check.validate(tiny_config(**{"train.cpu_convolutions": "mkl"}))
    # An option this XLA does not know is dropped (an unknown one would fail every compile).
    assert xla_options.supported({"xla_no_such_option_anywhere": True}) == {}


def test_eigen_and_ynnpack_convolutions_agree_on_a_layer_and_its_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 8), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 8), np.float32))

    def loss(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.tanh(y) ** 2)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    eigen = fn.lower(x, w).compile(xla_options.cpu_options(cpu_convolutions="eigen"))(x, w)
    ynn = fn.lower(x, w).compile(xla_options.cpu_options(cpu_convolutions="ynnpack"))(x, w)
    for a, b in zip(jax.tree.leaves(eigen), jax.tree.leaves(ynn)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
