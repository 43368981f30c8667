"""scripts/study.py: grid expansion, resumable local runs, SLURM array file, and the report's arithmetic."""
from __future__ import annotations

import statistics
import subprocess
import sys

import pytest
import yaml
from pytorch_lightning.loggers import CSVLogger

from scripts import study as study_script
from scripts import study_report
from tests.conftest import REPO, TINY_WRN_ARGS


def write_study(path, cifar_dir, **extra):
    study = {"name": "tiny", "configs": ["configs/cifar.yaml"],
             "args": [*TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir), "--data.download", "false",
                      "--data.batch_size", "16", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
                      "--trainer.log_every_n_steps", "1"],
             "grid": {"optimizer": {"adamw": ["--config", "configs/optim/adamw.yaml"],
                                    "sgd": ["--config", "configs/optim/sgd.yaml"]},
                      "seed": {"0": ["--seed_everything", "0"], "1": ["--seed_everything", "1"]}},
             "metrics": ["test/acc", "test/acc_tta"], "curve": "val/acc", **extra}
    path.write_text(yaml.safe_dump(study))
    return path


def test_grid_expands_to_one_run_per_combination(tmp_path, cifar_dir):
    study = study_script.load_study(write_study(tmp_path / "s.yaml", cifar_dir))
    runs = study_script.combinations(study, tmp_path)
    assert [r["dir"].name for r in runs] == ["optimizer=adamw,seed=0", "optimizer=adamw,seed=1",
                                             "optimizer=sgd,seed=0", "optimizer=sgd,seed=1"]
    args = runs[3]["args"]
    assert args[:2] == ["--config", "configs/cifar.yaml"] and args[-2:] == ["--trainer.default_root_dir", str(runs[3]["dir"])]
    assert "configs/optim/sgd.yaml" in args and args[args.index("--seed_everything") + 1] == "1"
    assert args[args.index("--trainer.logger.init_args.group") + 1] == "tiny"  # W&B groups runs by study


def test_the_seed_is_given_after_configs_that_set_one_whatever_the_grids_order(tmp_path, cifar_dir):
    study = study_script.load_study(write_study(tmp_path / "s.yaml", cifar_dir))
    study["grid"] = {"seed": study["grid"]["seed"],  # seed first, for the order runs are made in ...
                     "model": {"qrnn": ["--config", "configs/wikitext2_qrnn.yaml"]}}  # ... which sets seed_everything: 0
    runs = study_script.combinations(study, tmp_path)
    assert [r["dir"].name for r in runs] == ["seed=0,model=qrnn", "seed=1,model=qrnn"]
    args = runs[1]["args"]
    assert args.index("--seed_everything") > args.index("configs/wikitext2_qrnn.yaml")  # later --config values win


def test_bad_study_files_are_named(tmp_path, cifar_dir):
    (tmp_path / "empty.yaml").write_text("name: x\n")
    with pytest.raises(SystemExit, match="missing configs, grid, metrics"):
        study_script.load_study(tmp_path / "empty.yaml")
    with pytest.raises(SystemExit, match="average_over 'lr' is not an axis"):
        study_script.load_study(write_study(tmp_path / "s.yaml", cifar_dir, average_over="lr"))


def test_slurm_array_lists_pending_runs_for_the_template(tmp_path, cifar_dir):
    study = study_script.load_study(write_study(tmp_path / "s.yaml", cifar_dir))
    runs = study_script.combinations(study, tmp_path)
    (runs[0]["dir"]).mkdir(parents=True)
    (runs[0]["dir"] / "done.json").write_text("{}")
    lines = study_script.write_slurm_array(study, runs, tmp_path).read_text().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == str(runs[1]["dir"])
    assert "--config configs/cifar.yaml" not in lines[0]  # the template passes the first config itself


def test_report_table_is_mean_and_std_over_seeds(tmp_path):
    runs = []
    for optimizer, accuracies in (("adamw", [0.90, 0.92]), ("sgd", [0.80, 0.84])):
        for seed, acc in enumerate(accuracies):
            runs.append({"labels": {"optimizer": optimizer, "seed": str(seed)}, "final": {"test/acc": acc},
                         "curve": [acc - 0.1, acc]})
    text = study_report.table(runs, ["optimizer"], ["test/acc"])
    assert f"| adamw | 91.00 ± {100 * statistics.stdev([0.90, 0.92]):.2f} (n=2) |" in text
    assert "| sgd | 82.00 ± 2.83 (n=2) |" in text
    study_report.plot_curves(runs, ["optimizer"], "val/acc", tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_wall_time_sums_each_runs_last_elapsed_time():
    elapsed = lambda *seconds: [{"time/elapsed_s": s} for s in seconds] + [{"test/acc": 0.5}]  # noqa: E731
    runs = [{"rows": elapsed(60, 120)}, {"rows": elapsed(90, 300)}, {"rows": elapsed(240)}, {"rows": [{"x": 1}]}]
    assert study_report.wall_time(runs) == ("Wall time of fitting (each run's `time/elapsed_s`; tests and start-up "
                                            "not included): 11 min for 3 runs, median 4.0 min per run (range 2.0–5.0).")
    assert study_report.wall_time([{"rows": [{"x": 1}]}]).startswith("Wall time: not logged")


@pytest.mark.slow
def test_study_runs_reports_and_resumes(tmp_path, cifar_dir, monkeypatch):
    import cli

    started = []
    run_process = subprocess.run

    def first_as_a_process_then_in_this_one(command, **kwargs):
        """The first run goes through the command line study.py writes; the other three run in this process,
        where they prove as much (the runs' folders, metrics and done markers) for a quarter of the start-up."""
        if list(command[1:3]) != ["cli.py", "fit"]:
            return run_process(command, **kwargs)  # not a run (git, called while a run starts)
        started.append(command)
        if len(started) == 1:
            return run_process(command, **kwargs)
        assert kwargs["cwd"] == REPO
        cli.main(command[2:])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", first_as_a_process_then_in_this_one)
    study_file = write_study(tmp_path / "s.yaml", cifar_dir)
    study_script.main([str(study_file), "--root", str(tmp_path)])
    assert len(started) == 4
    # Each in-process run logged into a W&B run of its own (cli.main ends the run it started; Lightning would
    # otherwise hand the open one to the next command).
    for run_dir in (tmp_path / "runs" / "studies" / "tiny").iterdir():
        assert len(list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))) == 1, run_dir
    report = (tmp_path / "docs" / "results" / "tiny.md").read_text()
    assert "| adamw | " in report and "| sgd | " in report and report.count("(n=2)") == 4
    assert "min for 4 runs" in report
    assert (tmp_path / "docs" / "results" / "tiny" / "curves.png").is_file()
    assert (tmp_path / "docs" / "results" / "tiny" / "schedule.png").is_file()

    def no_more_training(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(subprocess, "run", no_more_training)
    study_script.main([str(study_file), "--root", str(tmp_path)])  # everything is done: only the report again
    assert not list(REPO.glob("runs/studies/tiny"))  # nothing written into the repository


def test_a_study_run_parses_and_is_grouped_on_wandb(tmp_path, cifar_dir):
    import cli

    study = study_script.load_study(write_study(tmp_path / "s.yaml", cifar_dir))
    run = cli.main(study_script.combinations(study, tmp_path)[2]["args"], run=False)
    csv_logger, wandb_logger = run.trainer.loggers
    assert wandb_logger._wandb_init["group"] == "tiny" and isinstance(csv_logger, CSVLogger)
    assert type(run.model.optimizer_factory([__import__("torch").nn.Parameter(__import__("torch").zeros(1))])).__name__ == "SGD"


def test_tuned_cache_results_become_metrics_and_a_table(tmp_path):
    run_dir = tmp_path / "model=qrnn,seed=0"
    results = run_dir / "csv" / "version_0" / "cache_tuning" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text('{"best": {"theta": 0.3, "lambda": 0.16, "window": 2000, "val_ppl": 90.5}, '
                       '"test": {"tuned_cache": {"ppl": 80.25}}}')
    tuned = study_script.tuned_metrics(run_dir)
    assert tuned == {"test/ppl_cache_tuned": 80.25, "val/ppl_cache_tuned": 90.5, "cache/theta": 0.3,
                     "cache/lambda": 0.16, "cache/window": 2000}
    assert study_script.tuned_metrics(tmp_path / "never_tuned") == {}
    table = study_report.tuned_table([{"labels": {"model": "qrnn", "seed": "0"}, "tuned": tuned},
                                      {"labels": {"model": "qrnn", "seed": "1"}, "tuned": {**tuned, "cache/theta": 0.45}}],
                                     ["model"])
    assert table.splitlines()[-1] == "| qrnn | 0.3 / 0.45 | 0.16 / 0.16 | 2000 / 2000 |"


def test_heatmaps_put_each_optimizer_on_its_own_map_and_mark_its_best_cell(tmp_path, monkeypatch):
    def run(decay: str, lr: str, seed: str, acc: float) -> dict:
        return {"labels": {"decay": decay, "lr": lr, "seed": seed}, "final": {"test/acc": acc}}

    runs = [run("adamw:0.1", "0.001", "0", 0.50), run("adamw:0.1", "0.001", "1", 0.54), run("adamw:1", "0.001", "0", 0.40),
            run("adamw:0.1", "0.01", "0", 0.45), run("adamw:1", "0.01", "0", 0.30),
            run("adam_l2:1e-06", "0.001", "0", 0.48), run("adam_l2:0.001", "0.001", "0", 0.20)]
    from matplotlib.axes import Axes

    scales, imshow = [], Axes.imshow

    def recording_imshow(self, *args, **kwargs):
        scales.append((kwargs.get("vmin"), kwargs.get("vmax")))
        return imshow(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "imshow", recording_imshow)
    best = study_report.plot_heatmaps(runs, "lr", "decay", "test/acc", tmp_path / "maps.png")
    assert best == {"adamw": ("0.001", "0.1", pytest.approx(0.52)), "adam_l2": ("0.001", "1e-06", 0.48)}
    assert scales == [(0.20, pytest.approx(0.52))] * 2  # one colour scale for both maps
    assert (tmp_path / "maps.png").stat().st_size > 0


def test_the_lr_wd_study_sets_each_cells_optimizer_lr_and_decay(cifar_dir):
    import cli

    study = study_script.load_study(REPO / "configs" / "studies" / "cifar_lr_wd.yaml")
    runs = study_script.combinations(study)
    assert len(runs) == 10 * 3 * len(study["grid"]["seed"])
    for labels in ({"decay": "adamw:0.3", "lr": "0.01"}, {"decay": "adam_l2:1e-05", "lr": "0.001"}):
        chosen = next(r for r in runs if all(r["labels"][k] == v for k, v in labels.items()))
        parsed = cli.main([*chosen["args"], *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir), "--data.download",
                           "false"], run=False)
        optimizer = parsed.model.optimizer_factory([__import__("torch").nn.Parameter(__import__("torch").zeros(1))])
        assert type(optimizer).__name__ == ("AdamW" if labels["decay"].startswith("adamw") else "Adam")
        assert optimizer.defaults["lr"] == float(labels["lr"])
        assert optimizer.defaults["weight_decay"] == float(labels["decay"].split(":")[1])
        assert parsed.datamodule.train_subset == 5000 and parsed.trainer.max_epochs == 8


def test_two_study_processes_never_run_the_same_run_and_a_killed_one_frees_its_run(tmp_path, cifar_dir, capsys,
                                                                                  monkeypatch):
    study = study_script.load_study(write_study(tmp_path / "s.yaml", cifar_dir))
    runs = study_script.combinations(study, tmp_path)
    with study_script.claim(runs[0]) as first, study_script.claim(runs[0]) as second, \
            study_script.claim(runs[1]) as other:
        assert (first, second, other) == (True, False, True)
    # Another process holds run 0; every other run is finished: main must start nothing.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(runs[0]["dir"] / ".study.lock")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    for run in runs[1:]:
        run["dir"].mkdir(parents=True, exist_ok=True)
        (run["dir"] / "done.json").write_text("{}")
    monkeypatch.setattr(study_script, "report", lambda *args: None)
    monkeypatch.setattr(study_script, "run_locally", lambda run, python: pytest.fail(f"{run['dir']} was started"))
    study_script.main([str(tmp_path / "s.yaml"), "--root", str(tmp_path)])
    assert f"another study process is running {runs[0]['dir']}" in capsys.readouterr().out
    holder.kill()
    holder.wait()
    with study_script.claim(runs[0]) as after_the_crash:
        assert after_the_crash


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "w")
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(60)
"""
