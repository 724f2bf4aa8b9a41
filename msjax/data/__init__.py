"""Data: sources (built-in photos, TFDS, folders, paired folders, the official MGE code's data
directory) and stateless batching by one sampler (``sampler``), on the host
(``host.HostBatches``) or inside the compiled step (``device``)."""

from __future__ import annotations

from msjax.data import device, host, official, prepare, sampler, torch_files
from msjax.data.folders import FolderSource, PairedSource, scan_folder, scan_pairs
from msjax.data.host import DecodedImages, HostBatches
from msjax.data.inputs import TrainingInput
from msjax.data.pipeline import to_float, validation_crops
from msjax.data.sampler import term_batch
from msjax.data.sources import AlignedSource, DataError, builtin_photos, tfds_source
from msjax.registry import Registry

# name -> opener(spec, split, *, scale) of a random-access source of images (arrays, or
# (HR, LR) pairs); a new source is one opener with this decorator.
SOURCES = Registry("data source", field="data.source")


def open_source(spec, split: str, *, scale: int = 1):
    """The images of ``split`` ('train' or 'valid') of ``spec`` (``settings.InputSpec``) as a
    random-access source. ``data.valid_dir`` given with a source of its own splits (builtin,
    tfds, official) validates on that folder instead: a benchmark set such as Set5, as the SR
    papers validate, beside training on DIV2K."""
    if split == "valid" and spec.valid_dir and spec.source in FOLDER_VALIDATED:
        return scan_folder(spec.valid_dir, min_side=spec.min_side(split),
                           bad_images=spec.bad_images)
    return SOURCES.get(spec.source)(spec, split, scale=scale)


# Sources whose validation split ``data.valid_dir`` may replace by a folder of images.
FOLDER_VALIDATED = ("builtin", "tfds", "official")


def validation_origin(spec) -> str:
    """Where the validation images come from, in words, for the start of a run."""
    if spec.valid_dir:
        return spec.valid_dir
    if spec.source in ("tfds", "official"):
        return f"{spec.source} {spec.name}, split {spec.valid_split}"
    return f"{spec.source} images"


@SOURCES.register("builtin")
def _builtin(spec, split: str, *, scale: int = 1):
    return builtin_photos(split)


@SOURCES.register("tfds")
def _tfds(spec, split: str, *, scale: int = 1):
    if not spec.name:
        raise DataError("data.source=tfds needs data.name, e.g. --config.data.name=stl10")
    return tfds_source(spec.name, spec.train_split if split == "train" else spec.valid_split,
                       spec.data_dir, download=spec.download)


@SOURCES.register("folder")
def _folder(spec, split: str, *, scale: int = 1):
    folder = spec.train_dir if split == "train" else (spec.valid_dir or spec.train_dir)
    if not folder:
        raise DataError("data.source=folder needs --config.data.train_dir (and valid_dir)")
    return scan_folder(folder, min_side=spec.min_side(split), bad_images=spec.bad_images)


@SOURCES.register("paired_folders")
def _paired_folders(spec, split: str, *, scale: int = 1):
    hr = spec.train_dir if split == "train" else spec.valid_dir
    lr = spec.train_lr_dir if split == "train" else spec.valid_lr_dir
    if not hr or not lr:
        raise DataError("data.source=paired_folders needs data.train_dir / train_lr_dir and "
                        "data.valid_dir / valid_lr_dir (HR and LR folders)")
    return scan_pairs(hr, lr, scale=scale, min_side=spec.min_side(split),
                      bad_images=spec.bad_images)


@SOURCES.register("official")
def _official(spec, split: str, *, scale: int = 1):
    return official.open_official(spec, split, scale=scale)


__all__ = ["AlignedSource", "DataError", "DecodedImages", "FolderSource", "HostBatches",
           "PairedSource", "SOURCES", "TrainingInput", "device", "host", "official",
           "open_source", "prepare", "sampler", "scan_folder", "scan_pairs", "term_batch",
           "to_float", "torch_files", "validation_crops", "validation_origin"]
