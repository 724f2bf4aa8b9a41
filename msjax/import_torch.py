"""Trained PyTorch weights as an msjax run directory.

    python -m msjax.import_torch best_model.pt --config configs/denoise_cifar10.py
    python -m msjax.import_torch EDSR_x2.pt --config configs/edsr_div2k.py --workdir runs/edsr_pt

reads a state dict (``.pt`` / ``.pth`` zip or legacy, ``.safetensors``; an official MGE
checkpoint dict, a BasicSR ``params`` / ``params_ema`` wrapper or a DataParallel ``module.``
prefix are unwrapped), maps every tensor onto the config's model (``msjax.models.torch_keys``:
the key names, layouts and what each scheme is), scores the config's validation set where its
data is at hand, and writes a run directory as training writes one: config.json and a step-0
checkpoint (the best, with the validation PSNR as its metric). ``eval.py``, ``msjax.load_run``,
``train.init_from``, ECO's ``eco.teacher_workdir`` and the exporter read it as any run.
``train.py --workdir`` on it fine-tunes the imported weights with a fresh optimizer from step 0.

Files are read without torch and nothing in them runs (``msjax.data.torch_files``). A key the
model lacks, a tensor of another shape or a tensor left over stops the import with one line that
names them all, before anything is written. An official checkpoint is imported with its config's
``:official`` variant (the official code's normalisation and data) unless another is named.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from msjax.data import torch_files
from msjax.errors import ConfigError, DataError, RunDirError
from msjax.models import torch_keys

WRAPPERS = ("params_ema", "params", "state_dict", "model")  # the first present wins
# Relative agreement a file's fixed mean-shift layers must have with msjax's constants.
MEAN_SHIFT_RTOL = 1e-4


def _shown(keys, limit: int = 40) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_state_dict(path) -> tuple[dict[str, np.ndarray], dict]:
    """(flat {key: float32 array}, meta) of the weights in ``path``; meta holds the official
    checkpoint's ``epoch`` / ``iter`` and which wrapper was unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        if not path.is_file():
            raise DataError(f"{path} does not exist")
        try:
            obj = load_file(path)
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise DataError(f"{path} cannot be read as safetensors ({str(e).splitlines()[0]}); "
                            "check the file or save it again") from None
    else:
        obj = torch_files.load(path)
    meta = {}
    if isinstance(obj, dict) and "model_state_dict" in obj:
        meta = {k: obj[k] for k in ("epoch", "iter") if isinstance(obj.get(k), (int, float))}
        meta["wrapper"], obj = "model_state_dict", obj["model_state_dict"]
    elif isinstance(obj, dict):
        wrapper = next((w for w in WRAPPERS if isinstance(obj.get(w), dict)), None)
        if wrapper is not None:
            meta["wrapper"], obj = wrapper, obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict of named "
                        "tensors; save the model's state_dict()")
    plain = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if plain:
        raise DataError(f"{path} is not a flat state dict: {_shown(map(str, plain), 5)} "
                        f"{'is' if len(plain) == 1 else 'are'} not tensors; save the model's "
                        "state_dict()")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj, meta["prefix"] = {k[len("module."):]: v for k, v in obj.items()}, "module."
    return {k: np.asarray(v, np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16"
            else v for k, v in obj.items()}, meta


def map_tensors(tensors: dict, entries, template: dict, source: str,
                revealed: dict | None = None) -> dict:
    """{msjax path: array} for ``template`` (flat {path: array}) from ``tensors`` by ``entries``;
    one DataError naming every missing key, wrong shape and tensor left over (and the
    ``revealed`` model_kwargs the file shows)."""
    missing, shapes, values, used, out = [], [], [], set(), {}
    for e in entries:
        a = tensors.get(e.key)
        if not e.path:  # a constant of the model: checked where the file has it
            if a is None:
                continue
            used.add(e.key)
            if a.shape != e.value.shape:
                shapes.append(f"{e.key} {a.shape} (the model's constant is {e.value.shape})")
            elif not np.allclose(a, e.value, rtol=MEAN_SHIFT_RTOL, atol=MEAN_SHIFT_RTOL):
                values.append(f"{e.key} = {np.round(a.ravel()[:3], 4).tolist()} where the model "
                              f"has {np.round(e.value.ravel()[:3], 4).tolist()}")
            continue
        want = torch_keys.torch_shape(e.kind, tuple(template[e.path].shape), e.dims)
        if a is None:
            missing.append(f"{e.key} {want}")
            continue
        used.add(e.key)
        if tuple(a.shape) != want:
            shapes.append(f"{e.key} {tuple(a.shape)} (the model needs {want})")
            continue
        out[e.path] = np.ascontiguousarray(torch_keys.to_msjax(e.kind, a), np.float32)
    left = [f"{k} {tuple(v.shape)}" for k, v in tensors.items() if k not in used]
    unmapped = sorted(set(template) - {e.path for e in entries})
    if unmapped:  # a mapping that misses a parameter of the model is msjax's bug
        raise AssertionError(f"no PyTorch key maps to {_shown(unmapped)}")
    problems = [f"{label}: {_shown(items)}" for label, items in (
        ("missing from the file", missing), ("shapes that disagree", shapes),
        ("mean shift that disagrees (model_kwargs.rgb_range)", values),
        ("left over in the file", left)) if items]
    if problems:
        shown = ", ".join(f"{k}={v}" for k, v in (revealed or {}).items())
        shown = f" (the file shows {shown})" if shown else ""
        raise DataError(f"{source} does not fit the configured model: {'; '.join(problems)}; "
                        "the config's model_kwargs (blocks, features, scale) must be those the "
                        f"weights were trained with{shown}; nothing was written")
    return out


def score(state, exp, write=print) -> float | None:
    """Mean validation PSNR of ``state``, or None (said with ``write``) when the validation data
    is not at hand."""
    from msjax import evaluate

    try:
        rows = evaluate.evaluate_validation(state, exp)
    except DataError as e:
        write(f"not scored: {e}")
        return None
    psnr = float(np.mean([r["psnr"] for r in rows]))
    bicubic = float(np.mean([r["input_psnr"] for r in rows]))
    write(f"validation: {psnr:.3f} dB PSNR on {len(rows)} crops (the input: {bicubic:.3f} dB)")
    return psnr


def import_file(path, config, workdir, *, scheme: str | None = None, write=print) -> dict:
    """Imports the weights in ``path`` for ``config`` into a new run directory ``workdir``;
    returns {'workdir', 'scheme', 'psnr', 'tensors', **the file's meta}."""
    import flax
    import jax

    from msjax import build, checkpoints, rundir
    from msjax.loop import Ledger

    tensors, meta = read_state_dict(path)
    detected = torch_keys.detect_scheme(tensors)
    scheme = scheme or detected
    if scheme is None:
        raise DataError(f"{path}: the scheme of its key names ({_shown(tensors, 4)}) is not one "
                        f"msjax knows; name it with --scheme ({', '.join(torch_keys.SCHEMES)})")
    exp = build.experiment(config, num_devices=1)
    try:
        entries = torch_keys.entries(exp.model_name, exp.model, scheme)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}; import it with a config of one of those models "
                          "(--config.model=...)") from None
    workdir = rundir.open_for(workdir)
    if (workdir / rundir.CONFIG_FILE).exists() or rundir.checkpoint_steps(workdir):
        raise RunDirError(f"--workdir {workdir} holds a run already; import into a new one")
    side = exp.input.patch // exp.task.scale
    template = build.initial_state(exp, (1, side, side, 3))
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(template.params), sep="/")
    shown = torch_keys.revealed({k: v.shape for k, v in tensors.items()}, exp.model_name, scheme)
    mapped = map_tensors(tensors, entries, flat, str(path), shown)
    params = flax.traverse_util.unflatten_dict(  # placed as the fresh parameters are
        {k: jax.device_put(np.asarray(v, flat[k].dtype), flat[k].sharding)
         for k, v in mapped.items()}, sep="/")
    state = template.replace(params=params)
    if template.ema_params is not None:  # evaluation reads the average: it starts as the weights
        state = state.replace(ema_params=params)
    psnr = score(state, exp, write)
    info = {"imported_from": str(Path(path).resolve()), "imported_scheme": scheme,
            **{f"torch_{k}": v for k, v in meta.items()}}
    ckpt_meta = {"step": 0, "stage": 0, "kernels": {}, "steps_per_call": {}, "input": "",
                 "total_steps": exp.total_steps, **Ledger().row(), **info}
    if psnr is not None and math.isfinite(psnr):
        ckpt_meta["best_psnr"] = psnr
    with rundir.Claim(workdir):
        rundir.write_config(workdir, exp.record)
        ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep_best=exp.log.keep_best)
        try:
            ckpt.save(0, state, ckpt_meta, {"psnr": psnr} if ckpt_meta.get("best_psnr") else None)
            ckpt.raise_if_save_failed(wait=True)
        finally:
            ckpt.close()
    write(f"imported {len(mapped)} tensors ({scheme} scheme"
          f"{', ' + meta['wrapper'] if 'wrapper' in meta else ''}"
          f"{', epoch ' + str(meta['epoch']) if 'epoch' in meta else ''}"
          f"{', iter ' + str(meta['iter']) if 'iter' in meta else ''}) into {workdir}")
    return {"workdir": str(workdir), "scheme": scheme, "psnr": psnr, "tensors": len(mapped),
            **meta}


if __name__ == "__main__":
    from msjax import cli

    cli.import_torch()
