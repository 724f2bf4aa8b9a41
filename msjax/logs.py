"""Run logs: CSV per stream, TensorBoard events (tensorboardX, no TensorFlow), image grids,
and a progress line with steps/s and ETA. Only process 0 writes."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

import jax


class CsvLog:
    """Appends rows to ``path``; a resumed run drops rows past its restored step first, so the
    file never holds two histories."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None = None):
        self.path, self.fields = Path(path), fields
        if self.path.exists() and resume_step is not None:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            self._rewrite(rows)
        elif not self.path.exists() or resume_step is None:
            self._rewrite([])

    def _rewrite(self, rows):
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: row.get(k, "") for k in self.fields})


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()}
                for r in csv.DictReader(f)]


TRAIN_FIELDS = ["step", "stage", "loss", "finest_loss", "grad_norm", "lr", "work_units",
                "flops", "seconds", "compile_seconds", "skipped"]
VALID_FIELDS = ["step", "stage", "loss", "psnr", "ssim", "input_psnr", "input_ssim", "work_units",
                "flops", "seconds", "compile_seconds"]


class RunLog:
    def __init__(self, workdir: Path, resume_step: int | None):
        self.enabled = jax.process_index() == 0
        self.workdir = Path(workdir)
        if not self.enabled:
            return
        self.train = CsvLog(self.workdir / "train.csv", TRAIN_FIELDS, resume_step)
        self.valid = CsvLog(self.workdir / "valid.csv", VALID_FIELDS, resume_step)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=resume_step)
        (self.workdir / "images").mkdir(exist_ok=True)

    def scalars(self, stream: str, row: dict):
        if not self.enabled:
            return
        (self.train if stream == "train" else self.valid).write(row)
        for k, v in row.items():
            if k not in ("step",) and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{stream}/{k}", v, int(row["step"]))

    def images(self, step: int, panels: dict[str, np.ndarray], limit: int = 4,
               stream: str = "valid"):
        """A PNG grid (one row per sample, one column per panel) and TensorBoard images, named
        by ``stream`` ('valid': the validation set; 'train': a training batch)."""
        if not self.enabled:
            return
        columns = [np.clip(np.asarray(p[:limit], np.float32), 0, 1) for p in panels.values()]
        size = max(c.shape[1] for c in columns)
        # Panels of other sizes (an SR input) are shown nearest-upscaled to the largest.
        columns = [np.repeat(np.repeat(c, size // c.shape[1], 1), size // c.shape[2], 2)
                   for c in columns]
        grid = np.concatenate([np.concatenate(list(c), axis=0) for c in columns], axis=1)
        Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(
            self.workdir / "images" / f"{stream}_{step:08d}.png")
        for name, c in zip(panels, columns):
            self.tb.add_images(f"{stream}/{name}", c, step, dataformats="NHWC")

    def close(self):
        if self.enabled:
            self.tb.close()


class Progress:
    """One status line every ``every`` steps: step, stage, loss, steps/s and ETA."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.perf_counter()
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                             mininterval=2.0, smoothing=0.1)

    def update(self, step: int, **info):
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                   for k, v in info.items()}, refresh=False)
            self._bar.refresh()

    def write(self, message: str):
        if self._bar is not None:
            self._bar.write(message)
        elif self.enabled:
            print(message, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
