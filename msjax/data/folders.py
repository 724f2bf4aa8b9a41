"""Image folders, read with Pillow, with every way a real folder goes wrong handled up front.

Each file is opened and fully decoded once when the source is made, so a truncated file, a
non-image, an odd mode (grayscale, palette, RGBA, 16-bit) or an image smaller than the patch is
found before training starts. ``bad_images='skip'`` drops unusable files with one warning each and
a count; ``'error'`` stops at the first, naming the file.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from msjax.data import pairing
from msjax.data.sources import DataError, list_images

log = logging.getLogger(__name__)


def _png_is_16bit_colour(img) -> bool:
    """Pillow opens 16-bit RGB(A) PNGs as 8-bit 'RGB'/'RGBA'; the tile's raw mode tells."""
    return img.format == "PNG" and any(str(t[3] if len(t) > 3 else "").startswith(
        ("RGB;16", "RGBA;16", "LA;16")) for t in (getattr(img, "tile", None) or []))


def _decode_png16(path: Path) -> np.ndarray:
    """A 16-bit colour PNG at full precision, read with pypng (Pillow has no 16-bit RGB mode)."""
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(height, width, planes)
    if planes in (1, 2):  # grey (+ alpha)
        return np.repeat(arr[..., :1], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def decode(path: Path) -> np.ndarray:
    """An image file as HxWx3, upright (EXIF orientation applied): uint8 for 8-bit files, uint16
    for 16-bit ones (grey or colour), float32 in [0,1] for float ones."""
    with Image.open(path) as img:
        if _png_is_16bit_colour(img):  # checked first: getexif() may load (and clear tile)
            return _orient(_decode_png16(path), img.getexif().get(ORIENTATION_TAG, 1))
        img = ImageOps.exif_transpose(img)  # loads the image; a no-op without EXIF rotation
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L"):
            return np.repeat(np.asarray(img).astype(np.uint16)[..., None], 3, axis=-1)
        if img.mode == "I":
            arr = np.asarray(img, dtype=np.float32) / max(float(np.asarray(img).max()), 1.0)
            return np.repeat(arr[..., None], 3, axis=-1)
        if img.mode == "F":
            return np.repeat(np.clip(np.asarray(img, np.float32), 0, 1)[..., None], 3, axis=-1)
        # RGBA / LA: drop alpha (composite on nothing), palette and grayscale expand to RGB.
        return np.asarray(img.convert("RGB"))


ORIENTATION_TAG = 0x0112


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation (1-8) applied to an array, as ImageOps.exif_transpose does to an image."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def image_size(path: Path) -> tuple[int, int, int]:
    """(height, width, bytes per channel) of an image file as ``decode`` returns it, from its
    header alone (no decoding): the device path sizes its dataset with this before loading."""
    with Image.open(path) as img:
        w, h = img.size
        deep = _png_is_16bit_colour(img) or img.mode.startswith("I;16")  # before getexif()
        if img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):
            w, h = h, w
        return h, w, 2 if deep else (4 if img.mode in ("I", "F") else 1)


@dataclasses.dataclass
class FolderSource:
    """The usable images of one folder (decoded on access; the scan only keeps file names)."""

    files: list
    skipped: dict

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return decode(self.files[int(i)])

    @property
    def names(self):
        return [f.name for f in self.files]


def scan_folder(folder: str, *, min_side: int = 0, bad_images: str = "skip",
                files: list | None = None) -> FolderSource:
    """The usable images of ``folder`` (or of ``files`` in it)."""
    if bad_images not in ("skip", "error"):
        raise DataError(f"data.bad_images must be 'skip' or 'error', not {bad_images!r}")
    good, skipped = [], {}
    for path in list_images(folder) if files is None else files:
        try:
            shape = decode(path).shape
            problem = (f"is {shape[0]}x{shape[1]}, smaller than the {min_side}-pixel patch"
                       if min(shape[:2]) < min_side else None)
        except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, ...
            problem = f"cannot be read ({type(e).__name__}: {e})"
        if problem is None:
            good.append(path)
            continue
        if bad_images == "error":
            raise DataError(f"{path} {problem}; fix or remove it, or set "
                            "--config.data.bad_images=skip")
        log.warning("skipping %s: it %s", path, problem)
        skipped[str(path)] = problem
    if skipped:
        log.warning("skipped %d of %d images in %s", len(skipped), len(skipped) + len(good), folder)
    if not good:
        small = all("smaller than the" in why for why in skipped.values())
        fix = (f"every one is smaller than the {min_side}-pixel patch: lower "
               "--config.data.patch or use larger images" if small and skipped else
               "fix or replace them, or point the config at another folder")
        raise DataError(f"no usable images in {folder} (all {len(skipped)} skipped): {fix}")
    return FolderSource(good, skipped)


@dataclasses.dataclass
class PairedSource:
    """HR images with their LR partners (same file stem), for real-degradation SR data."""

    hr: FolderSource
    lr: list

    def __len__(self):
        return len(self.hr)

    def __getitem__(self, i):
        return self.hr[i], decode(self.lr[int(i)])


def scan_pairs(hr_folder: str, lr_folder: str, *, scale: int, min_side: int = 0,
               bad_images: str = "skip") -> PairedSource:
    """HR images and their LR partners, paired by name (``pairing``); the two folders may be
    one."""
    if Path(hr_folder).expanduser().resolve() == Path(lr_folder).expanduser().resolve():
        hr_files, lr_files = pairing.split_shared_folder(list_images(hr_folder), scale)
        if not hr_files or not lr_files:
            raise DataError(f"{hr_folder} holds both HR and LR images, but no "
                            f"{'HR' if not hr_files else f'x{scale} LR'} ones: LR files are "
                            f"named like 'name_LR{scale}' or 'namex{scale}', HR files 'name' "
                            "or 'name_HR'")
        hr = scan_folder(hr_folder, min_side=min_side, bad_images=bad_images, files=hr_files)
    else:
        hr = scan_folder(hr_folder, min_side=min_side, bad_images=bad_images)
        lr_files = list_images(lr_folder)
    return PairedSource(hr, pairing.pair_files(hr.files, lr_files, scale=scale,
                                               lr_folder=lr_folder))
