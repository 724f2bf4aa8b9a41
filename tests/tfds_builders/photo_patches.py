"""``msjax_photo_patches``: square crops of the built-in photos as a TFDS dataset.

Configs: ``tiny`` (16 x 16, for tests) and ``stl10_shaped`` (96 x 96 like STL-10, for
bench/input_pipeline.py).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


class PhotoPatchesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, side: int, train: int, test: int, **kwargs):
        super().__init__(**kwargs)
        self.side, self.train, self.test = side, train, test


class MsjaxPhotoPatches(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        PhotoPatchesConfig(name="tiny", side=16, train=12, test=4, description="16 x 16"),
        PhotoPatchesConfig(name="stl10_shaped", side=96, train=4000, test=64,
                           description="96 x 96, STL-10's shape"),
    ]

    def _info(self):
        side = self.builder_config.side
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(side, side, 3)),
            "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {"train": self._generate_examples(c.train, 0),
                "test": self._generate_examples(c.test, 1)}

    def _generate_examples(self, count, seed):
        from msjax.data.sources import BUILTIN_TRAIN, _skimage_photo

        photos = [np.asarray(_skimage_photo(n)) for n in BUILTIN_TRAIN]
        photos = [p if p.ndim == 3 else np.repeat(p[..., None], 3, -1) for p in photos]
        rng, side = np.random.default_rng(seed), self.builder_config.side
        for i in range(count):
            photo = photos[i % len(photos)][..., :3]
            top = int(rng.integers(photo.shape[0] - side + 1))
            left = int(rng.integers(photo.shape[1] - side + 1))
            buf = io.BytesIO()  # encoded here, so preparing needs no TensorFlow
            Image.fromarray(photo[top:top + side, left:left + side]).save(buf, format="PNG")
            yield i, {"image": io.BytesIO(buf.getvalue()), "label": i % 2}
