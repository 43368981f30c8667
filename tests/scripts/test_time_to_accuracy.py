"""scripts/time_to_accuracy.py: first epoch reaching the target, clear errors, the written report."""
from __future__ import annotations

import pytest

from scripts import time_to_accuracy


def write_metrics(run_dir, header: str, rows: list[str]) -> None:
    folder = run_dir / "csv" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")


def test_first_epoch_at_target_and_final_metrics(tmp_path):
    write_metrics(tmp_path / "run", "epoch,step,val/acc,time/elapsed_s,test/acc,test/acc_tta",
                  ["0,10,0.90,30.0,,", "1,20,0.941,61.0,,", "2,30,0.935,90.0,,", "2,30,,,0.95,0.955"])
    out = tmp_path / "report.md"
    time_to_accuracy.main([str(tmp_path / "run"), "--target", "0.94", "--out", str(out), "--title", "GPU"])
    summary = time_to_accuracy.summarize(tmp_path / "run", 0.94)
    assert summary["epoch_reached"] == 2 and summary["seconds_to_target"] == 61.0  # the first, not the last
    assert (summary["total_seconds"], summary["test_acc"], summary["test_acc_tta"]) == (90.0, 0.95, 0.955)
    text = out.read_text()
    assert text.startswith("# GPU") and "| 3 | 2 | 1.02 min | 1.50 min | 0.9350 | 0.9500 | 0.9550 |" in text


def test_missing_run_or_missing_clock_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no csv/version_"):
        time_to_accuracy.summarize(tmp_path / "nothing", 0.94)
    write_metrics(tmp_path / "run", "epoch,step,val/acc", ["0,10,0.9"])
    with pytest.raises(ValueError, match="ElapsedTime"):
        time_to_accuracy.summarize(tmp_path / "run", 0.94)
