"""scripts/gpu_check.sh: its dry run goes end to end on the CPU, its real runs are the seed's, and it fails clearly.

The lent GPU machine gives one try of at most 8 minutes: everything that can break in the script must break here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

import cli
from datamodules.cifar10 import CLASSES
from lightning_modules.callbacks import ElapsedTime
from scripts import gpu_check
from tests.conftest import REPO, SHARED_DATA, SHARED_TOOLS, TINY_WRN_ARGS

SCRIPT = REPO / "scripts" / "gpu_check.sh"
DEVICE_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back from $OUT


def run_script(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "WANDB_MODE": "offline", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=600)


def jpeg_archive(path, train_per_class: int = 20, test_per_class: int = 5) -> None:
    """A small archive in the layout of the carried cifar10-jpg.tar.gz (train|test/<class>/NNNN.jpg), of generated
    32x32 JPEGs: the dry run converts it with the real converter in a second, where the whole 60k-image archive
    takes ten."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for name in CLASSES:
                for index in range(count):
                    buffer = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
                    member = tarfile.TarInfo(f"{split}/{name}/{index:04d}.jpg")
                    member.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(member, buffer)


@pytest.fixture
def carry(tmp_path):
    """A carry folder as scripts/gpu_carry.sh makes it (minus the wheels, which this machine does not need), with a
    small CIFAR archive in the carried one's layout and the real converter and WikiText-2 test stream."""
    sources = [SHARED_TOOLS / "cifar10_from_jpg.py", SHARED_DATA / "wikitext-2" / "wiki.test.tokens"]
    if not all(path.is_file() for path in sources):
        pytest.skip(f"the converter or the WikiText-2 test stream is not available: {SHARED_DATA} and {SHARED_TOOLS} "
                    "ship in ../shared on project machines")
    folder = tmp_path / "carry"
    folder.mkdir()
    for path in sources:
        (folder / path.name).symlink_to(path)
    jpeg_archive(folder / "cifar10-jpg.tar.gz")
    return folder


NODE_HAS = {"torch", "torchvision", "pytorch-lightning", "torchmetrics",  # what the check asks of the node's Python
            "scipy"}  # torchmetrics looks for it by its metadata, which hiding its modules cannot hide


def modules_a_bare_node_lacks() -> list[str]:
    """The top-level modules of pyproject.toml's dependencies that neither a GPU node's PyTorch install has nor
    scripts/gpu_carry.sh carries: the dry run must not need them."""
    import importlib.metadata
    import tomllib

    def name(requirement: str) -> str:  # the distribution's normalized name (PEP 503)
        return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]).lower()

    carry_script = (REPO / "scripts" / "gpu_carry.sh").read_text()
    carried = {name(package) for line in re.findall(r'^(?:NO_DEPS_)?PACKAGES="(.*)"$', carry_script, re.MULTILINE)
               for package in line.split()}
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lacking = {name(requirement) for requirement in dependencies} - carried - NODE_HAS
    assert carried >= {"jsonargparse", "wandb", "muon-optimizer", "schedulefree"} and lacking
    return sorted(module for module, distributions in importlib.metadata.packages_distributions().items()
                  if not module.startswith("_") and {name(d) for d in distributions} & lacking)


@pytest.mark.slow
def test_dry_run_converts_the_carried_images_runs_every_step_and_reports(tmp_path, carry):
    """On the CPU, as on a bare GPU node: the project's dependencies the node lacks and the carry does not bring
    are hidden from every Python process of the check (tests/bare_node/sitecustomize.py)."""
    hidden = modules_a_bare_node_lacks()
    assert {"wandb_osh", "wandb_workspaces"} <= set(hidden)
    done = run_script(tmp_path, "--dry-run", CARRY=str(carry), DATA=str(tmp_path / "data"),
                      PYTHONPATH=str(REPO / "tests" / "bare_node"), BARE_NODE_MISSING=",".join(hidden))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    log = (out / "gpu_check.log").read_text()
    assert "converting" in log and (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] and results["errors"] == {}
    seed = results["runs"]["wrn22_30ep"]
    assert seed["returncode"] == 0 and seed["epochs"] == 1 and 0 <= seed["test_acc_tta"] <= 1
    assert "configs/trainer/gpu_fast.yaml" in seed["cli_args"] and "--trainer.accelerator" in seed["cli_args"]
    assert results["skipped"] == {"wrn22_18ep_tta": "no epoch time from the 30-epoch run to plan with"}
    benchmarks = results["benchmarks"]
    assert set(benchmarks) == {"ceilings", "fo_pool", "lm_step", "cache", "wrn_step"}
    assert benchmarks["cache"]["real_text"] and benchmarks["cache"]["tokens"] == 245_569  # the carried stream
    assert benchmarks["lm_step"]["dtype"] == "bf16-mixed" and benchmarks["wrn_step"]["sides"][1] == "bf16"
    # the Triton kernels ran too (the interpreter stands in for the GPU), in the fo-pool and the LM-step benchmarks
    assert benchmarks["fo_pool"]["interpreted"] and "triton" in benchmarks["fo_pool"]["sides"]
    assert benchmarks["fo_pool"]["max_abs_diff"]["triton"] < 1e-5 and benchmarks["fo_pool"]["not_run"] == {}
    assert "qrnn_triton" in benchmarks["lm_step"]["sides"] and benchmarks["lm_step"]["not_run"] == {}
    report = (out / "gpu_bench.md").read_text()
    assert "| triton |" in report and "| QRNN (triton) |" in report
    for heading in ("## The seed's CIFAR-10 run", "## Ceilings", "## WRN training step", "## QRNN fo_pool",
                    "## Language-model training step", "## Neural cache", "## Not measured"):
        assert heading in report
    files = sorted(p.name for p in out.iterdir())
    assert files == ["curves.png", "gpu_bench.md", "gpu_check.log", "metrics_wrn22_30ep.csv", "results.json"]
    assert all(DEVICE_FILE_NAME.match(name) for name in files) and len(files) <= 8


def test_without_data_or_carry_it_stops_with_what_to_do(tmp_path):
    done = run_script(tmp_path, CARRY=str(tmp_path / "no_carry"), DATA=str(tmp_path / "no_data"))
    assert done.returncode == 2 and "run scripts/gpu_carry.sh first" in done.stdout  # stderr joins the log


@pytest.mark.parametrize("wandb_there", [True, False])
def test_the_runs_are_the_seeds_with_the_fast_gpu_settings(tmp_path, cifar_dir, monkeypatch, wandb_there):
    monkeypatch.setattr(gpu_check, "importlib_missing", lambda name: not wandb_there)
    for name, epochs in (("wrn22_30ep", 30), ("wrn22_18ep_tta", 18)):
        args = gpu_check.fit_args(name, epochs, cifar_dir, tmp_path, 300, dry=False)
        run = cli.main([*args[1:], *TINY_WRN_ARGS, "--trainer.accelerator", "cpu"], run=False)
        assert args[0] == "fit" and run.trainer.max_epochs == epochs and run.trainer.precision == "bf16-mixed"
        assert run.model.compile_enabled and run.model.channels_last and run.model.tta == 4
        assert run.datamodule.eval_batch_size == 1000 and run.datamodule.batch_size == 128
        assert any(isinstance(c, ElapsedTime) for c in run.trainer.callbacks)
        assert run.trainer.default_root_dir == str(tmp_path / name)
        assert [type(logger).__name__ for logger in run.trainer.loggers] == (
            ["ResumableCSVLogger", "ResumableWandbLogger"] if wandb_there else ["ResumableCSVLogger"])


def test_a_child_past_its_deadline_is_stopped_and_the_check_goes_on(tmp_path):
    check = gpu_check.Check(tmp_path / "out", tmp_path, None, budget_s=60, started=time.time(), dry=True)
    start = time.time()
    code = check.child([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert code == -15 and time.time() - start < 10  # SIGTERM, well before the child's own end


def test_the_short_run_is_planned_from_the_seed_runs_epochs(tmp_path):
    check = gpu_check.Check(tmp_path / "out", tmp_path, None, budget_s=480, started=time.time(), dry=False)
    assert check.short_run_fits() is None  # nothing measured yet: nothing to plan with
    epochs = [60.0] + [5.0] * 29  # the first epoch pays 55 s of compilation
    check.results["runs"]["wrn22_30ep"] = {"epoch_s": epochs, "median_epoch_s": 5.0, "compile_s": 55.0,
                                           "wall_s": 240.0}
    # start-up and test beyond the epochs (35 s), compilation again (55 s), 18 epochs (90 s), 30 s to spare
    assert check.short_run_fits() == pytest.approx(35 + 55 + 18 * 5 + 30)
