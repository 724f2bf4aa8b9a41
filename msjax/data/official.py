"""The official MGE code's data directory, read as it is (``data.source=official``).

``data.data_dir`` is the directory the official code calls ``MAIN_DATA_DIR``; ``data.name`` picks
the dataset, and ``data.train_split`` / ``data.valid_split`` its parts by TFDS's names (so a paper
config means the same images on either source):

- ``cifar10``: ``cifar-10-batches-py/data_batch_1..5`` (train) and ``test_batch`` (test), the
  python version's pickles, read by a restricted unpickler (``safe_pickle``);
- ``stl10``: ``stl10_binary/{train,unlabeled,test}_X.bin``, raw 3x96x96 images stored channel
  first and column major, memory-mapped (``unlabeled_X.bin`` is 2.7 GB) and decoded on access;
  the paper configs train on train+unlabelled (105k images), as the official code does;
- ``celeba`` (or TFDS's ``celeb_a``): ``CelebA/img_align_celeba/*.jpg`` split by
  ``CelebA/list_eval_partition.txt`` (0 train, 1 validation, 2 test), decoded on access;
- ``urban100``: ``Urban100/{low,high}_res_{train,test}.pt``, torch-saved lists of CxHxW tensors
  with HR = 2 x LR, read without torch (``torch_files``); items are (HR, LR) pairs.

The official SR loader cuts a fixed set of patches once (10 random 64-pixel LR crops per training
image, 2 per test image, shuffled) and validates on the first 200 test patches; msjax cuts fresh
random windows every step (``sampler``) and validates on ``data.valid_images`` fixed crops of
``data.valid_patch`` spread over the test images (``pipeline.validation_crops``).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from pathlib import Path

import numpy as np

from msjax.data import safe_pickle, torch_files
from msjax.errors import DataError

NAMES = ("cifar10", "stl10", "celeba", "urban100")
ALIASES = {"celeb_a": "celeba"}

# Where each dataset comes from, for the line a missing file ends with.
OBTAIN = {
    "cifar10": "unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there",
    "stl10": "unpack http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz there",
    "celeba": "put CelebA's img_align_celeba/ (img_align_celeba.zip unpacked) and "
              "list_eval_partition.txt in <data_dir>/CelebA",
    "urban100": "the official code expects these files from the user (torch-saved lists of "
                "CxHxW tensors)",
}
TFDS_NAMES = {"cifar10": "cifar10", "stl10": "stl10", "celeba": "celeb_a"}


def dataset_name(name: str) -> str:
    """``data.name`` as one of ``NAMES``, or DataError listing them."""
    name = ALIASES.get(name, name)
    if name not in NAMES:
        raise DataError(f"data.source=official reads {', '.join(NAMES)} (data.name), not "
                        f"{name!r}; set --config.data.name to one of them")
    return name


def _missing(path: Path, name: str) -> DataError:
    tfds = ", or use --config.data.source=tfds" if name in TFDS_NAMES else ""
    return DataError(f"{path} does not exist: data.source=official reads the official code's "
                     f"data directory (data.data_dir); {OBTAIN[name]}{tfds}")


def _parts(split: str, known: dict, name: str) -> list[str]:
    """A TFDS split expression ('train+unlabelled') as the dataset's parts, each once."""
    parts = []
    for word in str(split).split("+"):
        part = known.get(word.strip())
        if part is None:
            raise DataError(f"data.source=official: {name} has no split {word.strip()!r} "
                            f"(known: {', '.join(known)}; join them with '+', no slices)")
        parts += [] if part in parts else [part]
    return parts


def open_official(spec, split: str, *, scale: int = 1):
    """The images of ``split`` ('train' | 'valid') of ``spec`` (``settings.InputSpec``) from the
    official data directory ``spec.data_dir``."""
    name = dataset_name(spec.name)
    if not spec.data_dir:
        raise DataError("data.source=official needs --config.data.data_dir=/path/to/DATA, the "
                        "official code's data directory (its MAIN_DATA_DIR)")
    root = Path(spec.data_dir).expanduser()
    parts = spec.train_split if split == "train" else spec.valid_split
    if name == "cifar10":
        return cifar10(root, _parts(parts, {"train": "train", "test": "test"}, name))
    if name == "stl10":
        return stl10(root, _parts(parts, {"train": "train", "unlabelled": "unlabeled",
                                          "unlabeled": "unlabeled", "test": "test"}, name))
    if name == "celeba":
        return celeba(root, _parts(parts, {"train": 0, "validation": 1, "valid": 1, "test": 2},
                                   name))
    pairs = urban100(root, _parts(parts, {"train": "train", "test": "test"}, name), scale)
    # Training windows must fit every pair (validation skips the images that are too small).
    side = spec.patch // max(scale, 1)
    small = [i for i, lr in enumerate(pairs.lr) if min(lr.shape[:2]) < side]
    if split == "train" and small:
        raise DataError(f"Urban100 training pair {small[0]} has a {pairs.lr[small[0]].shape[0]}x"
                        f"{pairs.lr[small[0]].shape[1]} LR image, smaller than the {side}-pixel "
                        f"LR window of data.patch={spec.patch}; lower data.patch")
    return pairs


# --- CIFAR-10 -----------------------------------------------------------------------------------

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_ROW = 3 * 32 * 32


@dataclasses.dataclass
class CifarImages:
    """CIFAR-10 rows (N, 3072) uint8: 1024 red, 1024 green, then 1024 blue values, each plane a
    32x32 image row by row."""

    rows: np.ndarray

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return np.ascontiguousarray(self.rows[int(i)].reshape(3, 32, 32).transpose(1, 2, 0))

    def image_shapes(self) -> list:
        return [(32, 32, 1)] * len(self.rows)


def _cifar_rows(path: Path) -> np.ndarray:
    batch = safe_pickle.load(path.read_bytes(), str(path), safe_pickle.BUILTINS
                             | safe_pickle.NUMPY, encoding="bytes",
                             fix="download cifar-10-python.tar.gz again")
    rows = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 2
            and rows.shape[1] == CIFAR_ROW):
        found = (f"{rows.dtype} {rows.shape}" if isinstance(rows, np.ndarray) else
                 type(rows).__name__ if isinstance(batch, dict) else type(batch).__name__)
        raise DataError(f"{path}: its data is {found}, expected uint8 rows of {CIFAR_ROW} bytes "
                        "(32x32 images: 1024 R, 1024 G, 1024 B values); download "
                        "cifar-10-python.tar.gz again")
    return rows


def cifar10(root: Path, parts: list) -> CifarImages:
    files = [root / CIFAR_DIR / f for part in parts for f in CIFAR_FILES[part]]
    for path in files:
        if not path.is_file():
            raise _missing(path, "cifar10")
    return CifarImages(np.concatenate([_cifar_rows(p) for p in files]))


# --- STL-10 -------------------------------------------------------------------------------------

STL_DIR = "stl10_binary"
STL_SIDE = 96
STL_IMAGE = 3 * STL_SIDE * STL_SIDE


@dataclasses.dataclass
class StlImages:
    """STL-10 binaries, memory-mapped: image i is decoded when it is read."""

    maps: list           # (n, 27648) uint8 memmaps, one per file
    starts: list         # index of each file's first image

    def __len__(self):
        return self.starts[-1] + len(self.maps[-1])

    def __getitem__(self, i):
        i = int(i)
        f = bisect.bisect_right(self.starts, i) - 1
        # Stored channel first and column major: (3, W, H) in C order.
        return np.ascontiguousarray(
            self.maps[f][i - self.starts[f]].reshape(3, STL_SIDE, STL_SIDE).transpose(2, 1, 0))

    def image_shapes(self) -> list:
        return [(STL_SIDE, STL_SIDE, 1)] * len(self)


def _stl_map(path: Path) -> np.memmap:
    if not path.is_file():
        raise _missing(path, "stl10")
    size = path.stat().st_size
    if size == 0 or size % STL_IMAGE:
        raise DataError(f"{path} is {size} bytes, not a whole number of {STL_IMAGE}-byte images "
                        f"(3x{STL_SIDE}x{STL_SIDE}); it is truncated or not an STL-10 binary: "
                        "download stl10_binary.tar.gz again")
    return np.memmap(path, np.uint8, "r", shape=(size // STL_IMAGE, STL_IMAGE))


def stl10(root: Path, parts: list) -> StlImages:
    maps = [_stl_map(root / STL_DIR / f"{part}_X.bin") for part in parts]
    return StlImages(maps, list(np.cumsum([0] + [len(m) for m in maps[:-1]]).tolist()))


# --- CelebA -------------------------------------------------------------------------------------

@dataclasses.dataclass
class CelebaImages:
    """CelebA's aligned JPEGs of one split, decoded on access (200k files: none up front)."""

    files: list

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from msjax.data.folders import decode

        return decode(self.files[int(i)])


def _celeba_dir(root: Path) -> Path:
    """``CelebA/`` as the official code names it (torchvision's lower-case ``celeba/`` too)."""
    for name in ("CelebA", "celeba"):
        if (root / name).is_dir():
            return root / name
    raise _missing(root / "CelebA", "celeba")


def celeba(root: Path, parts: list) -> CelebaImages:
    folder = _celeba_dir(root)
    listing, images = folder / "list_eval_partition.txt", folder / "img_align_celeba"
    if not listing.is_file():
        raise _missing(listing, "celeba")
    if not images.is_dir():
        raise _missing(images, "celeba")
    names = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{listing} line {number} is {line.strip()!r}, not '<file> <0|1|2>'; "
                            "download list_eval_partition.txt again")
        if int(fields[1]) in parts:
            names.append(fields[0])
    if not names:
        raise DataError(f"{listing} lists no image of partition {parts} (0 train, 1 validation, "
                        "2 test)")
    present = set(os.listdir(images))
    missing = [n for n in names if n not in present]
    if missing:
        raise DataError(f"{len(missing)} of the {len(names)} images {listing.name} lists are not "
                        f"in {images} (the first: {missing[0]}); unpack img_align_celeba.zip "
                        "there again")
    return CelebaImages([images / n for n in names])


# --- Urban100 (SR pairs) ------------------------------------------------------------------------

# Float tensors a little outside [0, 1] (a bicubic LR's overshoot) are clipped; further out they
# are not images in ToTensor's range.
FLOAT_SLACK = 0.05


def _tensor_images(path: Path) -> list:
    """The CxHxW tensors saved in ``path`` as HxWx3 arrays: uint8 as they are, floats in [0, 1]
    as float32."""
    if not path.is_file():
        raise _missing(path, "urban100")
    saved = torch_files.load(path)
    if isinstance(saved, np.ndarray) and saved.ndim in (3, 4):
        saved = list(saved) if saved.ndim == 4 else [saved]
    if not isinstance(saved, (list, tuple)) or not saved:
        raise DataError(f"{path} holds {type(saved).__name__}, expected a list of CxHxW tensors "
                        "(as the official code saves Urban100)")
    images = []
    for i, t in enumerate(saved):
        if not (isinstance(t, np.ndarray) and t.ndim == 3 and t.shape[0] in (1, 3)):
            shape = getattr(t, "shape", type(t).__name__)
            raise DataError(f"{path} item {i} is {shape}, expected a CxHxW tensor with 1 or 3 "
                            "channels")
        img = np.repeat(t, 3, axis=0) if t.shape[0] == 1 else t
        if img.dtype == np.uint8:
            images.append(np.ascontiguousarray(img.transpose(1, 2, 0)))
            continue
        if img.dtype.kind != "f" and str(img.dtype) != "bfloat16":
            raise DataError(f"{path} item {i} is {img.dtype}; expected uint8, or floats in [0, 1]")
        img = img.astype(np.float32)
        low, high = float(img.min()), float(img.max())
        if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
            raise DataError(f"{path} item {i} holds values in [{low:g}, {high:g}]; expected "
                            "floats in [0, 1] (ToTensor's range) or uint8")
        images.append(np.ascontiguousarray(np.clip(img, 0, 1).transpose(1, 2, 0)))
    return images


@dataclasses.dataclass
class TensorPairs:
    """(HR, LR) pairs held in memory, HR = scale x LR on each side."""

    hr: list
    lr: list

    def __len__(self):
        return len(self.hr)

    def __getitem__(self, i):
        return self.hr[int(i)], self.lr[int(i)]

    def image_shapes(self) -> list:
        return [(a.shape[0], a.shape[1], a.dtype.itemsize) for a in self.hr]

    def lr_shapes(self) -> list:
        return [(a.shape[0], a.shape[1], a.dtype.itemsize) for a in self.lr]


def urban100(root: Path, parts: list, scale: int) -> TensorPairs:
    hr, lr = [], []
    for part in parts:
        high = root / "Urban100" / f"high_res_{part}.pt"
        low = root / "Urban100" / f"low_res_{part}.pt"
        hr_part, lr_part = _tensor_images(high), _tensor_images(low)
        if len(hr_part) != len(lr_part):
            raise DataError(f"{high.name} holds {len(hr_part)} images but {low.name} "
                            f"{len(lr_part)}; they must pair one to one")
        for i, (h, l) in enumerate(zip(hr_part, lr_part)):
            if h.shape[:2] != (l.shape[0] * scale, l.shape[1] * scale):
                raise DataError(f"{high} item {i} is {h.shape[0]}x{h.shape[1]}, not {scale} x "
                                f"its LR partner's {l.shape[0]}x{l.shape[1]} (task.scale="
                                f"{scale}); the official files hold HR = 2 x LR")
        hr, lr = hr + hr_part, lr + lr_part
    return TensorPairs(hr, lr)
