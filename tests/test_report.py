"""msjax.report on synthetic run logs: the table, the interpolated cost to a target, the plot."""

import json
import math

import numpy as np
import pytest

from msjax import report
from msjax.errors import RunDirError
from msjax.logs import TRAIN_FIELDS, VALID_FIELDS, CsvLog


def write_run(path, mode, valid_rows, train_rows):
    path.mkdir()
    train, valid = CsvLog(path / "train.csv", TRAIN_FIELDS), CsvLog(path / "valid.csv", VALID_FIELDS)
    for row in train_rows:
        train.write(row)
    for row in valid_rows:
        valid.write(row)
    (path / "config.json").write_text(json.dumps({"mode": mode}))
    return path


def rows(psnrs, seconds_per_eval, flops_per_eval, wu_per_eval, every=10):
    return [{"step": every * (i + 1), "psnr": p, "input_psnr": 20.0,
             "seconds": seconds_per_eval * (i + 1), "flops": flops_per_eval * (i + 1),
             "work_units": wu_per_eval * (i + 1)} for i, p in enumerate(psnrs)]


@pytest.fixture
def runs(tmp_path):
    single = rows([22.0, 24.0, 25.0], seconds_per_eval=10.0, flops_per_eval=4e9, wu_per_eval=10)
    fms = rows([23.0, 25.0, 25.5], seconds_per_eval=2.0, flops_per_eval=1e9, wu_per_eval=2)
    # The train log runs one step past the last validation: its ledger is the run's total.
    last = {"step": 31, "seconds": 31.0, "flops": 12.4e9, "work_units": 31.0, "loss": 0.1}
    return [write_run(tmp_path / "single", "single", single, [last]),
            write_run(tmp_path / "fms", "fullmultiscale", fms, [])]


def test_cost_to_reach_interpolates_between_validation_rows(runs):
    valid = report.load_run(runs[0]).valid
    # 24.5 dB lies halfway between rows 2 (20 s, 24 dB) and 3 (30 s, 25 dB).
    assert report.cost_to_reach(valid, 24.5, "seconds") == pytest.approx(25.0)
    # Before the first row the curve starts at zero cost with the input's PSNR (20 dB).
    assert report.cost_to_reach(valid, 21.0, "seconds") == pytest.approx(5.0)
    assert math.isnan(report.cost_to_reach(valid, 30.0, "seconds"))


def test_table_reports_totals_and_ratios_to_the_first_run(runs):
    summaries = [report.summary(report.load_run(r), target=24.5) for r in runs]
    single, fms = summaries
    assert single["seconds"] == 31.0 and single["final_psnr"] == 25.0
    assert fms["best_psnr"] == 25.5 and fms["seconds"] == 6.0
    # FMS reaches 24.5 dB at 0.75 of its second eval interval: 3.5 s against single's 25 s.
    assert fms["seconds_to_target"] == pytest.approx(3.5)
    table = report.markdown_table(summaries, target=24.5)
    lines = table.splitlines()
    assert len(lines) == 4 and "fms (fullmultiscale)" in lines[3]
    assert "| 0.19 |" in lines[3]     # total time 6 / 31
    assert "| 0.14 |" in lines[3]     # time to target 3.5 / 25


def test_cli_writes_plot_and_markdown(runs, tmp_path, capsys):
    out = tmp_path / "report"
    report.main([str(r) for r in runs] + ["--out", str(out), "--target", "24.5"])
    # Several runs: the files are named after them.
    png = (out / "report-single+fms.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = (out / "report-single+fms.md").read_text()
    assert "](report-single+fms.png)" in text
    # Runs by their paths relative to the report, never absolute ones.
    assert "`../single`" in text and "`../fms`" in text and str(tmp_path) not in text
    printed = capsys.readouterr().out
    assert "single" in printed and f"wrote {out / 'report-single+fms.md'}" in printed


def test_a_report_over_other_runs_never_replaces_an_earlier_one(tmp_path):
    made = {name: write_run(tmp_path / name, "single", [{"step": 10, "stage": 0, "psnr": 24.0,
                                                        "input_psnr": 20.0, "seconds": 1.0,
                                                        "flops": 1e9, "work_units": 1.0}], [])
            for name in ("a", "b", "c")}
    report.main([str(made["a"]), str(made["b"])])
    first = (tmp_path / "report-a+b.md").read_text()
    report.main([str(made["a"]), str(made["c"])])
    assert (tmp_path / "report-a+b.md").read_text() == first
    assert (tmp_path / "report-a+c.md").exists() and not (tmp_path / "report.md").exists()
    report.main([str(made["a"])])  # one run: report.md in the run, naming it "."
    assert "`.`" in (made["a"] / "report.md").read_text()


def test_missing_logs_say_what_is_wrong(tmp_path):
    with pytest.raises(RunDirError, match="valid.csv"):
        report.load_run(tmp_path)
    empty = write_run(tmp_path / "fresh", "single", [], [])
    with pytest.raises(RunDirError, match="no validation rows yet"):
        report.load_run(empty)


def test_a_wrong_path_is_one_error_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "no_such_run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no_such_run" in err
    assert "Traceback" not in err


def test_the_report_goes_next_to_the_runs_never_into_the_current_directory(
        runs, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report.main([str(runs[0])])
    assert (runs[0] / "report.png").exists() and (runs[0] / "report.md").exists()
    report.main([str(r) for r in runs])  # several runs: their common parent
    both = tmp_path / "report-single+fms.md"
    assert both.exists() and "single" in both.read_text()
    assert list(elsewhere.iterdir()) == []


def test_title_says_what_was_run():
    run = report.Run("ms", [], [], {"task.name": "sr", "task.scale": 2, "model": "edsr",
                                    "mode": "multiscale", "data.source": "builtin"})
    assert report.title([run]) == "sr x2, edsr on built-in photos: ms (multiscale)"


def test_stage_starts_are_where_each_later_stage_begins(tmp_path):
    train_rows = [{"step": 3, "stage": 0, "seconds": 0.3, "work_units": 1.5, "flops": 3e9},
                  {"step": 5, "stage": 1, "seconds": 1.1, "work_units": 3.5, "flops": 7e9},
                  {"step": 6, "stage": 2, "seconds": 2.0, "work_units": 5.5, "flops": 9e9}]
    run = report.load_run(write_run(tmp_path / "fms", "fullmultiscale",
                                    rows([25.0], 2.0, 9e9, 5.5), train_rows))
    assert report.stage_starts(run, "flops") == [(1, pytest.approx(3e9)),
                                                 (2, pytest.approx(7e9))]


@pytest.mark.parametrize("lo,hi", [(58, 433), (1.3, 9.9), (0.2, 3e3), (5, 5e7), (2.1, 2.9)])
def test_log_ticks_are_few_enough_to_read_and_never_crowded(lo, hi):
    ticks = report.log_ticks(lo, hi)
    assert 2 <= len(ticks) <= 10
    assert all(lo * 0.99 <= t <= hi * 1.01 for t in ticks)
    # Neighbours at least 1/12 of the axis apart in log space: labels do not run together.
    span = math.log10(hi / lo)
    gaps = np.diff(np.log10(ticks))
    assert gaps.min() >= span / 12
    assert all(len(report._plain(t)) <= 5 for t in ticks)


def test_stage_costs_split_the_cumulative_ledger(tmp_path):
    # Two stages: 3 cheap coarse steps (0.5 work units, 0.1 s each), then 2 fine steps (1 WU,
    # 0.4 s each); the loop logs every stage's last step.
    train_rows = [{"step": 3, "stage": 0, "seconds": 0.3, "work_units": 1.5, "flops": 3e9},
                  {"step": 4, "stage": 1, "seconds": 0.7, "work_units": 2.5, "flops": 5e9},
                  {"step": 5, "stage": 1, "seconds": 1.1, "work_units": 3.5, "flops": 7e9}]
    run = report.load_run(write_run(tmp_path / "fms", "fullmultiscale",
                                    rows([25.0], 1.1, 7e9, 3.5), train_rows))
    stages = report.stage_costs(run)
    assert [r["steps"] for r in stages] == [3, 2]
    assert [r["seconds"] for r in stages] == pytest.approx([0.3, 0.8])
    assert [r["work_units"] for r in stages] == pytest.approx([1.5, 2.0])
    lines = report.stage_table([run]).splitlines()
    # Stage 0: 0.2 s per work unit against stage 1's 0.4: its work units run at 1.0 (the
    # reference is the first row) and stage 1's at 0.5.
    assert "| 200.0 | 1.00 |" in lines[2] and "| 400.0 | 0.50 |" in lines[3]
    # Stages as a person reads them, from 1 (train.csv's column keeps 0 and 1).
    assert [line.split(" | ")[1] for line in lines[2:]] == ["1", "2"]


def test_a_single_lucky_evaluation_does_not_reach_a_smoothed_target(tmp_path):
    noisy = rows([22.0, 25.0, 22.0, 24.0, 25.0, 25.0], seconds_per_eval=10.0,
                 flops_per_eval=1e9, wu_per_eval=1)
    valid = report.load_run(write_run(tmp_path / "noisy", "single", noisy, [])).valid
    assert report.cost_to_reach(valid, 24.5, "seconds") == pytest.approx(10 + 10 * 2.5 / 3)  # spike
    # Trailing means of 3: 22, 23.5, 23, 23.67, 23.67, 24.67: reached between 50 s and 60 s.
    assert report.cost_to_reach(valid, 24.5, "seconds", smooth=3) == pytest.approx(
        50 + 10 * (24.5 - 71 / 3) / (74 / 3 - 71 / 3))
