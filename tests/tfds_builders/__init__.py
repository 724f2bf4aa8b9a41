"""TFDS builders of the tests' own: prepared locally through TFDS's download-and-prepare, with no
network and no TensorFlow (they yield encoded PNGs), then read like any TFDS dataset."""

from tfds_builders.photo_patches import MsjaxPhotoPatches  # noqa: F401  (registers the builder)
