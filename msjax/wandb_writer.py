"""Weights & Biases beside TensorBoard (``log.wandb=True``, ``pip install 'msjax[wandb]'``): the
same scalars, image grids and config as ``logs.RunLog`` writes to TensorBoard, into one W&B run
per run directory.

``log.wandb_mode`` picks online, offline or disabled; left empty, wandb's own ``WANDB_MODE``
decides (online when unset), so ``WANDB_MODE=offline`` keeps a run off the network. An offline
run's files land under ``<workdir>/wandb/`` for ``wandb sync`` later. The W&B run id is kept in
``<workdir>/wandb_id`` so a resumed run appends to the same W&B run.

Each stream ('train', 'valid') is plotted against its own step metric (``train/step``,
``valid/step``), so the two streams, written at different moments of the loop, never have to
share W&B's one monotone history step. A resume that rolls back past logged steps cannot remove
them from W&B (TensorBoard's events are purged); the replayed steps are logged again.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

from msjax.errors import ConfigError

INSTALL = "pip install 'msjax[wandb]'"
MODES = ("", "online", "offline", "disabled")
ID_FILE = "wandb_id"


def check_mode(log) -> None:
    """Refuses (one line) an unknown ``log.wandb_mode``: part of reading the config."""
    if log.wandb_mode not in MODES:
        raise ConfigError(f"log.wandb_mode={log.wandb_mode!r} is not one of online, offline, "
                          "disabled (or empty: WANDB_MODE decides); set one of them")


def check_installed(log) -> None:
    """Refuses (one line) ``log.wandb`` without the wandb package, before training reads or
    compiles anything. Loading or evaluating a trained run needs no wandb, so this is the
    training's check, not the config reader's."""
    if not log.wandb:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(f"log.wandb=True needs the wandb package: {INSTALL}, or set "
                          "log.wandb=False") from None


def _run_id(workdir: Path) -> str:
    """The W&B run id of this run directory, made once and kept so a resume continues it."""
    path = workdir / ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)       # W&B ids: lowercase letters and digits
    path.write_text(run_id + "\n")
    return run_id


class WandbWriter:
    """One W&B run for ``workdir``, with the run's flat config record ({'section.field':
    value}) as its config."""

    def __init__(self, workdir: Path, record: dict, *, project: str, mode: str):
        import wandb

        workdir = Path(workdir)
        self._wandb = wandb
        self.run = wandb.init(
            project=project, name=workdir.name, id=_run_id(workdir), resume="allow",
            dir=str(workdir), config=dict(record), mode=mode or os.environ.get("WANDB_MODE"),
            settings=wandb.Settings(console="off", silent=True))
        for stream in ("train", "valid"):
            self.run.define_metric(f"{stream}/step", hidden=True)
            self.run.define_metric(f"{stream}/*", step_metric=f"{stream}/step")

    def scalars(self, stream: str, row: dict) -> None:
        """The finite numbers of ``row`` as ``<stream>/<field>`` at ``row['step']``."""
        values = {f"{stream}/{k}": v for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v)}
        if values:
            self.run.log({f"{stream}/step": int(row["step"])} | values)

    def image(self, stream: str, step: int, grid) -> None:
        """The labelled image grid (HxWx3 uint8) as ``<stream>/grid`` at ``step``."""
        self.run.log({f"{stream}/step": int(step), f"{stream}/grid": self._wandb.Image(grid)})

    def close(self) -> None:
        self.run.finish()
