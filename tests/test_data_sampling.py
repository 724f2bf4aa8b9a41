"""The two input paths (host workers, device-resident) cut the same batches with one sampler.

Every test image stores its own coordinates: pixel (r, c) of image i is (r, c, i), so each patch
tells where it was cut, from which image, and under which flip / rotation.
"""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import defaults, parallel
from msjax.data import device, host, sampler
from msjax.data.folders import PairedSource
from msjax.data.sources import AlignedSource, ArraySource
from msjax.errors import ConfigError

SHAPES = ((20, 24), (18, 18), (16, 30))   # images of different sizes: the device array is padded
PATCH = 8


def coordinate_image(h, w, i):
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r, c, np.full_like(r, i)], -1).astype(np.uint8)


def coordinate_source(shapes=SHAPES):
    return ArraySource([coordinate_image(h, w, i) for i, (h, w) in enumerate(shapes)],
                       [f"im{i}" for i in range(len(shapes))])


def paired_source(scale=2):
    hr = [coordinate_image(h, w, i) for i, (h, w) in enumerate(((24, 28), (20, 20)))]
    return ArraySource([(im, im[::scale, ::scale]) for im in hr], ["a", "b"])


def deep_source():
    rng = np.random.default_rng(7)
    return ArraySource([(rng.random((h, w, 3)) * 65535).astype(np.uint16) for h, w in SHAPES],
                       [f"im{i}" for i in range(len(SHAPES))])


def read_patch(p):
    """(image, top, left, orientation) of a patch cut from a coordinate image; orientation is
    one of 8 ids (0: as cut), and the patch must be a whole crop under that orientation."""
    q = np.rint(np.asarray(p) * 255).astype(int)
    rows, cols, image = q[..., 0], q[..., 1], q[..., 2]
    assert (image == image[0, 0]).all(), "one image per patch"
    top, left, n = rows.min(), cols.min(), p.shape[0]
    r, c = rows - top, cols - left
    swap = r[0, 1] != r[0, 0]
    orientation = 4 * int(swap) + 2 * int(r[0, 0] != 0) + int(c[0, 0] != 0)
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    sr, sc = (b, a) if swap else (a, b)
    expect_r = n - 1 - sr if r[0, 0] else sr
    expect_c = n - 1 - sc if c[0, 0] else sc
    assert (r == expect_r).all() and (c == expect_c).all(), "a whole, rigidly moved crop"
    return int(image[0, 0]), int(top), int(left), orientation


# Both paths behind one signature: batch(seed, step, term, n, augment) -> numpy dict.

def host_sampler(source, *, patch=PATCH, scale=1):
    images = host.DecodedImages(source)

    def batch(seed, step, term, n, augment=True):
        return sampler.term_batch(images, seed=seed, step=step, term=term, batch=n, patch=patch,
                                   scale=scale, augment=augment)
    return batch


def device_sampler(source, *, patch=PATCH, scale=1):
    mesh = parallel.make_mesh(1)
    dataset = device.load(source, mesh, patch=patch, scale=scale)

    @functools.partial(jax.jit, static_argnames=("n", "augment"))
    def cut(dataset, seed_key, step, term, n, augment):
        return device.sample_batch(dataset, device.term_key(seed_key, step, term), batch=n,
                                   patch=patch, augment=augment, scale=scale)

    def batch(seed, step, term, n, augment=True):
        out = cut(dataset, jax.random.PRNGKey(seed), jnp.int32(step), term, n, augment)
        return jax.tree.map(np.asarray, out)
    return batch


PATHS = {"host": host_sampler, "device": device_sampler}


@pytest.fixture(scope="module", params=sorted(PATHS))
def draws(request):
    """(path name, sampler, 1200 read patches of seed 0, steps 0-9, terms 0-1)."""
    sampler = PATHS[request.param](coordinate_source())
    reads = [read_patch(p) for step in range(10) for term in range(2)
             for p in sampler(0, step, term, 60)["target"]]
    return request.param, sampler, reads


def test_patch_positions_cover_every_image_and_stay_inside_it(draws):
    _, _, reads = draws
    for i, (h, w) in enumerate(SHAPES):
        mine = [(t, l) for image, t, l, _ in reads if image == i]
        assert len(mine) > 250, "images are drawn evenly"
        assert {t for t, _ in mine} == set(range(h - PATCH + 1))
        assert {l for _, l in mine} == set(range(w - PATCH + 1))


def test_all_eight_flips_and_rotations_occur_and_none_without_augment(draws):
    _, sampler, reads = draws
    counts = np.bincount([o for *_, o in reads], minlength=8)
    assert (counts > 80).all(), counts  # about 150 each of 1200
    plain = {read_patch(p)[3] for p in sampler(0, 0, 0, 64, augment=False)["target"]}
    assert plain == {0}


def test_hflip_mirrors_left_right_only_at_the_windows_full_augmentation_draws(draws):
    """data.augment=hflip (the pyramidal reference's RandomHorizontalFlip): half the patches
    mirrored left-right, none rotated, transposed or flipped upside down, cut from the same
    images and windows as with every orientation."""
    _, sampler, reads = draws
    mirrored = [read_patch(p) for step in range(10) for term in range(2)
                for p in sampler(0, step, term, 60, augment="hflip")["target"]]
    counts = np.bincount([o for *_, o in mirrored], minlength=8)
    assert counts[2:].sum() == 0 and counts[:2].min() > 500, counts  # 1200 patches
    assert [r[:3] for r in mirrored] == [r[:3] for r in reads]


def test_an_unknown_augment_is_refused():
    with pytest.raises(ValueError, match=r"data.augment='vflip' is unknown; choose one of "
                                         r"True, hflip, False"):
        sampler.orientations("vflip")
    assert [sampler.orientations(a) for a in (True, "hflip", False)] == [8, 2, 1]


def test_terms_and_steps_draw_independent_batches(draws):
    _, sampler, _ = draws
    first, second, later = ([read_patch(p) for p in sampler(0, step, term, 64)["target"]]
                            for step, term in ((3, 0), (3, 1), (4, 0)))
    for other in (second, later):
        same = np.mean([a == b for a, b in zip(first, other)])
        same_image = np.mean([a[0] == b[0] for a, b in zip(first, other)])
        assert same == 0 and same_image < 0.6  # chance: 1/3 for the image


def test_batches_are_a_pure_function_of_seed_step_and_term(draws):
    _, sampler, _ = draws
    a = sampler(5, 7, 1, 16)["target"]
    np.testing.assert_array_equal(a, sampler(5, 7, 1, 16)["target"])
    assert not np.array_equal(a, sampler(6, 7, 1, 16)["target"])
    assert a.dtype == np.float32 and a.shape == (16, PATCH, PATCH, 3)
    assert 0.0 <= a.min() and a.max() <= 1.0


@pytest.mark.parametrize("path", sorted(PATHS))
def test_paired_lr_and_hr_patches_are_aligned(path):
    scale = 2
    out = PATHS[path](paired_source(scale), patch=PATCH, scale=scale)(0, 2, 0, 48)
    assert out["input"].shape == (48, PATCH // scale, PATCH // scale, 3)
    for hr_patch, lr_patch in zip(out["target"], out["input"]):
        read_patch(hr_patch)
        h = np.rint(hr_patch * 255).astype(int)
        blocks = h.reshape(PATCH // scale, scale, PATCH // scale, scale, 3).min(axis=(1, 3))
        # Each LR pixel sits on the top-left corner of its HR block, whatever the orientation.
        np.testing.assert_array_equal(np.rint(lr_patch * 255).astype(int), blocks)


class Negatives:
    """Aligned arrays of a paired coordinate source: each image's negative, on its grid."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __getitem__(self, i):
        hr, lr = self.pairs[i]
        return {"teacher_target": 255 - hr, "teacher_input": 255 - lr}


def aligned_source():
    pairs = paired_source()
    return AlignedSource(pairs, Negatives(pairs), keys=("teacher_target", "teacher_input"))


# name -> (source, scale)
KINDS = {"plain": (coordinate_source, 1), "paired": (paired_source, 2),
         "deep": (deep_source, 1), "aligned": (aligned_source, 2)}


def frozen_term_key(seed_key, step, term):
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(seed_key, 2**31 - 2), step),
                              term)


def frozen_sample_batch(target, sizes, key, *, batch, patch, augment, scale, lr=None):
    """The device sampler that runs have trained on, frozen as the reference the shared sampler
    must match bit for bit (``sizes``: each item's (h, w) on the LR grid when ``lr`` is given)."""
    def crop(pixels, index, top, left, size, transform):
        out_r, out_c = jnp.arange(size)[:, None], jnp.arange(size)[None, :]
        t = transform[:, None, None]
        swap, flip_r, flip_c = (t & 4) != 0, (t & 2) != 0, (t & 1) != 0
        r, c = jnp.where(swap, out_c, out_r), jnp.where(swap, out_r, out_c)
        r = jnp.where(flip_r, size - 1 - r, r)
        c = jnp.where(flip_c, size - 1 - c, c)
        patches = pixels.at[index[:, None, None], top[:, None, None] + r,
                            left[:, None, None] + c].get(mode="promise_in_bounds")
        return patches.astype(jnp.float32) / (255.0 if pixels.dtype == jnp.uint8 else 65535.0)

    paired = lr is not None
    grid_patch = patch // scale if paired else patch
    bits = jax.random.bits(key, (4, batch), jnp.uint32)
    index = (bits[0] % sizes.shape[0]).astype(jnp.int32)
    hw = sizes[index].astype(jnp.uint32)
    top = (bits[1] % (hw[:, 0] - grid_patch + 1)).astype(jnp.int32)
    left = (bits[2] % (hw[:, 1] - grid_patch + 1)).astype(jnp.int32)
    transform = (bits[3] % 8).astype(jnp.int32) if augment else jnp.zeros((batch,), jnp.int32)
    out = {"target": crop(target, index, top * (scale if paired else 1),
                          left * (scale if paired else 1), patch, transform)}
    if paired:
        out["input"] = crop(lr, index, top, left, grid_patch, transform)
    return out


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()[:16]


# (kind, augment, step, term, batch) -> sha256[:16] of each array of a device batch, seed 3.
PINNED = {("plain", True, 7, 2, 8): {"target": "67a2aeb2d1ea7397"},
          ("plain", False, 123456, 1, 6): {"target": "9a7a04355d609358"},
          ("paired", True, 123456, 1, 6): {"input": "33a5d867d68e47d0",
                                           "target": "37f61df16fb75964"},
          ("paired", False, 0, 0, 5): {"input": "3eba518eb556d5ef",
                                       "target": "53df5922f68f0914"},
          ("deep", True, 0, 0, 5): {"target": "0efe81023cec7b95"},
          ("deep", False, 7, 2, 8): {"target": "ff6c5b4e0fcfe680"}}


@pytest.mark.parametrize("kind", ["plain", "paired", "deep"])
def test_device_batches_stay_those_runs_trained_on(kind):
    make, scale = KINDS[kind]
    dataset = device.load(make(), parallel.make_mesh(1), patch=PATCH, scale=scale)
    lr = dataset.arrays.get("input")
    for augment in (True, False):
        kw = dict(patch=PATCH, augment=augment, scale=scale)
        for step, term, n in ((0, 0, 5), (7, 2, 8), (123456, 1, 6)):
            got = jax.jit(functools.partial(device.sample_batch, batch=n, **kw))(
                dataset, device.term_key(jax.random.PRNGKey(3), jnp.int32(step), term))
            want = jax.jit(functools.partial(frozen_sample_batch, batch=n, **kw))(
                dataset.arrays["target"], dataset.sizes,
                frozen_term_key(jax.random.PRNGKey(3), jnp.int32(step), term), lr=lr)
            assert got.keys() == want.keys()
            for k in got:
                np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
            pinned = PINNED.get((kind, augment, step, term, n))
            if pinned is not None:
                assert {k: digest(v) for k, v in got.items()} == pinned


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_host_and_device_paths_cut_the_same_batches(kind):
    make, scale = KINDS[kind]
    on_host, on_device = (PATHS[p](make(), scale=scale) for p in ("host", "device"))
    for augment in (True, False, "hflip"):
        for seed, step, term, n in ((0, 0, 0, 7), (1, 5, 2, 40), (2, 123456, 1, 3)):
            a, b = on_host(seed, step, term, n, augment), on_device(seed, step, term, n, augment)
            assert a.keys() == b.keys() and a["target"].shape[0] == n
            for k in a:
                assert a[k].dtype == b[k].dtype == np.float32
                np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_array_of_an_item_is_cut_at_the_same_window(path):
    out = PATHS[path](aligned_source(), scale=2)(0, 3, 1, 48)
    assert out["teacher_input"].shape == out["input"].shape == (48, PATCH // 2, PATCH // 2, 3)
    assert out["teacher_target"].shape == out["target"].shape == (48, PATCH, PATCH, 3)
    values = {k: np.rint(v * 255).astype(int) for k, v in out.items()}
    for grid in ("target", "input"):
        np.testing.assert_array_equal(values[f"teacher_{grid}"], 255 - values[grid])
    assert len({read_patch(p)[3] for p in out["target"]}) > 4  # under every orientation


def test_the_host_reads_each_orientation_as_the_step_gathers_it():
    image = np.random.default_rng(0).integers(0, 256, (11, 13, 3), dtype=np.uint8)
    for size in (1, 2, 5):
        patches = set()
        for t in range(8):
            r, c = sampler.source_pixel(np.arange(size)[:, None], np.arange(size)[None, :],
                                        np.int32(t), size, np)
            corners = sampler.source_pixel(*sampler._CORNERS, np.int32(t), size, np)
            view = sampler._oriented(image, 2, 3, size, *corners)
            np.testing.assert_array_equal(view, image[2 + r, 3 + c])
            patches.add(view.tobytes())
        assert len(patches) == (1 if size == 1 else 8)


def test_the_host_draws_on_the_cpu_with_explicit_transfers_only():
    with jax.transfer_guard("disallow"):
        out = sampler.term_batch(coordinate_source(), seed=0, step=1, term=0, batch=4,
                                 patch=PATCH)
    assert out["target"].shape == (4, PATCH, PATCH, 3)
    assert sampler._seed_key(0).devices() == {jax.local_devices(backend="cpu")[0]}


def test_host_batches_are_term_batch_in_any_order_and_any_worker_count():
    source = coordinate_source()
    sizes = lambda step: (4, 8) if step < 3 else (16,)
    expected = {s: tuple(sampler.term_batch(source, seed=1, step=s, term=k, batch=n,
                                             patch=PATCH) for k, n in enumerate(sizes(s)))
                for s in range(6)}
    for workers, order in ((1, range(6)), (3, [0, 1, 4, 5, 2])):
        with host.HostBatches(source, seed=1, patch=PATCH, batch_sizes=sizes, start=0, stop=6,
                              workers=workers, prefetch=3) as batches:
            for s in order:
                got = batches.get(s)
                assert len(got) == len(expected[s])
                for g, e in zip(got, expected[s]):
                    np.testing.assert_array_equal(g["target"], e["target"])


def test_host_batches_take_this_process_rows_and_apply_the_transform():
    source = coordinate_source()
    whole = sampler.term_batch(source, seed=0, step=0, term=0, batch=8, patch=PATCH)
    with host.HostBatches(source, seed=0, patch=PATCH, batch_sizes=lambda s: (8,), start=0,
                          stop=1, rows=lambda n: slice(n // 2, n),
                          transform=lambda b: {**b, "input": 1 - b["target"]}) as batches:
        (half,) = batches.get(0)
    np.testing.assert_array_equal(half["target"], whole["target"][4:])
    np.testing.assert_array_equal(half["input"], 1 - whole["target"][4:])
    big = sampler.term_batch(source, seed=0, step=0, term=0, batch=70, patch=PATCH)
    rows = sampler.term_batch(source, seed=0, step=0, term=0, batch=70, patch=PATCH,
                              rows=slice(20, 70))
    np.testing.assert_array_equal(rows["target"], big["target"][20:])


def test_each_image_is_decoded_once_while_the_cache_holds_it():
    source = coordinate_source()
    calls = []

    class Counting:
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            calls.append(i)
            return source[i]

    images = host.DecodedImages(Counting())
    with host.HostBatches(images, seed=0, patch=PATCH, batch_sizes=lambda s: (16, 16), start=0,
                          stop=20, workers=2) as batches:
        assert not batches.filled, "a source of unknown image sizes is decoded as drawn"
        for s in range(20):
            batches.get(s)
    assert sorted(calls) == [0, 1, 2], "640 samples, three decodes"
    with host.HostBatches(source, seed=0, patch=PATCH, batch_sizes=lambda s: (16,), start=0,
                          stop=2) as batches:
        assert batches.filled and batches.images.decodes == 3, "sized and fits: decoded first"
        batches.get(0), batches.get(1)
        assert batches.images.decodes == 3
    small = host.DecodedImages(Counting(), cache_bytes=coordinate_image(20, 24, 0).nbytes)
    calls.clear()
    for i in [0, 1, 0, 1]:
        small[i]
    assert len(calls) == 4, "a cache that holds one image evicts the other"


def test_a_worker_error_is_raised_by_get():
    class Broken:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise OSError(f"disk error reading image {i}")

    with host.HostBatches(Broken(), seed=0, patch=PATCH, batch_sizes=lambda s: (2,), start=0,
                          stop=4, workers=2) as batches:
        with pytest.raises(OSError, match="disk error"):
            batches.get(0)


def test_device_sampler_runs_inside_jit_with_no_transfer():
    mesh = parallel.make_mesh(4)
    dataset = device.load(coordinate_source(), mesh, patch=PATCH)
    seed_key = parallel.put_replicated(jax.random.PRNGKey(0), mesh)
    step = parallel.put_replicated(np.int32(3), mesh)
    sharding = parallel.batch_sharded(mesh)
    cut = jax.jit(functools.partial(device.step_batches, batch_sizes=(8, 16), patch=PATCH,
                                    sharding=sharding))
    cut(dataset, seed_key, step)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        sharded = cut(dataset, seed_key, step)
        jax.block_until_ready(sharded)
    assert sharded[1]["target"].sharding.is_equivalent_to(sharding, 4)
    alone = jax.jit(functools.partial(device.step_batches, batch_sizes=(8, 16), patch=PATCH))
    for a, b in zip(sharded, alone(dataset, seed_key, step)):
        np.testing.assert_array_equal(np.asarray(a["target"]), np.asarray(b["target"]))


def test_device_dataset_keeps_sixteen_bit_images():
    deep = (np.random.default_rng(0).random((12, 12, 3)) * 65535).astype(np.uint16)
    dataset = device.load(ArraySource([deep], ["d"]), parallel.make_mesh(1), patch=12)
    assert dataset.pixels.dtype == jnp.uint16 and dataset.arrays["target"] is dataset.pixels
    cut = jax.jit(functools.partial(device.sample_batch, batch=1, patch=12, augment=False))
    out = cut(dataset, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(out["target"][0]), deep / 65535.0, atol=1e-7)


def data_config(**fields):
    c = defaults.get_config().data
    c.update(fields)
    return c


class FakeDevice:
    platform = "gpu"

    def __init__(self, limit):
        self.limit = limit

    def memory_stats(self):
        return {"bytes_limit": self.limit}


class FakeMesh:
    def __init__(self, dev):
        self.devices = np.array([dev])


def test_auto_places_what_fits_and_says_why():
    source = coordinate_source()
    footprint = device.estimate(source)
    assert (footprint.count, footprint.height, footprint.width) == (3, 20, 30)
    assert footprint.bytes == 3 * 20 * 30 * 3 and not footprint.uniform
    fits = device.choose(data_config(), source, FakeMesh(FakeDevice(8 * footprint.bytes)))
    assert fits.on_device and fits.line.startswith("input: on device, 3 images up to 20x30")
    assert "replicated" in fits.line and "25% of one device's" in fits.line
    too_big = device.choose(data_config(), source, FakeMesh(FakeDevice(2 * footprint.bytes)))
    assert not too_big.on_device and "input: host workers" in too_big.line
    assert "more than 25%" in too_big.line
    forced = device.choose(data_config(on_device="true"), source,
                           FakeMesh(FakeDevice(footprint.bytes)))
    assert forced.on_device and "data.on_device=true" in forced.line
    cpu = device.choose(data_config(), source, parallel.make_mesh(1))
    assert cpu.on_device and "2 GiB cap" in cpu.line
    off = device.choose(data_config(on_device="false"), source, parallel.make_mesh(1))
    assert not off.on_device and "(data.on_device=false)" in off.line
    jpeg = device.choose(data_config(), source, parallel.make_mesh(1), host_corrupt=True)
    assert not jpeg.on_device and "corrupts images on the host" in jpeg.line
    with pytest.raises(ConfigError, match="on_device=true"):
        device.choose(data_config(on_device="true"), source, parallel.make_mesh(1),
                      host_corrupt=True)
    with pytest.raises(ConfigError, match="auto, true or false"):
        device.choose(data_config(on_device="maybe"), source, parallel.make_mesh(1))


def test_estimate_reads_folder_headers_and_paired_lr(tmp_path):
    from PIL import Image

    from msjax.data import scan_folder

    for name, (h, w) in {"a.png": (20, 24), "b.png": (30, 16)}.items():
        Image.fromarray(coordinate_image(h, w, 0)).save(tmp_path / name)
    folder = scan_folder(str(tmp_path))
    assert device.estimate(folder).bytes == 2 * 30 * 24 * 3
    assert device.estimate(folder, resize_to=12).bytes == 2 * 12 * 12 * 3
    paired = PairedSource(folder, folder.files)
    assert device.estimate(paired).bytes == 2 * 2 * 30 * 24 * 3
