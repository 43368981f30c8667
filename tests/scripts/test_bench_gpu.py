"""scripts/bench_gpu.sh: refuses to run without a GPU, and the commands it runs load through the CLI as claimed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cli
from lightning_modules import ElapsedTime
from tests.conftest import REPO, TINY_WRN_ARGS

SCRIPT = REPO / "scripts" / "bench_gpu.sh"


def run_script(tmp_path, **env) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run the script with a PY that executes `-c` snippets for real and records every other invocation."""
    record = tmp_path / "calls.jsonl"
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "if sys.argv[1] == '-c':\n    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    environment = {**os.environ, "PY": str(fake), "ROOT": str(tmp_path / "runs"), "OUT": str(tmp_path / "r.md"), **env}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=environment, capture_output=True, text=True)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return done, calls


def test_without_a_gpu_it_stops_with_a_clear_message(tmp_path):
    done, calls = run_script(tmp_path)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr and calls == []


def test_runs_the_seeds_two_cifar_runs_with_the_fast_settings_then_reports(tmp_path, cifar_dir):
    done, calls = run_script(tmp_path, ALLOW_CPU="1")
    assert done.returncode == 0, done.stderr
    fits, report = calls[:2], calls[2]
    assert [c[:2] for c in fits] == [["cli.py", "fit"]] * 2
    assert report[0] == "scripts/time_to_accuracy.py" and report[-2:] == [
        str(tmp_path / "runs" / "wrn22_30ep"), str(tmp_path / "runs" / "wrn22_18ep_tta")]
    for argv, epochs in zip(fits, (30, 18)):
        run = cli.main([*argv[2:], *TINY_WRN_ARGS, "--trainer.accelerator", "cpu", "--data.data_dir", str(cifar_dir),
                        "--data.download", "false"], run=False)
        assert run.trainer.max_epochs == epochs and run.trainer.precision == "bf16-mixed"
        assert run.model.compile_enabled and run.model.channels_last and run.model.tta == 4
        assert any(isinstance(c, ElapsedTime) for c in run.trainer.callbacks)
        assert run.trainer.default_root_dir == str(tmp_path / "runs" / ("wrn22_30ep" if epochs == 30 else "wrn22_18ep_tta"))
