"""Data: sources (built-in photos, TFDS, folders, paired folders) and stateless batching by one
sampler (``sampler``), on the host (``host.HostBatches``) or inside the compiled step
(``device``)."""

from __future__ import annotations

from msjax.data import device, host, prepare, sampler
from msjax.data.folders import FolderSource, PairedSource, scan_folder, scan_pairs
from msjax.data.host import DecodedImages, HostBatches
from msjax.data.inputs import TrainingInput
from msjax.data.pipeline import to_float, validation_crops
from msjax.data.sampler import term_batch
from msjax.data.sources import AlignedSource, DataError, builtin_photos, tfds_source

SOURCES = ("builtin", "tfds", "folder", "paired_folders")


def open_source(data_config, split: str, *, scale: int = 1):
    """The images of ``split`` ('train' or 'valid') as a random-access source."""
    c = data_config
    min_side = c.patch if split == "train" else (c.valid_patch or c.patch)
    if c.source == "builtin":
        return builtin_photos(split)
    if c.source == "tfds":
        if not c.name:
            raise DataError("data.source=tfds needs data.name, e.g. --config.data.name=stl10")
        return tfds_source(c.name, c.train_split if split == "train" else c.valid_split,
                           c.data_dir, download=c.download)
    if c.source == "folder":
        folder = c.train_dir if split == "train" else (c.valid_dir or c.train_dir)
        if not folder:
            raise DataError("data.source=folder needs --config.data.train_dir (and valid_dir)")
        return scan_folder(folder, min_side=min_side, bad_images=c.bad_images)
    if c.source == "paired_folders":
        hr = c.train_dir if split == "train" else c.valid_dir
        lr = c.train_lr_dir if split == "train" else c.valid_lr_dir
        if not hr or not lr:
            raise DataError("data.source=paired_folders needs data.train_dir / train_lr_dir and "
                            "data.valid_dir / valid_lr_dir (HR and LR folders)")
        return scan_pairs(hr, lr, scale=scale, min_side=min_side, bad_images=c.bad_images)
    raise DataError(f"unknown data.source {c.source!r}; choose one of {', '.join(SOURCES)}")


__all__ = ["AlignedSource", "DataError", "DecodedImages", "FolderSource", "HostBatches",
           "PairedSource", "SOURCES", "TrainingInput", "device", "host",
           "open_source", "prepare", "sampler", "scan_folder", "scan_pairs", "term_batch",
           "to_float", "validation_crops"]
