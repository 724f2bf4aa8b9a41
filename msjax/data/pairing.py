"""LR and HR images paired by file name, as super-resolution datasets name them.

A file's stem is split into a base and a resolution token at its end: ``Canon_001_HR`` (RealSR)
is the HR image of ``Canon_001``, ``Canon_001_LR2`` its x2 LR image, ``0001x2`` (DIV2K) and
``baby_x2`` LR images of ``0001`` and ``baby``, ``_GT`` a ground truth. Two files pair when their
whole bases agree (or one's whole stem is the other's base), never on a prefix, so ``img1`` does
not take ``img10_LR2``. A token's scale must be the run's where it names one, so RealSR's LR2, LR3
and LR4 files can share a folder; a same-size task (``task.scale=1``, RealSR's LR at HR size)
takes any, and two candidates at different scales are then named, not guessed. HR and LR may
share one folder: the LR files are then those whose stem carries an LR token.

Training (``data.source=paired_folders``) and ``eval.py --input_dir LR --target_dir HR`` pair
alike; a file without a partner is an error naming the stems looked for.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from msjax.data.sources import DataError

_HR_TOKEN = re.compile(r"(?i)[_\-.]?(?:hr|gt)$")
_LR_TOKEN = re.compile(r"(?i)[_\-.]?(?:lr(?:bi|bd|de)?[_\-]?x?(?P<lr>\d+)?|x(?P<x>\d+))$")


@functools.lru_cache(maxsize=None)  # every HR file is matched against every LR file's stem
def split_stem(stem: str) -> tuple[str, str, int | None]:
    """(base, role, scale): role 'hr', 'lr' or '' (no token); scale the LR token's, if any."""
    m = _LR_TOKEN.search(stem)
    if m and m.start() > 0:
        number = m.group("lr") or m.group("x")
        return stem[:m.start()], "lr", int(number) if number else None
    m = _HR_TOKEN.search(stem)
    if m and m.start() > 0:
        return stem[:m.start()], "hr", None
    return stem, "", None


def _names(stem: str) -> set[str]:
    """What a partner may be called up to its token: the whole stem, and its base."""
    return {stem, split_stem(stem)[0]}


def looked_for(stem: str, scale: int) -> str:
    base = split_stem(stem)[0]
    return ", ".join(f"'{s}'" for s in dict.fromkeys(
        [base, f"{base}_LR{scale}", f"{base}x{scale}", f"{base}_x{scale}"]))


def _fits(token_scale: int | None, scale: int) -> bool:
    return token_scale is None or scale == 1 or token_scale == scale


def partner(path: Path, candidates: list[Path], scale: int) -> tuple[Path | None, list[Path]]:
    """The one file of ``candidates`` that pairs with ``path`` (None if none), and every file
    that could (more than one: the names do not decide)."""
    names = _names(path.stem)
    found = [c for c in candidates if c != path and _names(c.stem) & names]
    # A token naming another scale rules a file out (RealSR keeps LR2, LR3, LR4 together).
    found = [c for c in found if _fits(split_stem(c.stem)[2], scale)] or found
    if len(found) > 1:  # a token naming this very scale decides; then an exact stem
        found = [c for c in found if split_stem(c.stem)[2] == scale] or \
            [c for c in found if c.stem == path.stem] or found
    return (found[0] if len(found) == 1 else None), found


def is_lr(path: Path, scale: int) -> bool:
    _, role, token_scale = split_stem(path.stem)
    return role == "lr" and _fits(token_scale, scale)


def pair_files(hr_files: list[Path], lr_files: list[Path], *, scale: int,
               lr_folder: str) -> list[Path]:
    """Each HR file's LR partner, in ``hr_files``' order; an HR file without exactly one
    partner is a DataError naming what was looked for."""
    out = []
    for f in hr_files:
        match, found = partner(f, lr_files, scale)
        if match is None and found:
            raise DataError(f"{f.name} has {len(found)} possible LR partners in {lr_folder} "
                            f"({', '.join(p.name for p in found)}); keep one scale's LR images "
                            "in the folder, or rename them so one remains")
        if match is None:
            raise DataError(f"no LR partner for {f} in {lr_folder}: looked for the stems "
                            f"{looked_for(f.stem, scale)} (any image suffix)")
        out.append(match)
    return out


def split_shared_folder(files: list[Path], scale: int) -> tuple[list[Path], list[Path]]:
    """(HR files, LR files) of one folder holding both: LR files carry an LR token of this
    scale; files with an LR token of another scale belong to neither."""
    lr = [f for f in files if is_lr(f, scale)]
    hr = [f for f in files if split_stem(f.stem)[1] != "lr"]
    return hr, lr
