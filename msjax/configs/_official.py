"""The official MGE experiments' shared recipe: TFDS data, Adam 5e-4 cosine to 1e-6, 8000 steps
(single / multiscale; full-multiscale splits them 8:4:2:1), batch 16, validation on 512 images."""

from msjax import defaults


def official(task: str, dataset: str, patch: int, model: str, *, valid_split: str = "test",
             resize_to: int = 0):
    c = defaults.get_config()
    c.task.name = task
    c.data.source = "tfds"
    c.data.name = dataset
    c.data.train_split = "train"
    c.data.valid_split = valid_split
    c.data.patch = patch
    c.data.resize_to = resize_to     # whole images resized to this side before cropping (0: off)
    c.data.valid_images = 512        # the official code validates on 512 images
    c.model = model
    c.mode = "multiscale"
    c.mge.levels = 3                 # coarsest level patch / 8
    c.batch_size = 16
    c.train.lr = 5e-4
    c.train.steps = 8000
    c.log.eval_every = 250
    return c
