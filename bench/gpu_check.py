"""The GPU check: the quickstart and the paper's ResNet steps on one accelerator, row by row,
each row written as soon as it is measured, so a run stopped by a time limit still leaves figures.

    python bench/gpu_check.py --out DIR          # DIR: $OUT where set, else ./gpu_check
    python bench/gpu_check.py --tiny --out DIR   # all shrunk: the same code in seconds on a CPU

Rows, most important first; a row that the longest step row so far would carry past
``--budget_s`` (default 270) is written as skipped for time, and so are the rest (the first row
always runs):

1. ``quickstart``: ``train.train_and_evaluate`` of configs/quickstart.py (built-in photos, 600
   steps): wall time, the compile share (the run's own "compiling: X s of the run's Y s" line in
   train.log), training seconds without compiling, the final and the input validation PSNR, and
   each stage's steps per call (checkpoint meta) with the step time it was chosen from.
2. ``resnet_single`` and ``resnet_fms0..3``: configs/deblur_stl10.py's ResNet step (96 px,
   batch 16; full multiscale's four stages), float32, on a device-resident synthetic uint8
   dataset: median ms per step at one step per call and at the k ``choose_steps_per_call``
   picks from that time (whether ``steps_per_call=auto`` would keep k: its steps at least
   ``STEPS_PER_CALL_MARGIN`` faster), GFLOP/s from the one-step program's XLA FLOPs, and the same
   step in eager PyTorch (bench/torch_models.py's network, equal parameter tensors, the same
   blur, noise, restriction and Adam, batches drawn from a uint8 tensor on the GPU without
   msjax's flips and rotations; cuDNN autotuning on) with the ratio msjax / PyTorch at k=1 and
   at the k training would run.
3. ``unet_single``, ``resnet_multiscale`` (the paper's MGE terms, batches 4, 16, 64, 256) and
   ``resnet_single_bf16`` (``dtype=bfloat16``; PyTorch under bfloat16 autocast).

The programs are the ones training runs: ``build.experiment`` of the config with overrides,
``build.initial_state``, ``build.compile_train_step`` (``dataset=``, ``steps_per_call=``) and
``measure.step_seconds``. One device (``runtime.num_devices=1``). Without a GPU the check runs on
the CPU and its header line says so (Eigen convolutions: no oneDNN build or kernel measurement;
with ``--tiny`` also XLA:CPU's cheap compiles, ``runtime.fast_compile``, since compiling is
nearly all of a tiny run).

Files in ``--out``: ``gpu_check.jsonl`` (a header object, then one object per row, appended as
each row ends), ``gpu_check.md`` (the same as tables, rewritten after each row) and
``quickstart_train.log`` (the quickstart's train.log). Scratch (the compilation cache in
``SCRATCH/xla``, the quickstart's run directory, measured step times) goes to ``--scratch``:
``OUT/scratch``, except inside the device machine's ``$OUT``, which brings back only a few files
and folders: then a folder under /tmp. The compilation cache starts cold there, as on a fresh machine.

On the device machine (an H100; jax 0.11 with CUDA, flax, optax, orbax and PyTorch installed;
no network). msjax needs no install: this script puts its checkout first on ``sys.path``. The
image lacks five pure-Python wheels; fetch them once into ``.whl/`` at the checkout's root (kept
out of git by .git/info/exclude), here, where PyPI answers::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl \\
        ml_collections==1.1.0 clu==0.0.12 dm-pix==0.4.5 tensorboardX==2.6.5 \\
        pypng==0.20220715.0

(filelock, absl-py, etils, chex, PyYAML, protobuf, wrapt are in the image already.) Then one
device call, ``carry=[".whl"]``, ``timeout_s=420`` (the check stops adding rows after 270 s; the
rest is start-up and a margin), command::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \\
    nvidia-smi -L; PYTHONUNBUFFERED=1 python3 bench/gpu_check.py 2>&1 | tee $OUT/gpu_check.out

The results come back from ``$OUT`` (gpu_check.jsonl, gpu_check.md, quickstart_train.log,
gpu_check.out) under the reply's ``files_at``; copy the table into docs/benchmarks.md,
labelled with the device line of its header.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package; msjax comes from this checkout

from bench import common  # noqa: E402

# What --tiny changes: every shape small enough for a 2-core CPU, the code paths unchanged.
TINY_STEP = {"data.patch": 16, "mge.levels": 2, "batch_size": 4, "mge.finest_batch": 2,
             "mge.batch_growth": 2, "fms.stage_steps": (4, 2, 1), "log.every": 2}
TINY_MODELS = {"resnet": {"hidden": 8, "nlayers": 1},
               "unet": {"model_channels": 16, "channel_mult": (1,)}}
TINY_QUICKSTART = {"train.steps": 6, "data.patch": 16, "data.valid_images": 4, "log.every": 2,
                   "mge.levels": 1, "fms.stage_weights": (2, 1),
                   "model_kwargs": {"features": 8, "depth": 2}}
SYNTHETIC_IMAGES = 1024   # images of the device-resident synthetic dataset (32 with --tiny)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check",
                   help="results folder (default: $OUT where set, else ./gpu_check)")
    p.add_argument("--scratch", default="", help="compilation cache and run directories "
                   "(default: OUT/scratch, or a /tmp folder where OUT is inside $OUT)")
    p.add_argument("--budget_s", type=float, default=270.0,
                   help="seconds: no row starts that the longest step row so far would carry "
                   "past this (the first row always runs)")
    p.add_argument("--tiny", action="store_true", help="16 px patches, tiny models, 6 steps")
    p.add_argument("--rows", default="", help="comma-separated row ids to run (default: all)")
    p.add_argument("--torch", default="auto", choices=("auto", "cuda", "cpu", "off"),
                   help="where the PyTorch steps run: auto is CUDA where PyTorch sees it")
    p.add_argument("--cpu_convolutions", default="eigen",
                   help="runtime.cpu_convolutions on a CPU (ignored on a GPU)")
    p.add_argument("--timing_s", type=float, default=0.0,
                   help="seconds of timed calls per program, at most (default 1, --tiny 0.2)")
    return p.parse_args(argv)


# --- the rows ----------------------------------------------------------------------------------

def row_specs(tiny: bool) -> list[dict]:
    """Every row, in order of importance."""
    stages = TINY_STEP["mge.levels"] + 1 if tiny else 4
    rows = [{"id": "quickstart"},
            {"id": "resnet_single", "model": "resnet", "mode": "single"}]
    rows += [{"id": f"resnet_fms{j}", "model": "resnet", "mode": "fullmultiscale", "stage": j}
             for j in range(stages)]
    rows += [{"id": "unet_single", "model": "unet", "mode": "single"},
             {"id": "resnet_multiscale", "model": "resnet", "mode": "multiscale"},
             {"id": "resnet_single_bf16", "model": "resnet", "mode": "single",
              "dtype": "bfloat16"}]
    return [{"stage": 0, "dtype": "float32", **r} for r in rows]


def set_fields(config, fields: dict):
    """``config`` with ``{'section.field': value}`` set, as a method's phase is made."""
    from msjax import build

    return build.with_overrides(config, fields)


def runtime_fields(args, scratch: Path) -> dict:
    return {"runtime.compilation_cache": str(scratch / "xla"), "runtime.num_devices": 1,
            "runtime.cpu_convolutions": args.cpu_convolutions,
            "runtime.fast_compile": args.tiny}


def step_config(args, scratch: Path, spec: dict):
    """deblur_stl10 in the row's mode, model and dtype. The source is the built-in one: the step
    never reads it (its batches come from the synthetic device dataset), and TFDS stays unused."""
    from msjax.configs import deblur_stl10

    config = deblur_stl10.get_config()
    fields = {"mode": spec["mode"], "model": spec["model"], "dtype": spec["dtype"],
              "data.source": "builtin", **runtime_fields(args, scratch)}
    if args.tiny:
        fields |= TINY_STEP | {"model_kwargs": TINY_MODELS[spec["model"]]}
    return set_fields(config, fields)


def quickstart_config(args, scratch: Path):
    from msjax.configs import quickstart

    fields = runtime_fields(args, scratch) | (TINY_QUICKSTART if args.tiny else {})
    return set_fields(quickstart.get_config(), fields)


def quickstart_row(args, scratch: Path, out: Path) -> dict:
    from msjax import rundir, train

    workdir = scratch / "quickstart"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, never a resume
    config = quickstart_config(args, scratch)
    t0 = time.perf_counter()
    result = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
    log = (workdir / "train.log").read_text()
    shutil.copyfile(workdir / "train.log", out / "quickstart_train.log")
    compiling = re.findall(r"compiling: ([\d.]+) s of the run's ([\d.]+) s", log)
    compile_s, run_s = map(float, compiling[-1]) if compiling else (math.nan, wall)
    meta = rundir.checkpoint_meta(workdir, max(rundir.checkpoint_steps(workdir)))
    per_call = {int(s): int(k) for s, k in meta.get("steps_per_call", {}).items()}
    chosen_from = [float(ms) for ms in re.findall(r"steps? per call \(a step takes ([\d.]+) ms\)",
                                                  log)]
    steps = int(result["step"])
    return {"steps": steps, "wall_s": wall, "run_s": run_s, "compile_s": compile_s,
            "compile_share": compile_s / run_s if run_s > 0 else math.nan,
            "train_s": float(meta.get("seconds", math.nan)),
            "psnr": float(result["psnr"]), "input_psnr": float(result.get("input_psnr", math.nan)),
            "steps_per_call": [per_call[s] for s in sorted(per_call)],
            "step_ms_measured": chosen_from}


class SyntheticData:
    """A device-resident uint8 dataset of random images at the patch size (the step cuts its
    batches from it, as from STL-10 on the device path), made once per patch size."""

    def __init__(self, count: int):
        self.count, self.loaded = count, {}

    def images(self, side: int):
        import numpy as np

        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (self.count, side, side, 3), dtype=np.uint8)

    def on_device(self, exp):
        from msjax import data

        side = exp.input.patch
        if side not in self.loaded:
            pixels = self.images(side)
            source = data.sources.ArraySource(list(pixels), [str(i) for i in range(len(pixels))])
            self.loaded[side] = (data.device.load(source, exp.mesh, patch=side), pixels)
        return self.loaded[side]


def step_row(args, scratch: Path, spec: dict, synthetic: SyntheticData, torch_device) -> dict:
    import jax

    from msjax import build, parallel
    from msjax.backend import measure

    config = step_config(args, scratch, spec)
    exp = build.experiment(config)
    stage = spec["stage"]
    plan = exp.stages[stage].plan
    dataset, pixels = synthetic.on_device(exp)
    side = exp.input.patch
    state = build.initial_state(exp, (1, side, side, 3))
    key = parallel.put_replicated(jax.random.PRNGKey(exp.seed), exp.mesh)
    calls = {"calls": 200, "budget_s": args.timing_s}

    one = build.compile_train_step(exp, stage, state, dataset, key, dataset=dataset)
    t1 = measure.step_seconds(one, (state, dataset, key), 1, **calls)
    k = measure.choose_steps_per_call(t1, exp.log.every)
    tk, compile_s = t1, one.seconds
    if k > 1:
        several = build.compile_train_step(exp, stage, state, dataset, key, dataset=dataset,
                                           steps_per_call=k)
        compile_s += several.seconds
        tk = measure.step_seconds(several, (state, dataset, key), k, **calls)
    kept = k > 1 and tk < t1 * (1 - measure.STEPS_PER_CALL_MARGIN)
    trained = tk if kept else t1  # what a run with steps_per_call=auto would run at
    row = {"model": spec["model"], "mode": spec["mode"], "stage": stage, "dtype": spec["dtype"],
           "grid": side // 2 ** plan.finest_level, "batches": list(plan.batch_sizes),
           "flops": one.flops, "compile_s": compile_s, "ms_k1": t1 * 1e3, "k": k,
           "ms_k": tk * 1e3, "k_kept": kept, "gflops_k1": one.flops / t1 / 1e9,
           "gflops_trained": one.flops / trained / 1e9}
    row.update(torch_columns(config, plan, state, pixels, spec, torch_device, args))
    if row.get("torch_ms"):
        row["ratio_k1"] = row["ms_k1"] / row["torch_ms"]
        row["ratio_trained"] = trained * 1e3 / row["torch_ms"]
    return row


# --- PyTorch -----------------------------------------------------------------------------------

def torch_device_for(setting: str) -> tuple[str | None, str]:
    """(torch device, why) for ``--torch``: None with the reason where PyTorch does not run."""
    if setting == "off":
        return None, "off (--torch off)"
    try:
        import torch
    except ImportError:
        return None, "PyTorch not installed"
    if setting == "cpu":
        return "cpu", f"torch {torch.__version__} on cpu"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    torch.backends.cudnn.benchmark = True  # cuDNN autotunes, as XLA autotunes its convolutions
    return "cuda", (f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}, "
                    f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                    f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")


# Flax model options -> the PyTorch constructor's (bench/torch_models.py).
TORCH_KWARGS = {"resnet": {"hidden": "hidden", "nlayers": "nlayers"},
                "unet": {"model_channels": "ch", "channel_mult": "mult",
                         "num_res_blocks": "num_res_blocks"}}


def torch_model(name: str, model_kwargs: dict, flax_params):
    """The PyTorch network with the same parameter tensors as ``flax_params``, or raises."""
    import jax

    from bench import torch_models

    names = TORCH_KWARGS[name]
    unknown = set(model_kwargs) - set(names)
    if unknown:
        raise ValueError(f"no PyTorch counterpart for {name} options {sorted(unknown)}")
    model = (torch_models.MODELS[name](**{names[k]: v for k, v in model_kwargs.items()})
             if model_kwargs else torch_models.build(name))
    flax_sizes = sorted(int(math.prod(p.shape)) for p in jax.tree.leaves(flax_params))
    if flax_sizes != sorted(p.numel() for p in model.parameters()):
        raise AssertionError(f"PyTorch and Flax {name} parameter tensors differ")
    return model


def torch_step(model, plan, pixels, *, device: str, dtype: str, blur_sigma, t_max: float,
               lr: float):
    """One training step of ``plan`` in PyTorch, as msjax's deblur step: per term a batch
    gathered from the uint8 images on the device, y = (1-t) A x + t z (circular Gaussian blur by
    FFT at the data grid, t ~ t_max U(0,1)), area restriction to the term's levels, the
    telescoping MSE, backward, Adam."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    images = torch.from_numpy(pixels).to(device)
    side = images.shape[1]
    ring = torch.arange(side, dtype=torch.float32)
    ring = torch.where(ring <= side // 2, ring, ring - side)
    psf = torch.exp(-ring[:, None] ** 2 / (2 * blur_sigma[0] ** 2)
                    - ring[None, :] ** 2 / (2 * blur_sigma[1] ** 2))
    transfer = torch.fft.rfft2(psf / psf.sum()).to(device)
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16)
                if dtype == "bfloat16" else torch.autocast(device_type=device, enabled=False))

    def restrict(x, levels):
        return F.avg_pool2d(x, 2 ** levels) if levels else x

    def loss_at(y, x, t):
        with autocast:
            out = model(y, t)
        return F.mse_loss(out.float(), x)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for k, n in enumerate(plan.batch_sizes):
            idx = torch.randint(0, images.shape[0], (n,), device=device)
            x = images[idx].permute(0, 3, 1, 2).float() / 255.0
            blurred = torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=(side, side))
            t = t_max * torch.rand(n, device=device)
            mix = t[:, None, None, None]
            y = (1 - mix) * blurred + mix * torch.randn_like(x)
            level = plan.finest_level + k
            y, x = restrict(y, level), restrict(x, level)
            loss = loss + loss_at(y, x, t)
            if k < plan.levels:
                loss = loss - loss_at(restrict(y, 1), restrict(x, 1), t)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def torch_columns(config, plan, state, pixels, spec, torch_device, args) -> dict:
    device, why = torch_device
    if device is None:
        return {"torch": why}
    try:
        model = torch_model(spec["model"], dict(config.model_kwargs), state.params)
        run = torch_step(model, plan, pixels, device=device, dtype=spec["dtype"],
                         blur_sigma=tuple(config.task.blur_sigma), t_max=config.task.t_max,
                         lr=config.train.lr)
        repeats = 3 if args.tiny else 20
        timing = common.median_seconds(run, warmup=3, repeats=repeats)
    except Exception as e:  # a PyTorch failure leaves the msjax figures standing
        traceback.print_exc()
        return {"torch": f"error: {type(e).__name__}: {e}"[:300]}
    return {"torch": why, "torch_ms": timing["seconds"] * 1e3}


# --- reporting ---------------------------------------------------------------------------------

def header(args) -> dict:
    import jax

    device = jax.devices()[0]
    backend = jax.default_backend()
    gpu = backend == "gpu"
    line = (f"gpu_check: {device.device_kind} ({backend}), jax {jax.__version__}, "
            f"{jax.device_count()} device(s)" if gpu else
            f"gpu_check: no GPU visible, running on {backend} ({common.machine()}), "
            f"jax {jax.__version__}")
    return {"kind": "header", "line": line, "gpu": gpu, "backend": backend,
            "device_kind": device.device_kind, "jax": jax.__version__,
            "devices": jax.device_count(), "tiny": args.tiny, "budget_s": args.budget_s,
            "matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", "")),
            "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")}


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _num(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) \
        else format(value, fmt)


class Report:
    """gpu_check.jsonl appended and gpu_check.md rewritten after every row, and a printed line."""

    def __init__(self, out: Path, head: dict):
        self.out, self.head, self.rows = out, head, []
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = out / "gpu_check.jsonl"
        self.jsonl.write_text(json.dumps(_clean(head)) + "\n")
        print(head["line"], flush=True)
        print(f"  PyTorch: {head['torch']}; results in {out}", flush=True)
        self.write_md()

    def add(self, row: dict) -> None:
        row = {"kind": "row", **row}
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
        self.write_md()
        print(self.line(row), flush=True)

    @staticmethod
    def line(r: dict) -> str:
        head = f"{r['id']}: {r['status']} in {r['seconds']:.1f} s"
        if r["status"] != "ok":
            return head
        if r["id"] == "quickstart":
            return (f"{head}; {r['steps']} steps, compiling {r['compile_s']:.1f} s of "
                    f"{r['run_s']:.1f} s ({r['compile_share']:.0%}); PSNR {r['psnr']:.2f} dB "
                    f"(input {r['input_psnr']:.2f}); steps per call {r['steps_per_call']}")
        torch = (f"; PyTorch {r['torch_ms']:.2f} ms, msjax/PyTorch {r['ratio_k1']:.2f} (k=1), "
                 f"{r['ratio_trained']:.2f} (trained)" if r.get("torch_ms") else
                 f"; PyTorch: {r.get('torch')}")
        return (f"{head}; {r['ms_k1']:.3f} ms/step at k=1, {r['ms_k']:.3f} at k={r['k']}"
                f"{' (kept)' if r['k_kept'] else ''}; {r['gflops_k1']:.0f} GFLOP/s{torch}")

    def write_md(self) -> None:
        h = self.head
        lines = ["# GPU check", "", h["line"], "",
                 f"PyTorch: {h['torch']}; jax default matmul precision: "
                 f"{h['matmul_precision']}; budget {h['budget_s']:g} s"
                 + ("; --tiny" if h["tiny"] else ""), ""]
        quick = [r for r in self.rows if r["id"] == "quickstart" and r["status"] == "ok"]
        for r in quick:
            measured = ", ".join(f"{v:g}" for v in r["step_ms_measured"])
            lines += [("| quickstart | steps | wall s | compiling s (share) | training s | "
                       "PSNR dB (input) | steps per call (step ms measured) |"),
                      "|---|---|---|---|---|---|---|",
                      (f"| {r['status']} | {r['steps']} | {r['wall_s']:.1f} | "
                       f"{r['compile_s']:.1f} ({r['compile_share']:.0%}) | "
                       f"{_num(r['train_s'], '.2f')} | {r['psnr']:.2f} ({r['input_psnr']:.2f}) | "
                       f"{r['steps_per_call']} ({measured}) |"),
                      ""]
        steps = [r for r in self.rows if "ms_k1" in r]
        if steps:
            lines += [("| row | grid | batches | ms/step k=1 | k | ms/step at k | kept | "
                       "GFLOP/s k=1 | GFLOP/s trained | PyTorch ms | msjax/PyTorch k=1 | "
                       "trained | row s |"), "|---" * 13 + "|"]
            for r in steps:
                lines.append(
                    f"| {r['id']} | {r['grid']}x{r['grid']} | "
                    f"{'+'.join(map(str, r['batches']))} | {r['ms_k1']:.3f} | {r['k']} | "
                    f"{r['ms_k']:.3f} | {'yes' if r['k_kept'] else 'no'} | "
                    f"{r['gflops_k1']:.1f} | {r['gflops_trained']:.1f} | "
                    f"{_num(r.get('torch_ms'), '.3f')} | {_num(r.get('ratio_k1'), '.2f')} | "
                    f"{_num(r.get('ratio_trained'), '.2f')} | {r['seconds']:.1f} |")
            lines.append("")
        others = [r for r in self.rows if r["status"] != "ok"]
        lines += [f"- {r['id']}: {r['status']}" for r in others]
        (self.out / "gpu_check.md").write_text("\n".join(lines).rstrip() + "\n")


# --- main --------------------------------------------------------------------------------------

def scratch_folder(args, out: Path) -> Path:
    if args.scratch:
        return Path(args.scratch)
    device_out = os.environ.get("OUT")
    if device_out and Path(device_out).resolve() in (out.resolve(), *out.resolve().parents):
        return Path(tempfile.mkdtemp(prefix="msjax_gpu_check_"))
    return out / "scratch"


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    args.timing_s = args.timing_s or (0.2 if args.tiny else 1.0)
    out = Path(args.out)
    scratch = scratch_folder(args, out)
    scratch.mkdir(parents=True, exist_ok=True)
    # Measured step times and kernel verdicts of this check stay in its scratch folder (unless
    # the caller named a cache), so a fresh machine's choices are what the rows show.
    os.environ.setdefault("MSJAX_CACHE", str(scratch / "cache"))
    # jax takes 75% of GPU memory at start by default; PyTorch runs beside it in this process.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

    specs = row_specs(args.tiny)
    wanted = [r for r in args.rows.split(",") if r]
    unknown = set(wanted) - {s["id"] for s in specs}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; rows: "
                         + ", ".join(s["id"] for s in specs))
    specs = [s for s in specs if not wanted or s["id"] in wanted]
    head = header(args)  # jax's GPU libraries load before PyTorch's
    torch_device = torch_device_for(args.torch)
    report = Report(out, head | {"torch": torch_device[1]})
    synthetic = SyntheticData(32 if args.tiny else SYNTHETIC_IMAGES)
    for i, spec in enumerate(specs):
        t0 = time.perf_counter()
        # A row starts only if it would end inside the budget, were it as long as the longest
        # step row so far: the device session's limit is hard.
        longest = max((r["seconds"] for r in report.rows if "ms_k1" in r), default=0.0)
        if i and t0 - started + (0.0 if spec["id"] == "quickstart" else longest) > args.budget_s:
            report.add({"id": spec["id"], "seconds": 0.0, "status": (
                f"skipped for time: {t0 - started:.0f} s of the {args.budget_s:g} s budget "
                f"spent" + (f", the longest step row took {longest:.0f} s" if longest else ""))})
            continue
        try:
            row = (quickstart_row(args, scratch, out) if spec["id"] == "quickstart" else
                   step_row(args, scratch, spec, synthetic, torch_device))
            status = "ok"
        except Exception as e:  # one failing row leaves the others to run
            traceback.print_exc()
            row, status = {}, f"error: {type(e).__name__}: {e}"[:400]
        report.add({"id": spec["id"], "status": status,
                    "seconds": time.perf_counter() - t0, **row})
    print(f"gpu_check: {len(report.rows)} rows in {time.perf_counter() - started:.1f} s; "
          f"{report.jsonl} and {out / 'gpu_check.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
