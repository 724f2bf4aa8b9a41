"""LR / HR pairing by file name, as RealSR, DIV2K and the benchmark sets name their files: whole
stems once the resolution token is off, never a prefix (img1 must not take img10_LR2), in
separate folders and in one shared folder; training and eval.py pair alike. And a benchmark
folder validated on in place of a dataset's own split."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msjax import evaluate, train
from msjax.data import pairing, scan_pairs
from msjax.errors import DataError
from tests.helpers import tiny_config

PAIRS = 11  # img1 .. img11: under a prefix rule img1 would take img10_LR2 or img11_LR2


@pytest.mark.parametrize("stem, expected", [
    ("Canon_001_HR", ("Canon_001", "hr", None)),
    ("Canon_001_LR2", ("Canon_001", "lr", 2)),
    ("Nikon_050_LR4", ("Nikon_050", "lr", 4)),
    ("0801x2", ("0801", "lr", 2)),
    ("baby_x4", ("baby", "lr", 4)),
    ("butterfly_LRBI_x3", ("butterfly", "lr", 3)),
    ("img_012_GT", ("img_012", "hr", None)),
    ("img10", ("img10", "", None)),
    ("x2", ("x2", "", None)),
])
def test_a_stem_splits_into_its_base_and_resolution_token(stem, expected):
    assert pairing.split_stem(stem) == expected


def _image(i: int, size: int) -> np.ndarray:
    """Image i: a level of its own (so a pair can be checked by its mean) and some texture."""
    rng = np.random.default_rng(i)
    return np.clip(i * 20 + rng.integers(-8, 8, (size, size, 3)), 0, 255).astype(np.uint8)


def realsr_folders(root: Path, *, shared: bool, size: int = 24,
                   other_scale: bool = True) -> tuple[Path, Path]:
    """RealSR's names: HR and same-size LR2 images, LR3 ones beside them (``other_scale``)."""
    hr = root / ("all" if shared else "HR")
    lr = root / ("all" if shared else "LR")
    for folder in {hr, lr}:
        folder.mkdir(parents=True)
    for i in range(1, PAIRS + 1):
        image = _image(i, size)
        Image.fromarray(image).save(hr / f"img{i}_HR.png")
        blurred = Image.fromarray(image).resize((size // 2,) * 2).resize((size,) * 2)
        blurred.save(lr / f"img{i}_LR2.png")
        if other_scale:
            Image.fromarray(image[::2, ::2]).save(lr / f"img{i}_LR3.png")
    return hr, lr


@pytest.mark.parametrize("shared", [False, True])
def test_realsr_pairs_each_hr_with_its_own_lr(tmp_path, shared):
    hr, lr = realsr_folders(tmp_path, shared=shared)
    source = scan_pairs(str(hr), str(lr), scale=2)
    assert len(source) == PAIRS
    for k in range(len(source)):
        high, low = source[k]
        assert abs(float(high.mean()) - float(low.mean())) < 3, (source.hr.files[k],
                                                                 source.lr[k])
        assert source.lr[k].name == source.hr.files[k].name.replace("_HR", "_LR2")


def test_div2k_and_benchmark_names_pair(tmp_path):
    for folder, names in {"HR": ["0801", "baby"], "LR": ["0801x2", "babyx2"]}.items():
        (tmp_path / folder).mkdir()
        for i, name in enumerate(names):
            Image.fromarray(_image(i + 1, 16)).save(tmp_path / folder / f"{name}.png")
    source = scan_pairs(str(tmp_path / "HR"), str(tmp_path / "LR"), scale=2)
    assert [p.name for p in source.lr] == ["0801x2.png", "babyx2.png"]


def test_an_hr_image_without_a_partner_names_the_stems_looked_for(tmp_path):
    hr, lr = realsr_folders(tmp_path, shared=False)
    Image.fromarray(_image(12, 24)).save(hr / "img12_HR.png")
    with pytest.raises(DataError, match=r"no LR partner for .*img12_HR\.png.*'img12_LR2'"):
        scan_pairs(str(hr), str(lr), scale=2)


def test_a_same_size_task_names_lr_images_of_two_scales_instead_of_guessing(tmp_path):
    hr, lr = realsr_folders(tmp_path, shared=True)
    with pytest.raises(DataError, match=r"img(\d+)_HR.png has 2 possible LR partners "
                                         r".*\(img\1_LR2.png, img\1_LR3.png\)"):
        scan_pairs(str(hr), str(lr), scale=1)


def test_two_possible_partners_are_named_not_guessed(tmp_path):
    for folder in ("HR", "LR"):
        (tmp_path / folder).mkdir()
    Image.fromarray(_image(1, 16)).save(tmp_path / "HR" / "a.png")
    for name in ("a_LR.png", "a-lr.png"):
        Image.fromarray(_image(1, 16)).save(tmp_path / "LR" / name)
    with pytest.raises(DataError, match="2 possible LR partners.*a-lr.png, a_LR.png"):
        scan_pairs(str(tmp_path / "HR"), str(tmp_path / "LR"), scale=2)


def test_multiblock_trains_on_a_shared_realsr_folder_and_eval_pairs_every_image(tmp_path):
    from tests.test_multiblock import multiblock_config

    # Multiblock's task is same-size (task.scale=1): one scale's LR files per folder, as RealSR
    # ships them (Canon/Train/2/).
    hr, lr = realsr_folders(tmp_path / "data", shared=True, other_scale=False)
    c = multiblock_config(tmp_path / "unused")
    c.data.update({"train_dir": str(hr), "train_lr_dir": str(lr), "valid_dir": str(hr),
                   "valid_lr_dir": str(lr), "patch": 16})
    c.multiblock.update(dict(blocks=1, inherit=False, block_steps=2, plus_steps=2,
                             joint_steps=2))
    result = train.run(c, tmp_path / "run")
    assert np.isfinite(result["psnr"])
    final = Path(result["workdir"]) if "workdir" in result else tmp_path / "run"

    # eval.py --input_dir LR --target_dir HR: every LR2 image scored against its own HR image,
    # in separate folders and in the shared one.
    apart_hr, apart_lr = realsr_folders(tmp_path / "apart", shared=False, other_scale=False)
    for inputs, targets in ((apart_lr, apart_hr), (lr, hr)):
        rows, summary, _ = evaluate.run(str(final), which="latest", input_dir=str(inputs),
                                        target_dir=str(targets),
                                        output_dir=str(tmp_path / "eval" / inputs.parent.name))
        assert sorted(r["image"] for r in rows) == sorted(f"img{i}_LR2.png"
                                                          for i in range(1, PAIRS + 1))
        assert all(np.isfinite(r["psnr"]) and r["input_psnr"] > 25 for r in rows)

    # An input with no target is named before any work.
    Image.fromarray(_image(13, 24)).save(apart_lr / "img13_LR2.png")
    with pytest.raises(DataError, match="1 of 12 inputs .* img13_LR2.png"):
        evaluate.run(str(final), which="latest", input_dir=str(apart_lr),
                     target_dir=str(apart_hr), output_dir=str(tmp_path / "eval" / "x"))


def test_a_benchmark_folder_replaces_the_datasets_validation_split(tmp_path):
    """data.valid_dir beside a source with splits of its own (builtin here, DIV2K through TFDS
    for ECO): the run validates on the folder's images, as SR papers validate on Set5, and its
    first lines say so."""
    from tests.helpers import write_images

    folder = write_images(tmp_path / "Set5", 3, size=(16, 16))  # one 16 px crop each
    c = tiny_config(**{"train.steps": 2, "log.eval_every": 2, "data.valid_dir": str(folder)})
    train.train_and_evaluate(c, tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"validation: 3 crops of 16 px from {folder}" in log
    plain = tiny_config(**{"train.steps": 2, "log.eval_every": 2})
    train.train_and_evaluate(plain, tmp_path / "plain")
    assert "validation: 4 crops of 16 px from builtin images" in \
        (tmp_path / "plain" / "train.log").read_text()
