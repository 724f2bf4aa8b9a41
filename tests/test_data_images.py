"""Folder images as a camera or a scanner writes them: EXIF orientation, 16-bit colour."""

import numpy as np
import png
import pytest
from PIL import Image

from msjax import data, parallel
from msjax.data import device
from msjax.data.folders import decode, image_size

ROTATIONS = {3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


def photo(h=12, w=20):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_with_orientation(path, pixels, orientation, **kwargs):
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, **kwargs)


@pytest.mark.parametrize("orientation", sorted(ROTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    pixels = photo()
    save_with_orientation(tmp_path / "cam.png", pixels, orientation)
    upright = ROTATIONS[orientation](pixels)
    np.testing.assert_array_equal(decode(tmp_path / "cam.png"), upright)
    assert image_size(tmp_path / "cam.png")[:2] == upright.shape[:2]


def test_an_exif_rotated_jpeg_is_used_upright(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = 255  # left half white: upright (rotated 90 clockwise), the top half is
    save_with_orientation(tmp_path / "cam.jpg", pixels, 6, quality=95)
    source = data.scan_folder(str(tmp_path), min_side=16)
    img = source[0]
    assert img.shape == (32, 16, 3)
    assert img[:16].mean() > 200 and img[16:].mean() < 50


def write_png16(path, pixels):
    h, w, _ = pixels.shape
    png.from_array(pixels.reshape(h, w * 3), "RGB;16").save(str(path))


def test_sixteen_bit_colour_png_keeps_its_precision_through_to_float(tmp_path):
    deep = (np.random.default_rng(1).random((24, 24, 3)) * 65535).astype(np.uint16)
    write_png16(tmp_path / "scan.png", deep)
    assert Image.open(tmp_path / "scan.png").mode == "RGB", "Pillow alone would cut it to 8 bits"
    np.testing.assert_array_equal(decode(tmp_path / "scan.png"), deep)
    source = data.scan_folder(str(tmp_path), min_side=24)
    batch = data.term_batch(source, seed=0, step=0, term=0, batch=2, patch=24, augment=False)
    np.testing.assert_allclose(batch["target"][0], deep / 65535.0, atol=1e-7)
    eight_bit_grid = np.abs(batch["target"] * 255 - np.rint(batch["target"] * 255))
    assert eight_bit_grid.max() > 0.1, "values between the 8-bit levels survive"
    assert device.estimate(source).itemsize == 2
    on_device = device.load(source, parallel.make_mesh(1), patch=24)
    assert on_device.pixels.dtype == np.uint16


def test_sixteen_bit_images_survive_the_whole_image_resize(tmp_path):
    deep = (np.random.default_rng(2).random((32, 32, 3)) * 65535).astype(np.uint16)
    out = data.pipeline.resize_whole(deep, 16)
    assert out.dtype == np.uint16 and out.shape == (16, 16, 3)
    assert len(np.unique(out)) > 256
