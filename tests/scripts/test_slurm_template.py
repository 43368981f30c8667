"""scripts/slurm/fit.sbatch: the srun command it builds (fake srun), its resume logic, and that the CLI loads it."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import cli
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "slurm" / "fit.sbatch"


def run_template(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """Run the template with a fake `srun` that records its arguments; return them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "srun.json"
    (bin_dir / "srun").write_text(f'#!/usr/bin/env python3\nimport json, sys\njson.dump(sys.argv[1:], open("{record}", "w"))\n')
    (bin_dir / "srun").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "123", "SLURM_JOB_NAME": "demo", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4"}
    environment = {**os.environ, **slurm, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(record.read_text())


def test_srun_line_runs_ddp_on_every_node_and_gpu(tmp_path):
    argv = run_template(tmp_path, "configs/cifar.yaml", "--trainer.max_epochs", "18", RUN_DIR=str(tmp_path / "run"))
    assert argv[1:3] == ["cli.py", "fit"]
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert argv[argv.index("--trainer.num_nodes") + 1] == "2" and argv[argv.index("--trainer.devices") + 1] == "4"
    assert "configs/trainer/ddp.yaml" in argv and pairs.get("--trainer.max_epochs") == "18"
    assert "--ckpt_path" not in argv  # nothing to resume yet


def test_requeued_job_resumes_from_last_or_lets_lightning_take_its_hpc_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "csv" / "version_0" / "checkpoints").mkdir(parents=True)
    (run_dir / "csv" / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    argv = run_template(tmp_path, "configs/cifar.yaml", RUN_DIR=str(run_dir))
    assert argv[argv.index("--ckpt_path") + 1] == "last"
    (run_dir / "hpc_ckpt_1.ckpt").write_bytes(b"")  # saved by Lightning on SIGUSR1: newer, restored automatically
    assert "--ckpt_path" not in run_template(tmp_path, "configs/cifar.yaml", RUN_DIR=str(run_dir))


def test_array_task_appends_its_line_of_the_study_file(tmp_path):
    study = tmp_path / "args.txt"
    study.write_text("runs/s/seed=0 --seed_everything 0\nruns/s/seed=1 --seed_everything 1 --trainer.max_epochs 18\n")
    argv = run_template(tmp_path, "configs/cifar.yaml", "--study", str(study), SLURM_ARRAY_TASK_ID="1",
                        SLURM_ARRAY_JOB_ID="77")
    assert argv[-4:] == ["--seed_everything", "1", "--trainer.max_epochs", "18"]
    assert argv[argv.index("--trainer.default_root_dir") + 1] == "runs/s/seed=1"  # the study's run directory


def test_the_cli_loads_the_template_command_line(tmp_path, cifar_dir):
    """With configs/trainer/offline_node.yaml as a user adds it (docs/CLUSTER.md): DDP and the sync requests."""
    argv = run_template(tmp_path, "configs/cifar.yaml", "--config", "configs/trainer/offline_node.yaml",
                        "--data.data_dir", str(cifar_dir), "--data.download", "false", RUN_DIR=str(tmp_path / "run"))
    args = argv[3:] + ["--trainer.accelerator", "cpu", "--trainer.logger", "false"]  # no GPU on this machine
    run = cli.main(args, run=False)
    trainer = run.trainer
    assert trainer.num_nodes == 2 and trainer.num_devices == 4
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.default_root_dir == str(tmp_path / "run")
    requests = [c for c in trainer.callbacks if type(c).__name__ == "WandbSyncRequest"]
    assert len(requests) == 1 and requests[0].communication_dir == Path("~/.wandb_osh_command_dir").expanduser()
    assert any(type(c).__name__ == "PreemptionCheckpoint" for c in trainer.callbacks)  # appended, not replacing
