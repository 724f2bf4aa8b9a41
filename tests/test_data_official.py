"""data.source=official: the official MGE code's data directory, read as it is.

The miniature directories here are written from the published formats alone (CIFAR-10's python
pickles, STL-10's column-major binaries, CelebA's JPEGs and partition list), never with msjax's
readers; the PyTorch files are fixtures made by bench/make_torch_fixtures.py with torch, read here
without it. Every image carries a red bar, 4 rows by 8 columns (8 x 16 in the JPEGs and the SR
HR images), at its top left: a transposed, flipped or channel-swapped read moves or recolours it.
"""

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msjax import build, data, train
from msjax.data import torch_files
from msjax.errors import DataError
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "torch"


def marked_image(h: int, w: int, seed: int, bar=(4, 8)) -> np.ndarray:
    """An HxWx3 uint8 image of mid-grey noise with a red bar of ``bar`` (rows, columns) at its
    top left."""
    img = np.random.default_rng(seed).integers(60, 190, (h, w, 3)).astype(np.uint8)
    img[:bar[0], :bar[1]] = (255, 0, 0)
    return img


# --- writers of the published formats -----------------------------------------------------------

def write_stl10(root: Path, counts: dict) -> dict:
    """``stl10_binary/<part>_X.bin``: each image's red plane, then green, then blue, each plane
    column by column (column-major), one byte a value."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for part, count in counts.items():
        first = 100 * len(images)
        images[part] = [marked_image(96, 96, seed=first + i) for i in range(count)]
        with open(folder / f"{part}_X.bin", "wb") as f:
            for img in images[part]:
                for channel in range(3):
                    f.write(img[:, :, channel].flatten(order="F").tobytes())
    return images


def write_cifar10(root: Path, train_count: int = 2, test_count: int = 2, row_bytes=3072):
    """``cifar-10-batches-py``: pickled dicts whose b'data' rows are 1024 red, 1024 green, then
    1024 blue values, each plane row by row."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, count in [(f"data_batch_{i}", train_count) for i in range(1, 6)] + [
            ("test_batch", test_count)]:
        imgs = [marked_image(32, 32, seed=len(images) * 10 + i) for i in range(count)]
        rows = np.stack([np.concatenate([img[:, :, c].reshape(-1) for c in range(3)])
                         for img in imgs])[:, :row_bytes]
        batch = {b"batch_label": name.encode(), b"labels": list(range(count)), b"data": rows,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(count)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        images[name] = imgs
    return images


def write_celeba(root: Path, partitions=(0, 0, 0, 1, 1, 2)) -> list:
    folder = root / "CelebA"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    images, lines = [], []
    for i, part in enumerate(partitions, 1):
        img = marked_image(40, 40, seed=100 + i, bar=(8, 16))
        Image.fromarray(img).save(folder / "img_align_celeba" / f"{i:06d}.jpg", quality=95,
                                  subsampling=0)
        images.append(img)
        lines.append(f"{i:06d}.jpg {part}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return images


# --- what the loop sees -------------------------------------------------------------------------

def official_config(root, name, patch, **fields):
    return tiny_config(**{"data.source": "official", "data.name": name,
                          "data.data_dir": str(root), "data.patch": patch,
                          "data.augment": False, **fields})


def loop_batch(c) -> dict:
    """The first training batch of the finest term, as the loop gets it on the host path."""
    c.data.on_device = "false"
    exp = build.experiment(c)
    source = data.open_source(exp.input, "train", scale=exp.task.scale)
    with data.TrainingInput(exp.input, source, exp.mesh, seed=exp.seed,
                            task=exp.task, stages=exp.stages, start=0,
                            stop=exp.total_steps) as run:
        return run.host_batches(0)[0]


def assert_marked(batch: np.ndarray, bar=(4, 8)):
    """Every patch in [0, 1] with the red bar at its top left, and not transposed."""
    assert batch.dtype == np.float32 and batch.min() >= 0 and batch.max() <= 1
    rows, cols = bar
    inside = batch[:, 1:rows - 1, 1:cols - 1]
    assert np.all(inside[..., 0] > 0.9) and np.all(inside[..., 1:] < 0.1)
    # Below the bar's left end (where a transposed read would put it): not red.
    below = batch[:, rows + 1:cols - 1, 1:rows - 1]
    assert not np.any((below[..., 0] > 0.9) & (below[..., 1] < 0.1) & (below[..., 2] < 0.1))


def trains_two_steps(c, tmp_path):
    c.train.steps = 2
    c.log.eval_every = 2
    c.data.on_device = "auto"
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert result["step"] == 2 and np.isfinite(result["psnr"])


# --- the four datasets --------------------------------------------------------------------------

def test_stl10_reads_train_and_unlabelled_column_major_and_trains(tmp_path):
    images = write_stl10(tmp_path, {"train": 2, "unlabeled": 3, "test": 2})
    c = official_config(tmp_path, "stl10", 96, **{"data.train_split": "train+unlabelled"})
    source = data.open_source(build.input_spec(c), "train")
    assert len(source) == 5
    np.testing.assert_array_equal(source[0], images["train"][0])
    np.testing.assert_array_equal(source[4], images["unlabeled"][2])
    assert len(data.open_source(build.input_spec(c), "valid")) == 2
    assert_marked(loop_batch(c)["target"])
    trains_two_steps(c, tmp_path)


def test_cifar10_reads_pickled_planes_and_trains(tmp_path):
    images = write_cifar10(tmp_path)
    c = official_config(tmp_path, "cifar10", 32)
    source = data.open_source(build.input_spec(c), "train")
    assert len(source) == 10
    np.testing.assert_array_equal(source[2], images["data_batch_2"][0])
    valid = data.open_source(build.input_spec(c), "valid")
    np.testing.assert_array_equal(valid[1], images["test_batch"][1])
    assert_marked(loop_batch(c)["target"])
    trains_two_steps(c, tmp_path)


@pytest.mark.parametrize("name", ["celeba", "celeb_a"])
def test_celeba_splits_by_the_partition_list_and_trains(tmp_path, name):
    images = write_celeba(tmp_path)
    c = official_config(tmp_path, name, 40, **{"data.valid_split": "validation"})
    spec = build.input_spec(c)
    train_source, valid = data.open_source(spec, "train"), data.open_source(spec, "valid")
    assert (len(train_source), len(valid)) == (3, 2)
    assert [p.name for p in valid.files] == ["000004.jpg", "000005.jpg"]
    test = data.open_source(build.input_spec(official_config(tmp_path, name, 40)), "valid")
    assert [p.name for p in test.files] == ["000006.jpg"]   # data.valid_split=test: partition 2
    assert np.abs(train_source[1].astype(int) - images[1]).mean() < 3   # JPEG, nearly lossless
    assert_marked(loop_batch(c)["target"], bar=(8, 16))
    if name == "celeba":
        trains_two_steps(c, tmp_path)


def test_urban100_pairs_from_torch_files_and_trains(tmp_path):
    expected = np.load(FIXTURES / "Urban100" / "expected.npz")
    c = official_config(FIXTURES, "urban100", 32, **{"task.name": "sr", "task.scale": 2,
                                                     "task.upsample_input": True})
    spec = build.input_spec(c)
    pairs = data.open_source(spec, "train", scale=2)
    assert len(pairs) == 2
    hr, lr = pairs[1]
    np.testing.assert_array_equal(hr, expected["high_res_train/1"].transpose(1, 2, 0))
    np.testing.assert_array_equal(lr, expected["low_res_train/1"].transpose(1, 2, 0))
    assert hr.dtype == np.float32 and hr.shape[:2] == (2 * lr.shape[0], 2 * lr.shape[1])
    valid = data.open_source(spec, "valid", scale=2)
    assert valid[0][0].dtype == np.uint8
    np.testing.assert_array_equal(valid[0][1], expected["low_res_test/0"].transpose(1, 2, 0))
    batch = loop_batch(c)
    assert_marked(batch["target"], bar=(8, 16))
    assert_marked(batch["input"], bar=(4, 8))
    trains_two_steps(c, tmp_path)


# --- PyTorch files without torch ----------------------------------------------------------------

def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}{k}/")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}{i}/")
    else:
        yield prefix[:-1], obj


def test_torch_file_gives_every_tensor_as_its_array():
    loaded = torch_files.load(FIXTURES / "tensors.pt")
    expected = np.load(FIXTURES / "tensors.npz")
    arrays = {k: v for k, v in _flatten(loaded) if isinstance(v, np.ndarray)}
    assert sorted(arrays) == sorted(expected.files)
    for key in expected.files:
        got = arrays[key].astype(np.float32) if key == "state/bf16" else arrays[key]
        assert got.dtype == expected[key].dtype and got.shape == expected[key].shape, key
        np.testing.assert_array_equal(got, expected[key], err_msg=key)
    assert str(arrays["state/bf16"].dtype) == "bfloat16"
    assert type(loaded["state"]).__name__ == "OrderedDict"
    assert list(loaded["state"])[:2] == ["conv.weight", "conv.bias"]
    assert (loaded["epoch"], loaded["lr"], loaded["name"], loaded["tuple"][1]) == (
        7, 1e-3, "fixture", 5)
    # Views of one storage are arrays of their own.
    arrays["state/base"][0, 0] = -1
    assert arrays["state/transposed"][0, 0] == 0


def test_legacy_torch_file_is_read():
    np.testing.assert_array_equal(torch_files.load(FIXTURES / "legacy.pt"),
                                  np.arange(3, dtype=np.float32))


def test_truncated_legacy_torch_file_is_one_line(tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes((FIXTURES / "legacy.pt").read_bytes()[:-4])
    with pytest.raises(DataError, match="truncated") as info:
        torch_files.load(cut)
    assert "\n" not in str(info.value)


class _RunsACommand:
    """Pickles as a call of os.system: what a hostile data file would hold."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_pickle_naming_a_disallowed_global_is_refused_and_nothing_runs(tmp_path):
    ran = tmp_path / "ran"
    payload = pickle.dumps({"weights": [_RunsACommand(ran)]}, protocol=2)
    archive = tmp_path / "weights.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("weights/data.pkl", payload)
    with pytest.raises(DataError, match=r"system") as info:
        torch_files.load(archive)
    assert "\n" not in str(info.value) and "weights.pt" in str(info.value)
    # The same in a CIFAR-10 batch.
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(payload)
    c = official_config(tmp_path, "cifar10", 32)
    with pytest.raises(DataError, match="data_batch_3 names the Python global") as info:
        data.open_source(build.input_spec(c), "train")
    assert "\n" not in str(info.value)
    assert not ran.exists()


# --- what goes wrong, in one line ---------------------------------------------------------------

def _one_line_error(c, split="train", scale=1) -> str:
    with pytest.raises(DataError) as info:
        data.open_source(build.input_spec(c), split, scale=scale)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_stl10_binary_names_the_file_and_the_image_size(tmp_path):
    write_stl10(tmp_path, {"train": 2, "test": 1})
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    message = _one_line_error(official_config(tmp_path, "stl10", 96))
    assert str(path) in message and str(2 * 27648 - 100) in message and "27648" in message


def test_cifar_batch_of_the_wrong_row_size_names_the_file_and_the_size_expected(tmp_path):
    write_cifar10(tmp_path, row_bytes=3000)
    message = _one_line_error(official_config(tmp_path, "cifar10", 32))
    assert "data_batch_1" in message and "3072" in message and "3000" in message


def test_missing_directory_names_the_path_expected_and_the_fix(tmp_path):
    message = _one_line_error(official_config(tmp_path / "none", "stl10", 96,
                                              **{"data.train_split": "train+unlabelled"}))
    assert str(tmp_path / "none" / "stl10_binary" / "train_X.bin") in message
    assert "stl10_binary.tar.gz" in message and "--config.data.source=tfds" in message
    message = _one_line_error(official_config(tmp_path / "none", "urban100", 32), scale=2)
    assert str(tmp_path / "none" / "Urban100" / "high_res_train.pt") in message


def test_urban100_pairs_smaller_than_the_training_window_are_named():
    message = _one_line_error(official_config(FIXTURES, "urban100", 64, **{"task.scale": 2}),
                              scale=2)
    assert "training pair 0" in message and "32-pixel LR window" in message


def test_unknown_name_lists_the_four_datasets(tmp_path):
    message = _one_line_error(official_config(tmp_path, "mnist", 32))
    assert all(n in message for n in ("cifar10", "stl10", "celeba", "urban100"))


def test_celeba_without_its_partition_list_names_it(tmp_path):
    write_celeba(tmp_path)
    (tmp_path / "CelebA" / "list_eval_partition.txt").unlink()
    message = _one_line_error(official_config(tmp_path, "celeba", 40))
    assert str(tmp_path / "CelebA" / "list_eval_partition.txt") in message


def test_a_split_smaller_than_valid_images_uses_what_there_is_and_says_so(tmp_path, caplog):
    write_stl10(tmp_path, {"train": 1, "test": 2})
    c = official_config(tmp_path, "stl10", 96, **{"data.valid_images": 512})
    source = data.open_source(build.input_spec(c), "valid")
    with caplog.at_level("WARNING"):
        crops = data.validation_crops(source, 512, 96)
    assert crops["target"].shape == (2, 96, 96, 3)      # one distinct 96-pixel window each
    assert "fewer than data.valid_images=512" in caplog.text and "using 2 crops" in caplog.text


def test_train_py_runs_deblur_stl10_on_an_official_directory(tmp_path):
    write_stl10(tmp_path / "DATA", {"train": 2, "unlabeled": 2, "test": 2})
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", MSJAX_HUGE_PAGES="0")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/deblur_stl10.py",
         "--workdir", str(tmp_path / "run"), "--config.data.source=official",
         f"--config.data.data_dir={tmp_path / 'DATA'}", "--config.train.steps=8",
         # Small enough for a CPU: the quickstart's residual CNN, one coarse level, batches of 2.
         "--config.model=residual_cnn", "--config.mge.levels=1", "--config.mge.finest_batch=2",
         "--config.mge.batch_growth=1", "--config.runtime.cpu_convolutions=eigen"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "valid.csv").exists()
