"""`cli.py fit` under DDP with 2 CPU processes (gloo): distinct data per rank, synchronised validation metrics,
only rank 0 writes checkpoints, configs and W&B files; the language model's ranks take the same steps. A hang
fails the test through a timeout instead of stalling CI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_WRN_ARGS
from tests.datamodules.test_wikitext2 import write_corpus

DDP_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.callbacks+=tests.ddp_probe.RankProbe", "--trainer.enable_progress_bar", "false"]


def run_cli(args: list[str], probe_dir, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run cli.py in its own process group; on timeout kill the whole group (the rank-1 child too) and fail."""
    env = {**os.environ, "WANDB_MODE": "offline", "RANK_PROBE_DIR": str(probe_dir), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "cli.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"cli.py under DDP did not finish in {timeout} s (a rank is waiting on the other: hang)")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def ranks(probe_dir) -> list[dict]:
    return [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_cifar_ddp_splits_data_syncs_metrics_and_writes_once(cifar_dir, tmp_path):
    root = tmp_path / "run"
    done = run_cli(["fit", "--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir),
                    "--data.download", "false", "--data.batch_size", "8", "--trainer.max_epochs", "2",
                    "--trainer.default_root_dir", str(root), "--test_after_fit", "false", *DDP_CPU], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = ranks(tmp_path)
    assert rank0["world_size"] == 2 and len(rank0["train_indices"]) == len(rank1["train_indices"]) == 40
    assert set(rank0["train_indices"]).isdisjoint(rank1["train_indices"])  # distinct halves of the 80 images
    assert set(rank0["train_indices"]) | set(rank1["train_indices"]) == set(range(80))
    assert rank0["global_step"] == rank1["global_step"] == 10  # 40 images / 8 per batch × 2 epochs
    assert rank0["val"] == rank1["val"] and "val/acc" in rank0["val"]  # synchronised over both halves
    assert sorted(p.name for p in (root / "csv").iterdir()) == ["version_0"]  # one log dir, not one per rank
    checkpoints = sorted(p.name for p in (root / "csv" / "version_0" / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[1] == "last.ckpt" and checkpoints[0].startswith("epoch")
    assert len(list(root.glob("wandb/offline-run-*"))) == 1  # one W&B run, from rank 0


@pytest.mark.slow
def test_language_model_ddp_ranks_take_the_same_steps(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    done = run_cli(["fit", "--config", "configs/wikitext2_lstm.yaml", "--data.data_dir", str(corpus),
                    "--data.download", "false", "--data.batch_size", "4", "--data.bptt", "12", "--data.eval_bptt", "50",
                    "--model.init_args.net.init_args.hidden_size", "24", "--model.init_args.net.init_args.embedding_size",
                    "16", "--model.init_args.cache", "false", "--trainer.max_epochs", "2", "--trainer.logger", "false",
                    "--trainer.default_root_dir", str(tmp_path / "run"), "--test_after_fit", "false", *DDP_CPU], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = ranks(tmp_path)
    assert rank0["steps_per_epoch"] == rank1["steps_per_epoch"] and rank0["global_step"] == rank1["global_step"] > 0
    assert rank0["val"]["val/ppl"] == rank1["val"]["val/ppl"]
