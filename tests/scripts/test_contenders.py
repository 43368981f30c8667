"""scripts/contenders.py: the fair protocol's choices (lr by validation, never test; then seeds and budgets) and
its report, on run folders written here as finished runs leave them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from scripts import contenders


def spec_file(tmp_path: Path, **changes) -> Path:
    spec = {"name": "toy", "configs": ["configs/cifar.yaml"], "args": ["--trainer.max_epochs", "4"], "max_epochs": 4,
            "lr_arg": "--model.init_args.optimizer.init_args.lr", "select": {"metric": "val/acc", "mode": "max"},
            "metrics": ["test/acc"], "target": 0.5, "seeds": ["0", "1"],
            "contenders": {"one_cycle": {"args": ["--config", "configs/optim/adamw.yaml"], "lrs": [0.001, 0.003, 0.01]},
                           "free": {"args": ["--config", "configs/optim/schedule_free_adamw.yaml"],
                                    "lrs": [0.003, 0.01, 0.03]}},
            "anytime": {"contender": "free", "against": "one_cycle", "fractions": [0.5]}, **changes}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def finish(run: dict, val: list[float], test: float, steps_per_epoch: int = 10) -> None:
    """A finished run as cli.py leaves it: metrics.csv with a val/acc per epoch, test/acc at the end, done.json."""
    folder = run["dir"] / "csv" / "version_0"
    folder.mkdir(parents=True)
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "val/acc", "test/acc", "time/elapsed_s"])
        writer.writeheader()
        for epoch, value in enumerate(val):
            writer.writerow({"epoch": epoch, "step": (epoch + 1) * steps_per_epoch - 1, "val/acc": value,
                             "time/elapsed_s": 30 * (epoch + 1)})
        writer.writerow({"epoch": len(val) - 1, "step": len(val) * steps_per_epoch, "test/acc": test})
    (run["dir"] / "done.json").write_text(json.dumps({"args": run["args"]}))


def test_unequal_tuning_budgets_are_refused(tmp_path):
    path = spec_file(tmp_path, contenders={"a": {"args": [], "lrs": [1, 2]}, "b": {"args": [], "lrs": [1]}})
    with pytest.raises(SystemExit, match="same number of lrs"):
        contenders.load(path)


def test_the_lr_is_chosen_on_validation_then_seeds_and_budgets_follow(tmp_path):
    spec = contenders.load(spec_file(tmp_path))
    runs, waiting = contenders.planned_runs(spec, tmp_path)
    assert waiting and [r["labels"]["seed"] for r in runs] == ["0"] * 6  # tuning first, nothing else yet
    assert "--model.init_args.optimizer.init_args.lr" in runs[0]["args"]
    make = lambda name, lr, seed="0", budget=1.0: contenders.make_run(spec, name, lr, seed, budget, tmp_path)  # noqa: E731
    finish(make("one_cycle", 0.001), [0.3, 0.4, 0.5, 0.6], test=0.9)  # best on test, worse on validation
    finish(make("one_cycle", 0.003), [0.4, 0.5, 0.6, 0.7], test=0.1)
    assert contenders.chosen_lr(spec, "one_cycle", tmp_path) is None  # one tuning run still missing
    finish(make("one_cycle", 0.01), [0.4, 0.5, 0.6, 0.65], test=0.1)
    assert contenders.chosen_lr(spec, "one_cycle", tmp_path) == 0.003  # validation decides, never test
    runs, waiting = contenders.planned_runs(spec, tmp_path)
    extra = [r for r in runs if r["labels"]["contender"] == "one_cycle" and r["labels"]["seed"] == "1"
             or "budget" in r["labels"]]
    assert waiting  # the other contender's tuning is not finished
    budget_run = next(r for r in extra if "budget" in r["labels"])
    assert budget_run["args"][budget_run["args"].index("--trainer.max_epochs", 3) + 1] == "2"
    assert any(r["labels"]["seed"] == "1" and r["labels"]["lr"] == "0.003" for r in extra)


def test_a_best_lr_at_the_end_of_the_grid_gets_one_more_lr_beyond_it(tmp_path):
    spec = contenders.load(spec_file(tmp_path))
    make = lambda name, lr: contenders.make_run(spec, name, lr, "0", 1.0, tmp_path)  # noqa: E731
    for lr, final in ((0.003, 0.5), (0.01, 0.45), (0.03, 0.4)):  # the smallest lr is best
        finish(make("free", lr), [final], test=0.0)
    assert contenders.tuning_lrs(spec, "free", tmp_path) == [0.0009, 0.003, 0.01, 0.03]
    assert contenders.chosen_lr(spec, "free", tmp_path) is None  # until the added lr has run
    assert any(r["labels"] == {"contender": "free", "lr": "0.0009", "seed": "0"}
               for r in contenders.planned_runs(spec, tmp_path)[0])
    finish(make("free", 0.0009), [0.48], test=0.0)
    assert contenders.chosen_lr(spec, "free", tmp_path) == 0.003  # and no further step: the rule applies once
    assert contenders.tuning_lrs(spec, "free", tmp_path) == [0.0009, 0.003, 0.01, 0.03]


def test_the_report_gives_tuning_results_seeds_steps_to_target_and_the_anytime_figure(tmp_path):
    spec = contenders.load(spec_file(tmp_path))
    make = lambda name, lr, seed="0", budget=1.0: contenders.make_run(spec, name, lr, seed, budget, tmp_path)  # noqa: E731
    finish(make("one_cycle", 0.001), [0.3, 0.4, 0.5, 0.6], test=0.58)
    finish(make("one_cycle", 0.003), [0.4, 0.5, 0.6, 0.7], test=0.68)
    finish(make("one_cycle", 0.01), [0.4, 0.5, 0.6, 0.65], test=0.6)
    finish(make("one_cycle", 0.003, "1"), [0.3, 0.45, 0.55, 0.66], test=0.64)
    finish(make("one_cycle", 0.003, "0", 0.5), [0.35, 0.6], test=0.6)
    finish(make("free", 0.003), [0.4, 0.5, 0.55, 0.58], test=0.55)
    finish(make("free", 0.01), [0.5, 0.55, 0.6, 0.62], test=0.6)
    finish(make("free", 0.03), [0.2, 0.3, 0.35, 0.4], test=0.4)
    finish(make("free", 0.01, "1"), [0.45, 0.56, 0.61, 0.63], test=0.61)
    assert contenders.planned_runs(spec, tmp_path) == (contenders.planned_runs(spec, tmp_path)[0], False)
    contenders.main([str(tmp_path / "toy.yaml"), "--report-only", "--root", str(tmp_path)])
    report = (tmp_path / "docs" / "results" / "toy.md").read_text()
    assert "| one_cycle | 0.001: 60.00, 0.003: 70.00, 0.01: 65.00 | 0.003 |" in report
    assert "| one_cycle | 0.003 | 66.00 ± 2.83 (n=2) | 19, 29 |" in report  # steps to val/acc ≥ 0.5, per seed
    assert "| free | 0.01 | 60.50 ± 0.71 (n=2) | 9, 19 |" in report
    assert "| 2 | 60.00 | 55.00 |" in report and "| 4 | 70.00 | 62.00 |" in report  # budgets vs the one free run
    assert (tmp_path / "docs" / "results" / "toy" / "anytime.png").stat().st_size > 0


def test_slurm_array_lists_the_tuning_runs_first(tmp_path, capsys):
    contenders.main([str(spec_file(tmp_path)), "--slurm", "--root", str(tmp_path)])
    lines = (tmp_path / "runs" / "studies" / "toy" / "slurm_array.txt").read_text().splitlines()
    assert len(lines) == 6 and all("seed=0" in line.split()[0] for line in lines)
    assert "run --slurm again afterwards" in capsys.readouterr().out
