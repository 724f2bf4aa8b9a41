"""``log.wandb``: the W&B writer gets the scalars, image grids and config TensorBoard gets, in
offline mode (no network); a missing package or an unknown mode is one line before training."""

import json
import struct
import sys
import zlib

import pytest

from msjax import build, train
from msjax.errors import ConfigError
from tests.helpers import tiny_config
from tests.test_logs import _events


def test_a_missing_wandb_package_is_one_line_naming_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)    # import wandb raises ImportError
    with pytest.raises(ConfigError) as e:
        train.run(tiny_config(**{"log.wandb": True}), tmp_path / "run")
    assert "pip install 'msjax[wandb]'" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists(), "refused before the workdir is made"
    # Reading the config (as loading a trained run does) needs no wandb.
    build.experiment(tiny_config(**{"log.wandb": True}))


def test_an_unknown_wandb_mode_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="log.wandb_mode='ofline' is not one of") as e:
        build.experiment(tiny_config(**{"log.wandb_mode": "ofline"}))
    assert "\n" not in str(e.value)


def _wandb_records(path):
    """The Records of a W&B transaction log (``run-<id>.wandb``): a 7-byte file header, then
    LevelDB log framing in 32 KiB blocks (crc32, little-endian length, type; a record split
    over blocks as first / middle / last). Read by hand: wandb ships no reader of its own."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:                    # a block's tail too short for a header
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data = raw[pos + 7:pos + 7 + length]
        if kind == 0 and length == 0:
            break
        assert zlib.crc32(bytes([kind]) + data) & 0xFFFFFFFF == crc
        pending += data
        if kind in (1, 4):                             # full, last
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
        pos += 7 + length
    return records


def test_an_offline_run_writes_what_tensorboard_gets(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="W&B logging needs pip install 'msjax[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(**{"log.wandb": True}), workdir)
    # The transaction log is written by wandb's service process, which can still be flushing
    # it when the run's finish() returns; shutting the service down waits for it.
    import wandb
    wandb.teardown()

    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "WANDB_MODE=offline: one offline run in the workdir"
    logs = list(runs[0].glob("run-*.wandb"))
    assert logs and logs[0].name == f"run-{(workdir / 'wandb_id').read_text().strip()}.wandb"
    history, config, images = {}, {}, set()
    records = _wandb_records(logs[0])
    assert any(r.WhichOneof("record_type") == "exit" for r in records), "a finished run"
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # Items are keyed by a path: a number by (its name,), a media value by (its name,
            # a property) for each of its properties.
            paths = [tuple(i.nested_key) or (i.key,) for i in record.history.item]
            row = {p[0]: json.loads(i.value_json)
                   for p, i in zip(paths, record.history.item) if len(p) == 1}
            for key in {p[0] for p in paths if len(p) > 1}:
                images.add((key, row[f"{key.split('/')[0]}/step"]))
            for key, value in row.items():
                if not key.startswith("_") and not key.endswith("/step"):
                    history[(key, row[f"{key.split('/')[0]}/step"])] = value
        elif kind in ("run", "config"):                # the config: at start, updates
            update = record.run.config.update if kind == "run" else record.config.update
            config |= {i.key: json.loads(i.value_json) for i in update}

    scalars, tb_images = {}, set()
    for event in _events(workdir / "tensorboard"):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars[(value.tag, event.step)] = value.simple_value
            elif value.HasField("image"):
                tb_images.add((value.tag, event.step))
    assert {k for k, _ in scalars} >= {"train/loss", "valid/psnr"}
    assert set(history) == set(scalars)
    for key, value in scalars.items():
        assert history[key] == pytest.approx(value, rel=1e-6), key   # TensorBoard: float32
    assert images and images == tb_images
    assert config["model_kwargs.features"] == 8 and config["log.wandb"] is True


def test_reopened_logs_keep_the_wandb_run_open_and_closing_ends_it(tmp_path):
    """A fall back to an older checkpoint reopens the logs; W&B's run goes on through it."""
    from msjax import logs

    class Writer:
        def __init__(self):
            self.rows, self.closed = [], False

        def scalars(self, stream, row):
            self.rows.append((stream, row["step"]))

        def close(self):
            self.closed = True

    writer = Writer()
    runlog = logs.RunLog(tmp_path, None, _wandb_writer=writer)
    runlog.scalars("train", {"step": 3, "loss": 0.5})
    again = runlog.reopened(2)
    assert again.wandb is writer and not writer.closed
    again.scalars("train", {"step": 3, "loss": 0.25})
    assert writer.rows == [("train", 3), ("train", 3)]
    again.close()
    assert writer.closed
