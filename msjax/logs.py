"""Run logs: CSV per stream, TensorBoard events (tensorboardX, no TensorFlow), labelled image
grids, a progress line with the best PSNR and an ETA that leaves compiling out, ``train.log``,
and the summary printed when a run ends. Only process 0 writes.

What the training loop calls::

    quiet_library_logs()                         # once, before checkpoints are opened
    progress = Progress(total, start, workdir, enabled=is_process_0, stages=len(stages))
    progress.plan(end_steps, cost_per_step)     # the ETA sums each stage's steps at its cost
    progress.compiling(stage); ...; progress.compiled(stage, seconds)
    progress.update(step, stage=stage, terms=plan.num_terms, loss=loss, best_psnr=best)
    progress.write("step 100 stage 0: valid PSNR ...")   # a line above the bar and in train.log
    runlog = RunLog(workdir, resume_step, image_count=..., image_size=...)
    runlog.config(config); runlog.images(step, {"input": y, "output": out, "target": x})
    print(final_summary(workdir, result))
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import jax

from msjax import storage


class CsvLog:
    """Rows appended to ``path``, the one CSV writer of msjax (train.csv, valid.csv, eval's
    per_image.csv, summaries). A resumed run (``resume_step``) drops rows past its restored step
    and a last row cut short by a failed write first, so the file never holds two histories or
    half a row; a row with a field the header lacks rewrites the file with the wider header
    (``fields`` may start empty). A failed write is one ``StorageError`` line."""

    def __init__(self, path: Path, fields=(), resume_step: int | None = None):
        self.path, self.fields, self.rows = Path(path), list(fields), None
        if self.path.exists() and resume_step is not None:
            storage.cut_partial_line(self.path)
            with storage.writing(self.path, f"reading {self.path}"), \
                    open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            self._rewrite(rows)
        elif not self.path.exists() or resume_step is None:
            self._rewrite([])

    def _rewrite(self, rows):
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields, restval="")
                w.writeheader()
                w.writerows(rows)
        storage.write_file(self.path, write)

    def write(self, row: dict):
        new = [k for k in row if k not in self.fields]
        if new:
            with storage.writing(self.path, f"reading {self.path}"), \
                    open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields += new
            self._rewrite(rows + [row])
            return
        # One write call per row: a failure leaves at most a partial last line, which the next
        # resume cuts off.
        line = io.StringIO()
        csv.DictWriter(line, self.fields, restval="").writerow(
            {k: row.get(k, "") for k in self.fields})
        with storage.writing(self.path), open(self.path, "a", newline="") as f:
            f.write(line.getvalue())


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as a new CSV file, every row's fields in the header."""
    log = CsvLog(path)
    for row in rows:
        log.write(row)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()}
                for r in csv.DictReader(f)]


TRAIN_FIELDS = ["step", "stage", "loss", "finest_loss", "grad_norm", "lr", "work_units",
                "flops", "seconds", "compile_seconds", "compile_hidden_seconds", "skipped"]
VALID_FIELDS = ["step", "stage", "loss", "psnr", "ssim", "input_psnr", "input_ssim", "work_units",
                "flops", "seconds", "compile_seconds", "compile_hidden_seconds", "skipped"]


# Notices libraries print through absl that say nothing a user can act on. Orbax: a save without
# metrics in a manager that tracks the best (our plain resume checkpoints do that on purpose), and
# the options it adjusts itself when a run is opened read-only (loading a run to evaluate it).
LIBRARY_NOTICES = (
    "Requested `tracked_metric`; did not provide metrics.",
    "CheckpointManagerOptions.read_only=True, setting",
    "Given directory is read only",
    # TFDS, looking for a dataset that is not prepared yet (msjax then prepares it or says how):
    # its format string, whose arguments are the folder and "dataset_info.json".
    "Variant folder %s has no %s",
)


class _DropNotices(logging.Filter):
    """Matches a record's format string (``record.msg``, before its arguments are put in)."""

    def filter(self, record):
        return not (isinstance(record.msg, str) and record.msg.startswith(LIBRARY_NOTICES))


def quiet_library_logs() -> None:
    """Drops exactly ``LIBRARY_NOTICES`` from absl's logger (Orbax logs through it); every other
    warning still shows. Idempotent."""
    from absl import logging as absl_logging

    # On absl's logger (Orbax logs to it) and on absl's handler, which prints the records of
    # every library's logger (TFDS's too).
    for target in (logging.getLogger("absl"), absl_logging.get_absl_handler()):
        if not any(isinstance(f, _DropNotices) for f in target.filters):
            target.addFilter(_DropNotices())


class TextLog:
    """``train.log``: every progress line with the wall-clock time, appended across resumes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.exists():
            storage.cut_partial_line(self.path)
        with storage.writing(self.path):
            self._file = open(self.path, "a", encoding="utf-8")

    def write(self, line: str):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = "".join(f"{stamp} {part}\n" for part in str(line).splitlines() or [""])
        with storage.writing(self.path):
            self._file.write(text)
            self._file.flush()

    def close(self):
        with contextlib.suppress(OSError):  # what failed was raised where it was written
            self._file.close()


def append_to_log(workdir, text: str, cause: BaseException | None = None) -> bool | None:
    """The lines a run ends with (the summary, the stop line, the final error and the
    traceback of its ``cause``) appended to ``workdir/train.log`` if the run wrote one (else
    None); best effort: False if it could not be written."""
    path = Path(workdir) / "train.log"
    if jax.process_index() != 0 or not path.exists():
        return None
    if cause is not None:
        import traceback

        text += "".join(f"\nlibrary: {line}" for part in traceback.format_exception(cause)
                        for line in part.rstrip("\n").splitlines())
    try:
        log = TextLog(path)
        try:
            log.write(text)
        finally:
            log.close()
    except OSError:
        return False
    return True


def hms(seconds: float) -> str:
    """``m:ss`` under an hour, else ``h:mm:ss``; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _db(psnr) -> str:
    return f"{psnr:.2f} dB" if psnr is not None and math.isfinite(psnr) else "-"


class Progress:
    """The run's status: a tqdm bar on a terminal, else one plain line per ``update``; every line
    also goes to ``workdir/train.log``.

    The rate is measured on the time between updates minus the compile time reported in it,
    smoothed over recent updates, per stage: a stage's compile does not make the rest of the run
    look slower. The ETA (``eta_seconds``), given the stages' plan (``plan``: each stage's end
    step and cost per step, e.g. work units or FLOPs), sums each remaining stage's steps at that
    stage's measured step time; a stage not run yet takes its cost per step times the seconds per
    unit of cost measured on the dearest stage run so far. Compiles are left out. Without a plan it extrapolates the rate.
    ``stage`` is the 0-based index the CSVs hold; lines show it as ``stage k/J``. ``loss`` is
    the step's MGE estimate (the telescoped sum over the stage's terms, which can be negative),
    shown as ``mge loss``.
    """

    def __init__(self, total: int, start: int = 0, workdir=None, enabled: bool = True, *,
                 stages: int = 1, stream=None, smoothing: float = 0.3, plan=None):
        self.total, self.stages, self.enabled = total, stages, enabled
        self.ends, self.costs = (), ()
        self._per_step = {}    # stage -> measured seconds per step (smoothed)
        self._measured = {}    # stage -> [steps, seconds] measured in it
        if plan is not None:
            self.plan(*plan)
        self.stream = sys.stdout if stream is None else stream
        self.smoothing = smoothing
        self.rate = None  # training steps per second
        self.log = TextLog(Path(workdir) / "train.log") if enabled and workdir else None
        self._compiling = None  # (label, started) while a stage compiles
        self._compile_in_interval = 0.0
        self._last = {}
        self.start = start
        self._bar = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            # A terminal that reports no size (a pty without one) would get an empty bar.
            sized = _columns(self.stream) > 0
            self._bar = tqdm(total=total, initial=start, file=self.stream, unit="step",
                             dynamic_ncols=sized, ncols=None if sized else 120,
                             nrows=None if sized else 24,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}")

    def plan(self, ends, costs) -> None:
        """The stages' end steps (cumulative, the last one ``total``) and each one's cost per step
        (any unit: work units, FLOPs); an adaptive decision brings new ones."""
        self.ends, self.costs = tuple(int(e) for e in ends), tuple(float(c) for c in costs)
        self.stages = len(self.ends)
        if self.ends:
            self.total = self.ends[-1]

    @property
    def start(self) -> int:
        return self._start

    @start.setter
    def start(self, step: int):
        """Where the rate is measured from (the loop sets it after a restore)."""
        self._start = self._mark_step = step
        self._mark_time = time.perf_counter()
        self._compile_in_interval = 0.0
        if getattr(self, "_bar", None) is not None:
            self._bar.n = self._bar.initial = step
            self._bar.refresh()

    def stage_label(self, stage, terms=None) -> str:
        if isinstance(stage, str):
            return stage
        label = f"stage {stage + 1}/{self.stages}"
        return label + (f", {terms} term{'s' if terms != 1 else ''}" if terms else "")

    def compiling(self, stage, terms: int | None = None):
        """Says that ``stage`` (an index, or a name such as 'validation') compiles now."""
        self._compiling = (stage, time.perf_counter())
        label = f"compiling {self.stage_label(stage, terms)}"
        if self._bar is not None:
            self._bar.set_postfix_str(label + " ...", refresh=True)
            if self.log:
                self.log.write(label)
        else:
            self.write(label)

    def compiled(self, stage, seconds: float | None = None, detail: str = ""):
        """Ends ``compiling(stage)``; ``seconds`` defaults to the time since it; ``detail``
        (e.g. the kernels chosen) follows on the same line."""
        started = self._compiling[1] if self._compiling else time.perf_counter()
        seconds = time.perf_counter() - started if seconds is None else seconds
        self._compiling = None
        self._compile_in_interval += seconds
        self.write(f"compiled {self.stage_label(stage)} in {seconds:.1f} s"
                   + (f"; {detail}" if detail else ""))

    def set_up(self, seconds: float):
        """``seconds`` of set-up other than a reported compile (e.g. timing a stage's steps per
        call), left out of the rate as compiles are."""
        self._compile_in_interval += max(0.0, seconds)

    def line(self, step: int, *, stage=0, terms=None, loss=None, best_psnr=None) -> str:
        pct = 100.0 * step / self.total if self.total else 100.0
        parts = [f"step {step}/{self.total} ({pct:.0f}%)", self.stage_label(stage, terms)]
        if loss is not None:
            parts.append(f"mge loss {loss:.4g}")
        parts.append(f"best {_db(best_psnr)}")
        parts.append(f"{self.rate:.2f} step/s" if self.rate else "- step/s")
        parts.append(f"ETA {self.eta(step)}")
        return "  ".join(parts)

    def eta(self, step: int) -> str:
        return hms(self.eta_seconds(step))

    def eta_seconds(self, step: int) -> float:
        """Seconds of training left after ``step`` (compiles apart); NaN before any rate."""
        if not self.ends or len(self.costs) != len(self.ends):
            return (self.total - step) / self.rate if self.rate else math.nan
        # Seconds per unit of cost from the dearest stage measured so far: a step's fixed costs
        # (which do not shrink with the grid) weigh least there, as in the dearer stages ahead.
        measured = [j for j in self._measured if j < len(self.costs) and self.costs[j] > 0]
        dearest = max(measured, key=lambda j: self.costs[j], default=None)
        per_unit = None
        if dearest is not None:
            n, spent = self._measured[dearest]
            per_unit = spent / (n * self.costs[dearest])
        left, begin = 0.0, 0
        for j, (end, cost) in enumerate(zip(self.ends, self.costs)):
            steps = end - max(step, begin)
            begin = end
            if steps <= 0:
                continue
            if j in self._per_step:
                per_step = self._per_step[j]
            elif per_unit is not None:
                per_step = cost * per_unit
            elif self.rate:
                per_step = 1.0 / self.rate
            else:
                return math.nan
            left += steps * per_step
        return left

    def update(self, step: int, *, stage=0, terms: int | None = None, loss: float | None = None,
               best_psnr: float | None = None, psnr: float | None = None):
        """Called at every log step with what the line shows; ``best_psnr`` is the best
        validation PSNR so far (None, NaN or -inf before the first evaluation: shown as '-').
        ``psnr`` is its older name, kept until every caller passes ``best_psnr``."""
        if not self.enabled:
            return
        best_psnr = psnr if best_psnr is None else best_psnr
        now = time.perf_counter()
        steps, seconds = step - self._mark_step, now - self._mark_time - self._compile_in_interval
        if steps > 0 and seconds > 0:
            rate = steps / seconds
            if isinstance(stage, (int, np.integer)) and not isinstance(stage, bool):
                stage = int(stage)
                n, spent = self._measured.get(stage, (0, 0.0))
                self._measured[stage] = (n + steps, spent + seconds)
                before = self._per_step.get(stage)
                self._per_step[stage] = seconds / steps if before is None else (
                    self.smoothing * seconds / steps + (1 - self.smoothing) * before)
                self.rate = 1.0 / self._per_step[stage]
            else:
                self.rate = rate if self.rate is None else (
                    self.smoothing * rate + (1 - self.smoothing) * self.rate)
        self._mark_step, self._mark_time, self._compile_in_interval = step, now, 0.0
        line = self.line(step, stage=stage, terms=terms, loss=loss, best_psnr=best_psnr)
        if self.log:
            self.log.write(line)
        if self._bar is not None:
            self._bar.n = step
            postfix = [self.stage_label(stage, terms)]
            if loss is not None:
                postfix.append(f"mge loss {loss:.4g}")
            postfix += [f"best {_db(best_psnr)}",
                        f"{self.rate:.2f} step/s" if self.rate else "- step/s",
                        f"ETA {self.eta(step)}"]
            self._bar.set_postfix_str(", ".join(postfix), refresh=True)
        else:
            print(line, file=self.stream, flush=True)

    def write(self, message: str):
        """A line above the bar (or on its own), also in train.log."""
        if not self.enabled:
            return
        if self.log:
            self.log.write(message)
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.log:
            self.log.close()
            self.log = None


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 0


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---- image grids -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _font(size: int):
    """DejaVu Sans, which ships with matplotlib; Pillow's own default font otherwise."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # no matplotlib or no font file: a smaller, plainer bitmap font
        return ImageFont.load_default()


def _text_width(text: str, size: int) -> int:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=_font(size))
    return box[2] - box[0]


def to_u8(img) -> np.ndarray:
    """A float image in [0, 1] as 8-bit, rounded to nearest (values outside are clipped)."""
    return (np.clip(np.asarray(img, np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)


def save_png(path: Path, img) -> None:
    """A float image in [0, 1] (or an 8-bit one) as a PNG, atomically: an interrupted write never
    leaves a half-written image under ``path``."""
    pixels = img if np.asarray(img).dtype == np.uint8 else to_u8(img)
    storage.write_file(path, lambda tmp: Image.fromarray(np.asarray(pixels)).save(tmp,
                                                                                  format="PNG"))


def _fit(img: np.ndarray, height: int, width: int) -> Image.Image:
    """One crop at the cell's size: nearest when enlarging (pixels stay visible), box filter when
    shrinking."""
    pil = Image.fromarray(to_u8(img))
    if pil.size == (width, height):
        return pil
    enlarging = width >= pil.size[0]
    return pil.resize((width, height), Image.NEAREST if enlarging else Image.BOX)


def grid_columns(panels: dict) -> list[tuple[str, np.ndarray]]:
    """(heading, NHWC images) per column: input, for SR (an input smaller than the other panels)
    a MATLAB-bicubic column beside the nearest-neighbour input, then output, target and any
    other panels in their order."""
    panels = {k: np.asarray(v, np.float32) for k, v in panels.items()}
    order = [k for k in ("input", "output", "target") if k in panels]
    order += [k for k in panels if k not in order]
    ref = panels.get("target", max(panels.values(), key=lambda a: a.shape[1]))
    columns = []
    for name in order:
        images = panels[name]
        if name == "input" and images.shape[1] < ref.shape[1]:
            from msjax import resize

            scale = round(ref.shape[1] / images.shape[1])
            columns.append((f"input (nearest x{scale})", images))
            bicubic = resize.imresize(images.astype(np.float64), float(scale))
            columns.append((f"bicubic x{scale}",
                            np.clip(bicubic[:, :ref.shape[1], :ref.shape[2]], 0, 1)))
        else:
            columns.append((name, images))
    return columns


def image_grid(panels: dict, *, count: int | None = None, size: int | None = None,
               title: str = "", crop_border: int = 0, y_channel: bool = False) -> np.ndarray:
    """A labelled grid as HxWx3 uint8: a title band, a heading per column (``grid_columns``),
    one row per sample (the first ``count``), each cell ``size`` pixels on its longer side (None:
    the target's own size), and on every image the size of the target its PSNR against it (the
    run's metric conventions)."""
    columns = grid_columns(panels)
    n = min(len(c[1]) for c in columns)
    n = n if count is None else min(n, count)
    ref = dict(columns).get("target", max((c[1] for c in columns), key=lambda a: a.shape[1]))
    h, w = ref.shape[1:3]
    if size:
        h, w = max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))
    gap = 2
    heading_px = max(11, min(18, w // 9))
    while heading_px > 8 and max(_text_width(c[0], heading_px) for c in columns) > w - 4:
        heading_px -= 1  # every heading fits its column
    font, small = _font(heading_px), _font(max(9, min(heading_px, w // 8)))
    band = heading_px + 8
    top = (band if title else 0) + band
    width = len(columns) * w + (len(columns) + 1) * gap
    height = top + n * h + (n + 1) * gap
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap + 2, 4), title, fill=(255, 255, 255), font=font)
    target = dict(columns).get("target")
    from msjax import metrics

    for j, (heading, images) in enumerate(columns):
        x0 = gap + j * (w + gap)
        draw.text((x0 + 2, top - band + 4), heading, fill=(235, 235, 235), font=font)
        for i in range(n):
            y0 = top + gap + i * (h + gap)
            canvas.paste(_fit(images[i], h, w), (x0, y0))
            if target is None or heading == "target" or images[i].shape != target[i].shape:
                continue
            value = metrics.psnr(np.clip(images[i], 0, 1), np.clip(target[i], 0, 1),
                                 data_range=1.0, crop_border=crop_border, y_channel=y_channel)
            text = f"{value:.2f} dB" if math.isfinite(value) else "inf dB"
            box = draw.textbbox((0, 0), text, font=small)
            tw, th = box[2] - box[0], box[3] - box[1]
            draw.rectangle((x0, y0 + h - th - 6, x0 + tw + 6, y0 + h), fill=(0, 0, 0))
            draw.text((x0 + 3 - box[0], y0 + h - th - 3 - box[1]), text, fill=(255, 255, 120),
                      font=small)
    return np.asarray(canvas)


_OPENINGS = itertools.count()


class Events:
    """TensorBoard events written in the caller's thread (tensorboardX's own writer thread dies
    on a failed write, prints its traceback and leaves later writes waiting on a full queue), so
    a failed write is one StorageError where it happens. One file per opening; a resumed run's
    file starts with a ``SessionLog.START`` at ``purge_step``, which makes TensorBoard hide the
    earlier files' events from that step on, so no step shows twice."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        from tensorboardX.event_file_writer import EventsWriter

        self.folder = Path(folder)
        with storage.writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            # tensorboardX names a file by the second and host only: a second opening within
            # the same second would truncate the first's file.
            self._writer = EventsWriter(str(self.folder / "events"),
                                        f".{os.getpid()}.{next(_OPENINGS)}")
        self.path = self.folder / Path(self._writer._file_name).name
        if purge_step is not None:
            from tensorboardX.proto.event_pb2 import SessionLog

            self._write(self._event(step=purge_step, session_log=SessionLog(
                status=SessionLog.START)))

    @staticmethod
    def _event(**fields):
        from tensorboardX.proto.event_pb2 import Event

        return Event(wall_time=time.time(), **fields)

    def _write(self, *events) -> None:
        with storage.writing(self.path):
            for event in events:
                self._writer.write_event(event)
            self._writer.flush()

    def summaries(self, step: int, *summaries) -> None:
        self._write(*(self._event(step=int(step), summary=s) for s in summaries))

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed write was raised where it happened
            self._writer.close()


class RunLog:
    """The run's CSVs, TensorBoard events and image grids (``workdir/images/<stream>_<step>.png``),
    and the same scalars, grids and config in Weights & Biases when ``wandb`` is given
    (``{'record': ..., 'project': ..., 'mode': ...}``: ``wandb_writer.WandbWriter``'s
    arguments, ``record`` the run's flat config record).

    ``image_count`` and ``image_size`` are ``config.log``'s; ``crop_border`` and ``y_channel``
    the run's metric conventions (``config.eval``), used for the PSNR written on each image.
    """

    def __init__(self, workdir: Path, resume_step: int | None, *, image_count: int = 8,
                 image_size: int = 128, crop_border: int = 0, y_channel: bool = False,
                 wandb: dict | None = None, _wandb_writer=None):
        self._args = dict(image_count=image_count, image_size=image_size,
                          crop_border=crop_border, y_channel=y_channel)
        self.enabled = jax.process_index() == 0
        self.workdir = Path(workdir)
        self.image_count, self.image_size = image_count, image_size
        self.metric_kw = dict(crop_border=crop_border, y_channel=y_channel)
        self.wandb = None
        if not self.enabled:
            return
        self.train = CsvLog(self.workdir / "train.csv", TRAIN_FIELDS, resume_step)
        self.valid = CsvLog(self.workdir / "valid.csv", VALID_FIELDS, resume_step)
        # The CSVs keep the rows up to the restored step; TensorBoard likewise keeps its events.
        self._first_step = 0 if resume_step is None else resume_step + 1
        self.tb = Events(self.workdir / "tensorboard",
                         None if resume_step is None else self._first_step)
        with storage.writing(self.workdir / "images"):
            (self.workdir / "images").mkdir(exist_ok=True)
        self.wandb = _wandb_writer
        if _wandb_writer is None and wandb is not None:
            from msjax.wandb_writer import WandbWriter
            self.wandb = WandbWriter(self.workdir, **wandb)

    def scalars(self, stream: str, row: dict):
        if not self.enabled:
            return
        from tensorboardX.summary import scalar

        (self.train if stream == "train" else self.valid).write(row)
        self.tb.summaries(row["step"], *(
            scalar(f"{stream}/{k}", v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)))
        if self.wandb is not None:
            self.wandb.scalars(stream, row)

    def images(self, step: int, panels: dict[str, np.ndarray], stream: str = "valid",
               count: int | None = None) -> Path | None:
        """One labelled grid (``image_grid``) of ``panels`` ({'input', 'output', 'target'}:
        NHWC in [0, 1]) as a PNG and as one TensorBoard image, ``<stream>/grid``; ``stream``
        'valid' is the validation set, 'train' a training batch. Returns the PNG's path."""
        if not self.enabled:
            return None
        title = f"{'validation' if stream == 'valid' else stream} crops, step {step}"
        grid = image_grid(panels, count=self.image_count if count is None else count,
                          size=self.image_size, title=title, **self.metric_kw)
        path = self.workdir / "images" / f"{stream}_{step:08d}.png"
        from tensorboardX.summary import image

        save_png(path, grid)
        self.tb.summaries(step, image(f"{stream}/grid", grid, dataformats="HWC"))
        if self.wandb is not None:
            self.wandb.image(stream, step, grid)
        return path

    def reopened(self, resume_step: int) -> "RunLog":
        """The same logs opened again at ``resume_step`` (rows and events past it dropped; the
        W&B run stays open, since W&B cannot drop logged steps). Closes this one's files."""
        self.close(keep_wandb=True)
        return RunLog(self.workdir, resume_step, **self._args,
                      _wandb_writer=self.wandb)

    def write_config(self, record: dict, step: int = 0):
        """The run's flat config record as TensorBoard text (a table of every field) and as
        hparams, whose metrics are the validation scalars already logged (valid/psnr,
        valid/ssim)."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams, text

        flat = dict(record)
        rows = "\n".join(f"| {k} | {v!r} |" for k, v in sorted(flat.items()))
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                  for k, v in flat.items()}
        # After the restored step: the earlier opening's record there stays as it was.
        self.tb.summaries(max(step, self._first_step),
                          text("config", f"| field | value |\n|---|---|\n{rows}"),
                          *hparams(values, {"valid/psnr": math.nan, "valid/ssim": math.nan}))

    def close(self, *, keep_wandb: bool = False):
        if self.enabled:
            self.tb.close()
            if self.wandb is not None and not keep_wandb:
                self.wandb.close()
                self.wandb = None


# ---- the end of a run --------------------------------------------------------------------------

def final_summary(workdir, result: dict) -> str:
    """What a finished run prints: where it is, its best checkpoint and final scores against the
    input's, and the commands that come next. Values missing from ``result`` (a finished run run
    again) are read from the run's valid.csv."""
    workdir = Path(workdir)
    rows = read_csv(workdir / "valid.csv") if (workdir / "valid.csv").exists() else []
    last = rows[-1] if rows else {}
    best = max((r for r in rows if math.isfinite(r.get("psnr", math.nan))),
               key=lambda r: r["psnr"], default={})

    def value(key, fallback):
        v = result.get(key)
        return v if v is not None and (not isinstance(v, float) or math.isfinite(v)) else fallback

    step = value("step", last.get("step"))
    psnr, input_psnr = value("psnr", last.get("psnr")), value("input_psnr", last.get("input_psnr"))
    best_psnr, best_step = value("best_psnr", best.get("psnr")), value("best_step",
                                                                       best.get("step"))
    gain = (f", {psnr - input_psnr:+.2f} dB" if psnr is not None and input_psnr is not None
            and math.isfinite(psnr) and math.isfinite(input_psnr) else "")
    w = shlex.quote(str(workdir))
    lines = [f"finished: step {_int(step)} in {workdir}",
             f"  best checkpoint: step {_int(best_step)}, valid PSNR {_db(best_psnr)}",
             f"  final:           valid PSNR {_db(psnr)} (input {_db(input_psnr)}{gain})"]
    lines += [f"  warning: {w}" for w in result.get("warnings", ())]
    lines += ["next:"]
    commands = ((f"python eval.py --workdir {w}", "scores and restored images"),
                (f"python -m msjax.report {w}", "report.md and report.png in the run"))
    width = max(len(c) for c, _ in commands)
    lines += [f"  {c:<{width}}  # {why}" for c, why in commands]
    return "\n".join(lines)


def _int(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(int(v))
