"""Image sources: random access to whole images as HxWx3 arrays (uint8, uint16 or float in [0,1]).

A source is anything with ``len()`` and ``source[i]``. Four kinds: real photos that ship inside
scikit-image (offline, no download), TFDS datasets through ``tfds.data_source`` (ArrayRecord, no
TensorFlow at train time), one folder of images, and paired LR/HR folders.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# Photographs bundled with scikit-image. Two are held out for validation.
BUILTIN_TRAIN = ("chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "motorcycle_left", "motorcycle_right")
BUILTIN_VALID = ("astronaut", "coffee")


from msjax.errors import DataError  # noqa: E402  (re-exported: data.DataError)


@dataclasses.dataclass
class ArraySource:
    """Images held in memory."""

    images: Sequence[np.ndarray]
    names: Sequence[str]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@dataclasses.dataclass
class AlignedSource:
    """``base``'s items with more arrays that the sampler cuts at the same windows: item i holds
    ``base[i]``'s arrays by batch key ('target', and 'input' for a pair) and ``more[i]``'s, a
    dict of batch key -> array, each at least the size of the base image on its grid (the LR
    grid for keys in ``sampler.LR_GRID``). ``keys``: ``more``'s batch keys. ``resize`` applies
    to base items that are one image; the aligned arrays are made at the resized size."""

    base: object
    more: object
    keys: tuple
    resize: Callable | None = None

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        from msjax.data.sampler import fields

        item = self.base[i]
        if self.resize is not None and not isinstance(item, (tuple, dict)):
            item = self.resize(item)
        return {**fields(item), **self.more[i]}


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


def builtin_photos(split: str) -> ArraySource:
    names = BUILTIN_TRAIN if split == "train" else BUILTIN_VALID
    return ArraySource([_skimage_photo(n) for n in names], list(names))


def tfds_data_dir(data_dir: str = "") -> str:
    return data_dir or os.environ.get("TFDS_DATA_DIR") or str(
        Path("~/tensorflow_datasets").expanduser())


def tfds_source(name: str, split: str, data_dir: str = "", *, download: bool = False):
    """A TFDS dataset as ArrayRecord. With ``download``, a dataset not prepared yet is prepared
    first (``prepare.prepare``: network probe, then TFDS's download-and-prepare); without, a
    missing dataset fails at once with the manual steps."""
    import tensorflow_datasets as tfds

    from msjax.data import prepare

    data_dir = tfds_data_dir(data_dir)

    def open_records():
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)

    try:
        return TfdsImages(open_records())
    except Exception as e:  # tfds raises several types for "not prepared as ArrayRecord"
        first_error = e
    if download:
        prepare.prepare(name, data_dir)
        try:
            return TfdsImages(open_records())
        except Exception as e:
            first_error = e
    e = first_error
    raise DataError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared as ArrayRecord under "
        f"{data_dir}; {prepare.manual_steps(name, data_dir)} "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


@dataclasses.dataclass
class TfdsImages:
    records: object

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        record = self.records[int(i)]
        # div2k stores 'hr' (and 'lr'): SR trains on the HR image and makes its LR like any other.
        return record["image"] if "image" in record else record["hr"]


def list_images(folder: str) -> list[Path]:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {folder!r} does not exist; set --config.data.train_dir / "
                        "valid_dir to a folder of images")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {folder!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files
