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
from PIL import Image

from msjax.data.sources import DataError, list_images

log = logging.getLogger(__name__)


def decode(path: Path) -> np.ndarray:
    """An image file as HxWx3: uint8 for 8-bit files, float32 in [0,1] for 16-bit and float ones."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32) / (65535.0 if img.mode != "I" else
                                                       max(float(np.asarray(img).max()), 1.0))
            return np.repeat(arr[..., None], 3, axis=-1)
        if img.mode == "F":
            return np.repeat(np.clip(np.asarray(img, np.float32), 0, 1)[..., None], 3, axis=-1)
        # RGBA / LA: drop alpha (composite on nothing), palette and grayscale expand to RGB.
        return np.asarray(img.convert("RGB"))


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


def scan_folder(folder: str, *, min_side: int = 0, bad_images: str = "skip") -> FolderSource:
    if bad_images not in ("skip", "error"):
        raise DataError(f"data.bad_images must be 'skip' or 'error', not {bad_images!r}")
    good, skipped = [], {}
    for path in list_images(folder):
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
        raise DataError(f"no usable images in {folder} (all {len(skipped)} skipped)")
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
    hr = scan_folder(hr_folder, min_side=min_side, bad_images=bad_images)
    lr_by_stem = {p.stem: p for p in list_images(lr_folder)}
    # LR files often carry a suffix such as 'x2' or '_LR2'; match on the HR stem as a prefix.
    lr = []
    for f in hr.files:
        match = lr_by_stem.get(f.stem) or next(
            (p for s, p in sorted(lr_by_stem.items()) if s.startswith(f.stem)), None)
        if match is None:
            raise DataError(f"no LR partner for {f} in {lr_folder}; paired folders need one LR "
                            "image per HR image with the same file stem")
        lr.append(match)
    return PairedSource(hr, lr)
