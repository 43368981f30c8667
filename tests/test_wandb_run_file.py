"""An offline W&B run file is whole when `cli.main` returns, and a file still being written reads as its whole records.

`wandb.Run.finish()` only publishes the close to W&B's service process; the service writes the file's last block
afterwards, so a caller reading the run straight away could find it empty (it happened in CI: a dashboard test read
a Stanford Cars run with no history). `cli_loggers.finish_own_wandb_run` waits for the exit record.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import wandb

from cli_loggers import finish_own_wandb_run, wait_until_written
from lightning_modules.loggers.resumable import WANDB_BLOCK, WANDB_HEADER, read_wandb_records

ROWS = 500  # about 5 blocks of the file's 32 KiB


def kinds(path: Path) -> list[str]:
    return [record.WhichOneof("record_type") for record in read_wandb_records(path)]


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    """A real offline run of ROWS history rows, ended as `cli.main` ends it."""
    folder = tmp_path_factory.mktemp("offline_run")
    run = wandb.init(mode="offline", dir=str(folder), project="superconvergence-tests", settings=wandb.Settings(
        silent=True, console="off"))
    for step in range(ROWS):
        run.log({"train/loss": 1.0 / (step + 1)})
    finish_own_wandb_run(started_before=None)
    return Path(run.settings.sync_file)


def test_the_run_is_whole_as_soon_as_finish_own_wandb_run_returns(run_file):
    written = kinds(run_file)
    assert written.count("history") == ROWS and "exit" in written


def test_a_file_cut_anywhere_reads_as_the_records_before_the_cut(run_file):
    data, whole = run_file.read_bytes(), kinds(run_file)
    cut_file = run_file.parent / "cut.wandb"
    for cut in range(WANDB_HEADER, len(data), max(1, len(data) // 300)):
        cut_file.write_bytes(data[:cut])
        read = kinds(cut_file)
        assert read == whole[:len(read)], cut
    assert len(read) > len(whole) // 2


def test_its_last_blocks_read_as_the_last_records(run_file):
    whole, data = kinds(run_file), run_file.read_bytes()
    assert len(data) > 4 * WANDB_BLOCK
    block_starts = range(WANDB_BLOCK, len(data), WANDB_BLOCK)
    assert any(data[start + 6] in (3, 4) for start in block_starts)  # a block begins inside a record: skipped
    for last_blocks in (1, 2, 3):
        tail = [record.WhichOneof("record_type") for record in read_wandb_records(run_file, last_blocks)]
        assert 0 < len(tail) < len(whole) and tail == whole[-len(tail):], last_blocks
    assert "exit" in tail and len(read_wandb_records(run_file, last_blocks=100)) == len(whole)


def test_it_waits_for_the_exit_record_and_gives_up_with_a_warning(run_file, tmp_path):
    data = run_file.read_bytes()
    pending = tmp_path / "run-pending.wandb"
    pending.write_bytes(data[:WANDB_HEADER])  # the header only, as W&B leaves it before its first flush
    with pytest.warns(UserWarning, match=r"run-pending.wandb: W&B has not finished writing this offline run"):
        assert wait_until_written(pending, timeout_s=0.3) is False

    written = threading.Event()

    def write_late() -> None:
        time.sleep(0.4)
        pending.write_bytes(data)
        written.set()

    writer = threading.Thread(target=write_late)
    writer.start()
    assert wait_until_written(pending, timeout_s=30) is True
    assert written.is_set()
    writer.join()
