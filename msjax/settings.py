"""The typed, frozen settings that ``build.experiment`` makes from a config's sections.

Every field here is a field of ``msjax/defaults.py`` (where its default and its comment live);
``from_section`` refuses a section with a field this class lacks, or the reverse, so the two cannot
drift apart. Below ``build``, code takes these objects and never a config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def _frozen(value):
    """Lists (JSON's view of tuples) and nested mappings as tuples and plain dicts."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if hasattr(value, "items"):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def from_section(cls, section: Mapping[str, Any], **extra):
    """``cls`` with the fields of ``section`` (and ``extra`` ones build resolved); a field on one
    side only is a bug in msjax (a default without a setting, or the reverse)."""
    values = {k: _frozen(v) for k, v in dict(section).items()} | extra
    names = {f.name for f in dataclasses.fields(cls)}
    if set(values) != names:
        raise TypeError(f"{cls.__name__} and its config section differ: "
                        f"only in the section {sorted(set(values) - names)}, "
                        f"only in {cls.__name__} {sorted(names - set(values))}")
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """The ``task`` section: what ``tasks.make_task`` builds a Task from."""

    name: str
    damage: str
    noise: str
    sigma: float
    blur_sigma: tuple
    level_blur: str
    t_max: float
    box_count: tuple
    box_size: tuple
    scale: int
    kernel: str
    upsample_input: bool
    residual: bool
    model_range: str
    loss: str


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The ``data`` section, with ``valid_patch`` resolved (0 in the config: ``patch``)."""

    source: str
    name: str
    data_dir: str
    download: bool
    train_split: str
    valid_split: str
    train_dir: str
    valid_dir: str
    train_lr_dir: str
    valid_lr_dir: str
    patch: int
    resize_to: int
    resize_mode: str
    resize_method: str
    normalize: bool
    mean: tuple
    std: tuple
    augment: Any                  # True | False | "hflip" (sampler.AUGMENTS)
    valid_images: int
    valid_patch: int
    bad_images: str
    on_device: Any
    device_fraction: float
    host_workers: int
    host_prefetch: int
    host_cache_gib: float

    def min_side(self, split: str) -> int:
        """The smallest image side ``split`` ('train' | 'valid') can use."""
        return self.patch if split == "train" else self.valid_patch


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer and learning-rate part of the ``train`` section; ``lr_schedule`` is
    ``fms.lr_schedule`` in fullmultiscale mode where that is set."""

    optimizer: str
    lr: float
    lr_end: float
    lr_schedule: str
    stage_peak_decay: float
    decay_fraction: float
    lr_step_period: int
    lr_step_factor: float
    weight_decay: float
    grad_clip_value: float
    grad_clip_norm: float
    beta2: float
    lamb_bias_correction: bool
    lamb_max_weight_norm: float
    loss_spike_factor: float


@dataclasses.dataclass(frozen=True)
class AdaptiveSettings:
    """``fms.schedule=adaptive``: when a coarse stage moves on (``multiscale.AdaptiveSchedule``)."""

    window: int
    min_improvement: float
    min_share: float
    budget_units: float


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """``train.init_from``: a fresh run's weights from another run's checkpoint."""

    init_from: str
    init_checkpoint: str


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """The ``log`` section: the loop's cadences and image grids."""

    every: int
    eval_every: int
    checkpoint_every: int
    keep_best: int
    image_count: int
    image_size: int
    wandb: bool
    wandb_project: str
    wandb_mode: str


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The ``eval`` section: metric conventions and inference options."""

    crop_border: int
    y_channel: bool
    tile: int
    tile_overlap: int
    self_ensemble: bool
    whole_valid: bool

    @property
    def metric_kw(self) -> dict:
        return {"crop_border": self.crop_border, "y_channel": self.y_channel}


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """The ``runtime`` section: how this process runs the job (may change on resume)."""

    num_devices: int
    distributed: bool
    coordinator_address: str
    num_processes: int
    process_id: int
    cpu_convolutions: str
    cpu_reductions: str
    fast_compile: bool
    compilation_cache: str
    compilation_cache_gib: float
    transfer_guard: str
    steps_per_call: Any
    compile_ahead: Any
    nonfinite: str
    max_skipped: float
