"""Small configs and data for end-to-end tests.

The suite's time goes to XLA compiles: keep new tests tiny, and let ``tiny_config`` pick Eigen
convolutions (no kernel measurement, no oneDNN build)."""

from pathlib import Path

import numpy as np
from PIL import Image

from msjax import defaults


def tiny_config(**overrides):
    """A config that trains in seconds: 16x16 patches, a 2-layer CNN, a few steps."""
    c = defaults.get_config()
    c.data.patch = 16
    c.data.valid_images = 4
    c.model = "residual_cnn"
    c.model_kwargs = dict(features=8, depth=2)
    c.task.residual = True
    c.task.blur_sigma = (1.0, 1.0)
    c.batch_size = 4
    c.mge.levels = 2
    c.mge.finest_batch = 4
    c.mge.batch_growth = 1
    c.fms.stage_weights = (1, 1, 1)
    c.train.steps = 3
    c.train.lr = 1e-3
    c.log.eval_every = 3
    c.log.every = 1
    c.log.checkpoint_every = 1
    c.runtime.num_devices = 1
    # A fixed kernel: "auto" would compile and time every candidate (tests/test_backend.py
    # covers it).
    c.runtime.cpu_convolutions = "eigen"
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def write_images(folder: Path, count: int = 4, size=(24, 28), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        img = (rng.random(size + (3,)) * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return folder


def optimizer(settings, total_steps: int, stage_ends=()):
    """The optimizer of ``settings`` (``settings.OptimizerSettings``) over ``total_steps``."""
    from msjax import optim

    return optim.make_optimizer(settings, optim.learning_rate(settings, total_steps, stage_ends))


def create_state(model, config, sample, total_steps: int, mesh):
    """A fresh train state of ``model`` for ``config`` (the loop's ``build.create_train_state``)."""
    import jax

    from msjax import backend, build, optim

    settings = build.optimizer_settings(config)
    tx = optim.make_optimizer(settings, optim.learning_rate(settings, total_steps))
    return build.create_train_state(jax.random.PRNGKey(config.seed), model, sample, tx=tx,
                                    mesh=mesh, backend=backend.make_backend(config.runtime, mesh))


def can_mount_tmpfs() -> bool:
    """Whether a private mount namespace can mount a small tmpfs (root with unshare: here and in
    CI), for storage faults that only a real filesystem gives (Orbax / TensorStore writers)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0
