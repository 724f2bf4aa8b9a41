"""Forward operators and corruptions: the Gaussian PSF, the FFT blur and its adjoint, box masks,
the training corruptions, and building tasks from a config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from msjax import build, defaults, operators, resize, tasks
from msjax.errors import ConfigError
from msjax.backend import xla_cpu

SHAPES = [(96, 96), (128, 128), (48, 64)]


def clean(shape=(8, 16, 24, 3), seed=0):
    # numpy draws: a jax.random draw of each new shape costs a compile.
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def analytic_psf(height, width, sigma):
    """exp(-dy^2/2sy^2 - dx^2/2sx^2) on circular distances, normalised, in float64."""
    sy, sx = sigma
    dy = np.minimum(np.arange(height), height - np.arange(height)).astype(np.float64)
    dx = np.minimum(np.arange(width), width - np.arange(width)).astype(np.float64)
    psf = np.exp(-dy[:, None] ** 2 / (2 * sy**2) - dx[None, :] ** 2 / (2 * sx**2))
    return psf / psf.sum()


def inner(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def dense_blur_matrix(height, width, sigma, fn=operators.blur):
    """The operator as an explicit (HW x HW) matrix: column j is fn applied to basis image j."""
    basis = jnp.eye(height * width, dtype=jnp.float32).reshape(-1, height, width, 1)
    return np.asarray(fn(basis, sigma), np.float64).reshape(height * width, height * width).T


# --- Gaussian PSF ------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", SHAPES)
def test_gaussian_psf_sums_to_one(height, width):
    psf = operators.gaussian_psf(height, width, (3.0, 3.0))
    assert psf.shape == (height, width)
    assert psf.dtype == jnp.float32
    assert float(np.sum(np.asarray(psf, np.float64))) == pytest.approx(1.0, abs=1e-6)
    assert float(jnp.sum(psf)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("height, width", SHAPES)
def test_gaussian_psf_peaks_at_the_origin(height, width):
    psf = np.asarray(operators.gaussian_psf(height, width, (3.0, 2.0)))
    assert np.unravel_index(np.argmax(psf), psf.shape) == (0, 0)
    assert np.sum(psf == psf.max()) == 1


@pytest.mark.parametrize("height, width", SHAPES)
@pytest.mark.parametrize("sigma", [(3.0, 3.0), (2.0, 4.0), (1.0, 0.5)])
def test_gaussian_psf_is_the_analytic_normalised_gaussian_of_circular_distances(height, width,
                                                                               sigma):
    psf = np.asarray(operators.gaussian_psf(height, width, sigma), np.float64)
    np.testing.assert_allclose(psf, analytic_psf(height, width, sigma), rtol=1e-5, atol=1e-9)


def test_gaussian_psf_sigma_is_ordered_along_height_then_width():
    psf = np.asarray(operators.gaussian_psf(64, 64, (2.0, 4.0)), np.float64)
    d = np.minimum(np.arange(64), 64 - np.arange(64)).astype(np.float64)
    var_h = np.sum(psf * d[:, None] ** 2)
    var_w = np.sum(psf * d[None, :] ** 2)
    np.testing.assert_allclose([var_h, var_w], [4.0, 16.0], rtol=1e-4)


def test_gaussian_psf_peak_matches_official_value_at_128_sigma_3():
    psf = operators.gaussian_psf(128, 128, (3.0, 3.0))
    assert float(psf[0, 0]) == pytest.approx(0.01768, abs=5e-6)
    assert float(psf[0, 0]) == pytest.approx(1.0 / (2 * np.pi * 9.0), rel=1e-4)


# --- blur and its adjoint ----------------------------------------------------------------------

@pytest.mark.parametrize("height, width", SHAPES)
def test_blur_impulse_response_is_the_psf(height, width):
    sigma = (2.0, 4.0)
    delta = jnp.zeros((1, height, width, 1)).at[0, 0, 0, 0].set(1.0)
    response = np.asarray(operators.blur(delta, sigma))[0, :, :, 0]
    np.testing.assert_allclose(response, np.asarray(operators.gaussian_psf(height, width, sigma)),
                               atol=2e-7)


def test_blur_is_circular_shift_equivariant():
    delta = jnp.zeros((1, 48, 64, 1)).at[0, 5, 60, 0].set(1.0)
    response = np.asarray(operators.blur(delta, (2.0, 4.0)))[0, :, :, 0]
    expected = np.roll(analytic_psf(48, 64, (2.0, 4.0)), (5, 60), axis=(0, 1))
    np.testing.assert_allclose(response, expected, atol=2e-7)


def test_blur_is_linear():
    x, y = normal((2, 48, 64, 3), 0), normal((2, 48, 64, 3), 1)
    lhs = operators.blur(2.5 * x - 0.7 * y, (2.0, 4.0))
    rhs = 2.5 * operators.blur(x, (2.0, 4.0)) - 0.7 * operators.blur(y, (2.0, 4.0))
    np.testing.assert_allclose(np.asarray(lhs), np.asarray(rhs), atol=1e-5)


def test_blur_preserves_the_mean_and_constants():
    x = clean((2, 48, 64, 3), 3)
    out = operators.blur(x, (3.0, 3.0))
    np.testing.assert_allclose(np.asarray(out.mean(axis=(1, 2))), np.asarray(x.mean(axis=(1, 2))),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(operators.blur(jnp.full((1, 16, 16, 1), 0.3))), 0.3,
                               atol=1e-6)


@pytest.mark.parametrize("height, width", SHAPES)
@pytest.mark.parametrize("sigma", [(3.0, 3.0), (2.0, 4.0)])
@pytest.mark.parametrize("fn", [operators.blur, operators.blur_adjoint], ids=["blur", "adjoint"])
def test_adjoint_identity_holds(height, width, sigma, fn):
    """<A x, y> = <x, A^T y> with A^T = blur_adjoint (and, the PSF being symmetric, with blur)."""
    x, y = normal((2, height, width, 3), 0), normal((2, height, width, 3), 1)
    lhs = inner(operators.blur(x, sigma), y)
    rhs = inner(x, fn(y, sigma))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_blur_adjoint_is_the_transpose_of_the_dense_operator():
    """The identity above cannot see A != A^T for a symmetric PSF; the explicit matrix can."""
    h, w, sigma = 6, 10, (1.0, 2.0)
    a = dense_blur_matrix(h, w, sigma)
    at = dense_blur_matrix(h, w, sigma, operators.blur_adjoint)
    np.testing.assert_allclose(at, a.T, atol=1e-7)
    # The Gaussian PSF is symmetric, so the blur is self-adjoint.
    np.testing.assert_allclose(a, a.T, atol=1e-7)
    np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-6)


def test_anisotropic_blur_differs_from_its_transposed_sigma():
    x = normal((1, 48, 64, 1), 2)
    a = operators.blur(x, (2.0, 4.0))
    b = operators.blur(x, (4.0, 2.0))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_blur_keeps_bfloat16_and_computes_in_float32():
    x = clean((2, 48, 64, 3), 4)
    xb = x.astype(jnp.bfloat16)
    out = operators.blur(xb, (3.0, 3.0))
    assert out.dtype == jnp.bfloat16
    assert operators.blur_adjoint(xb, (3.0, 3.0)).dtype == jnp.bfloat16
    ref = operators.blur(xb.astype(jnp.float32), (3.0, 3.0))
    # Only the final rounding to bfloat16 (8 significant bits) separates the two.
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=2**-8, atol=1e-6)


# --- box masks ---------------------------------------------------------------------------------

def holes(mask):
    """Connected components (4-connectivity) of the zero set of one [H, W, 1] mask."""
    labels, count = ndimage.label(np.asarray(mask)[..., 0] == 0)
    return labels, count


def run(fn, *args):
    """fn(*args) compiled with LLVM's cheap settings: random draws (threefry) otherwise cost
    seconds of compile each on CPU, and nothing checked here depends on code generation."""
    fast = xla_cpu.cheap_compile()
    return jax.jit(fn).lower(*args).compile(fast)(*args)


def masks(key, n, height, width, **kw):
    return run(lambda k: operators.box_masks(k, n, height, width, **kw), key)


def test_box_masks_are_binary_keep_masks_of_the_right_shape():
    m = masks(jax.random.key(0), 8, 48, 64)
    assert m.shape == (8, 48, 64, 1) and m.dtype == jnp.float32
    assert set(np.unique(np.asarray(m)).tolist()) == {0.0, 1.0}
    assert 0.5 < float(m.mean()) < 1.0


@pytest.mark.parametrize("height, width", [(64, 64), (48, 80)])
def test_box_masks_with_one_box_cut_one_rectangle_of_the_drawn_size(height, width):
    size = (0.2, 0.4)
    m = np.asarray(masks(jax.random.key(7), 32, height, width, count=(1, 1), size=size))
    extents = []
    for i in range(m.shape[0]):
        labels, count = holes(m[i])
        assert count == 1
        rows = np.flatnonzero((m[i, :, :, 0] == 0).any(axis=1))
        cols = np.flatnonzero((m[i, :, :, 0] == 0).any(axis=0))
        ext_h, ext_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        # A rectangle: the hole is exactly its bounding box.
        assert (labels > 0).sum() == ext_h * ext_w
        assert size[0] * height - 1 <= ext_h <= size[1] * height + 1
        assert size[0] * width - 1 <= ext_w <= size[1] * width + 1
        extents.append(ext_h / height)
    # The sides are drawn over the range, not pinned to one end of it.
    assert min(extents) < 0.27 and max(extents) > 0.33


def test_box_masks_respect_the_count_range():
    # Small boxes on a large grid rarely touch, so components count the boxes.
    m = np.asarray(masks(jax.random.key(3), 32, 96, 96, count=(1, 4), size=(0.05, 0.08)))
    counts = [holes(m[i])[1] for i in range(m.shape[0])]
    assert min(counts) >= 1 and max(counts) <= 4
    assert {1, 4} <= set(counts)  # both ends of the inclusive range occur
    assert bool(jnp.all(masks(jax.random.key(3), 8, 48, 64, count=(0, 0)) == 1.0))


def test_box_masks_are_deterministic_for_a_key_and_differ_between_keys():
    keys = jnp.stack([jax.random.key(5), jax.random.key(5), jax.random.key(6)])
    a, b, c = run(jax.vmap(lambda k: operators.box_masks(k, 8, 48, 64)), keys)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert bool(jnp.any(a != c))


# --- corruptions -------------------------------------------------------------------------------
# Each test recomputes the corruption from the documented formula with the same key splits, in
# the same compiled program as the library call.

def test_denoise_interpolation_is_t_x_plus_one_minus_t_noise():
    def both(x, key):
        k_t, k_z = jax.random.split(key)
        return (operators.denoise_interpolation(x, key),
                (jax.random.uniform(k_t, (x.shape[0],)), jax.random.normal(k_z, x.shape)))

    x = clean()
    (y, t), (t_ref, z) = run(both, x, jax.random.key(11))
    assert t.shape == (x.shape[0],)
    assert bool(jnp.all((t >= 0) & (t <= 1)))
    np.testing.assert_array_equal(np.asarray(t), np.asarray(t_ref))
    tt = t[:, None, None, None]
    np.testing.assert_allclose(np.asarray(y), np.asarray(tt * x + (1 - tt) * z), atol=1e-6)


def test_denoise_gaussian_adds_sigma_over_255_noise():
    def both(x, key):
        return operators.denoise_gaussian(x, key, sigma=25.0), jax.random.normal(key, x.shape)

    x = clean()
    (y, t), z = run(both, x, jax.random.key(12))
    np.testing.assert_allclose(np.asarray(y), np.asarray(x + 25.0 / 255.0 * z), atol=1e-6)
    np.testing.assert_allclose(np.asarray(t), 25.0 / 255.0)


def test_deblur_is_one_minus_t_blur_plus_t_noise_with_t_at_most_a_tenth():
    def both(x, key):
        k_t, k_z = jax.random.split(key)
        return (operators.deblur(x, key, sigma=(2.0, 3.0)),
                (0.1 * jax.random.uniform(k_t, (x.shape[0],)), jax.random.normal(k_z, x.shape)))

    x = clean()
    (y, t), (t_ref, z) = run(both, x, jax.random.key(13))
    assert bool(jnp.all((t >= 0) & (t <= 0.1)))
    assert float(t.max()) > 0.04  # the range is used, not just its bottom
    np.testing.assert_allclose(np.asarray(t), np.asarray(t_ref), rtol=1e-6)
    tt = t[:, None, None, None]
    expected = (1 - tt) * operators.blur(x, (2.0, 3.0)) + tt * z
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), atol=1e-5)


def test_inpaint_keeps_pixels_outside_boxes_and_fills_inside_with_noise():
    count, size = (1, 3), (0.2, 0.4)

    def both(x, key):
        k_mask, k_fill, k_mix = jax.random.split(key, 3)
        keep = operators.box_masks(k_mask, x.shape[0], x.shape[1], x.shape[2], count=count,
                                   size=size)
        z = jax.random.normal(jax.random.split(k_mix)[1], x.shape)
        return (operators.inpaint(x, key, count=count, size=size),
                (keep, jax.random.uniform(k_fill, x.shape), z))

    x = clean()
    (y, t), (keep, fill, z) = run(both, x, jax.random.key(14))
    assert bool(jnp.all((t >= 0) & (t <= 0.1)))
    tt = t[:, None, None, None]
    outside = np.asarray(keep[..., 0] == 1)
    np.testing.assert_allclose(np.asarray((y - ((1 - tt) * x + tt * z)))[outside], 0.0, atol=1e-6)
    inside = ~outside
    assert inside.any()
    np.testing.assert_allclose(np.asarray((y - ((1 - tt) * fill + tt * z)))[inside], 0.0, atol=1e-6)
    # The boxes really replace the image: inside, y is far from the light-noise image.
    assert float(np.abs(np.asarray(y - ((1 - tt) * x + tt * z)))[inside].mean()) > 0.1


def test_downsample_bicubic_is_matlab_imresize():
    x = clean((2, 24, 36, 3))
    y, t = operators.downsample(x, jax.random.key(0), scale=3, kernel="bicubic")
    assert t is None and y.shape == (2, 8, 12, 3)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(resize.imresize(x, 1 / 3)))


def test_downsample_bilinear_shape_and_unknown_kernel():
    x = clean((2, 24, 36, 3))
    y, _ = operators.downsample(x, None, scale=2, kernel="bilinear")
    assert y.shape == (2, 12, 18, 3)
    np.testing.assert_allclose(np.asarray(operators.downsample(jnp.ones((1, 8, 8, 1)), None,
                                                               kernel="bilinear")[0]), 1.0,
                               atol=1e-6)
    with pytest.raises(ValueError, match="bicubic or bilinear"):
        operators.downsample(x, None, kernel="lanczos")


# --- tasks from a config -----------------------------------------------------------------------

def task_config(name, **kw):
    return dict(name=name, **kw)


@pytest.mark.parametrize("name", ["denoise", "deblur", "inpaint", "sr"])
def test_make_task_builds_each_task_from_a_config(name):
    task = build.task_for(**task_config(name, scale=2, upsample_input=True))
    assert isinstance(task, tasks.Task) and task.name == name
    x = jax.ShapeDtypeStruct((8, 16, 24, 3), jnp.float32)
    y, t = jax.eval_shape(lambda x: task.corrupt(x, jax.random.key(0), 0), x)
    if name == "sr":
        assert task.scale == 2 and not task.time_conditioned and t is None
        assert y.shape == (8, 8, 12, 3)
        assert jax.eval_shape(task.model_input, y).shape == x.shape
    else:
        assert task.scale == 1 and task.time_conditioned
        assert y.shape == x.shape and t.shape == (8,)
        assert task.model_input(y) is y


def test_make_task_options_reach_the_operators():
    config = dict(
        denoise=task_config("denoise", noise="gaussian", sigma=50.0),
        deblur=task_config("deblur", blur_sigma=(2.0, 4.0), t_max=0.05),
        inpaint=task_config("inpaint", box_count=(2, 2), box_size=(0.25, 0.25), t_max=0.02))

    def all_tasks(x, key):
        made = {name: build.task_for(**c).corrupt(x, key, 0) for name, c in config.items()}
        direct = {"denoise": operators.denoise_gaussian(x, key, sigma=50.0),
                  "deblur": operators.deblur(x, key, sigma=(2.0, 4.0), t_max=0.05),
                  "inpaint": operators.inpaint(x, key, count=(2, 2), size=(0.25, 0.25),
                                               t_max=0.02)}
        return made, direct

    made, direct = run(all_tasks, clean(), jax.random.key(4))
    for name in config:
        np.testing.assert_array_equal(np.asarray(made[name][0]), np.asarray(direct[name][0]))
        np.testing.assert_array_equal(np.asarray(made[name][1]), np.asarray(direct[name][1]))
    assert bool(jnp.all(made["deblur"][1] <= 0.05)) and bool(jnp.all(made["inpaint"][1] <= 0.02))


def test_deblur_per_level_operator_scales_sigma_by_two_to_minus_level():
    fields = task_config("deblur", blur_sigma=(3.0, 2.0))
    per_level = tasks.make_task(build.task_settings(_with_task(**fields)), operator_per_level=True)
    fixed = build.task_for(**fields)

    def all_levels(x, key):
        return ((per_level.corrupt(x, key, 2), operators.deblur(x, key, sigma=(0.75, 0.5))),
                (fixed.corrupt(x, key, 2), operators.deblur(x, key, sigma=(3.0, 2.0))))

    (a, a_ref), (b, b_ref) = run(all_levels, clean(), jax.random.key(5))
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(a_ref[0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(b[0]), np.asarray(b_ref[0]), atol=1e-6)
    assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-2


def _with_task(**fields):
    config = defaults.get_config()
    config.task.update(fields)
    return config


def test_make_task_unknown_name_raises_naming_the_choices():
    with pytest.raises(ConfigError, match="task.name='colorize' is unknown") as error:
        build.task_for(**task_config("colorize"))
    assert all(name in str(error.value) for name in ("denoise", "deblur", "inpaint", "sr"))
    assert all(name in str(error.value) for name in tasks.TASKS.names())
