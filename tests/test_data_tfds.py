"""TFDS datasets prepare themselves: a builder of the tests' own goes through the same
download-and-prepare path as STL-10 would; offline, the run stops at once with the manual steps."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers msjax_photo_patches)
from msjax import data, defaults
from msjax.data import prepare
from msjax.errors import DataError


def tfds_config(data_dir, name="msjax_photo_patches/tiny", **fields):
    c = defaults.get_config().data
    c.source, c.name, c.data_dir, c.patch = "tfds", name, str(data_dir), 8
    c.valid_split = "test"
    c.update(fields)
    return c


def test_a_missing_dataset_is_prepared_then_read(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(prepare, "download_hosts", lambda builder: [("example.org", 443)])
    monkeypatch.setattr(prepare, "unreachable_hosts", lambda hosts: probed.append(hosts) or [])
    c = tfds_config(tmp_path / "tfds")
    train = data.open_source(c, "train")
    assert probed == [[("example.org", 443)]], "the network is probed before TFDS downloads"
    assert (tmp_path / "tfds" / "msjax_photo_patches" / "tiny").is_dir()
    assert list((tmp_path / "tfds").rglob("*-train.array_record-*")), "prepared as ArrayRecord"
    assert len(train) == 12 and train[3].shape == (16, 16, 3) and train[3].dtype == np.uint8
    assert data.device.estimate(train, sample=False).bytes == 12 * 16 * 16 * 3, "from its info"
    assert len(data.open_source(c, "valid")) == 4
    probed.clear()
    data.open_source(c, "train")  # prepared: no probe, no second prepare
    assert not probed
    batch = data.term_batch(train, seed=0, step=0, term=0, batch=4, patch=8)
    assert batch["target"].shape == (4, 8, 8, 3)


def offline(monkeypatch):
    monkeypatch.setattr(prepare, "unreachable_hosts",
                        lambda hosts: [f"{h}:{p}" for h, p in hosts])


def test_offline_stops_fast_naming_the_dataset_extra_and_steps(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.setattr(prepare, "download_hosts", lambda builder: [("example.org", 443)])
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        data.open_source(tfds_config(tmp_path / "tfds"), "train")
    assert time.perf_counter() - start < 15
    message = str(e.value)
    for part in ("'msjax_photo_patches/tiny'", "cannot reach example.org:443",
                 "pip install 'msjax[tfds]'",
                 "tfds build msjax_photo_patches/tiny --file_format=array_record",
                 str(tmp_path / "tfds")):
        assert part in message
    assert not list((tmp_path / "tfds").rglob("*-train.array_record*"))


def test_offline_stl10_names_its_host_the_extra_and_the_manual_steps(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.setattr(prepare, "_needs_tensorflow", lambda builder: False)  # as if installed
    with pytest.raises(DataError) as e:
        data.open_source(tfds_config(tmp_path / "tfds", name="stl10",
                                     train_split="train+unlabelled"), "train")
    message = str(e.value)
    for part in ("'stl10'", "cannot reach ai.stanford.edu:80", "pip install 'msjax[tfds]'",
                 "tfds build stl10 --file_format=array_record"):
        assert part in message


def test_preparing_a_catalog_dataset_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.setattr(prepare.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"needs TensorFlow: pip install 'msjax\[tfds\]'"):
        data.open_source(tfds_config(tmp_path / "tfds", name="stl10"), "train")


def test_the_probe_of_a_dead_address_answers_within_its_timeout():
    start = time.perf_counter()
    # TEST-NET-1 (RFC 5737) is never routed: the connection fails or times out.
    assert prepare.unreachable_hosts([("192.0.2.1", 9)], timeout=1.0) == ["192.0.2.1:9"]
    assert time.perf_counter() - start < 5


def test_catalog_datasets_name_their_download_hosts():
    hosts = prepare.download_hosts(tfds.builder("stl10", data_dir="/nonexistent"))
    assert ("ai.stanford.edu", 80) in hosts


def test_download_false_fails_fast_without_probing(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "unreachable_hosts", lambda hosts: pytest.fail("probed"))
    with pytest.raises(DataError, match="not prepared as ArrayRecord"):
        data.open_source(tfds_config(tmp_path / "tfds", download=False), "train")


def test_stl10_train_plus_unlabelled_resolves(tmp_path):
    c = tfds_config(tmp_path / "tfds", name="stl10", train_split="train+unlabelled", patch=96)
    with tfds.testing.mock_data(num_examples=6):
        train = data.open_source(c, "train")
        assert len(train) == 6 and train[0].shape == (96, 96, 3)


def test_a_dataset_prepared_on_first_use_is_trained_on(tmp_path):
    from helpers import tiny_config

    from msjax import train

    c = tiny_config(**{"data.source": "tfds", "data.name": "msjax_photo_patches/tiny",
                       "data.data_dir": str(tmp_path / "tfds"), "data.patch": 16,
                       "train.steps": 2, "mode": "single"})
    result = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["psnr"])
    assert list((tmp_path / "tfds").rglob("*-train.array_record-*"))
