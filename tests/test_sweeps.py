"""Every parameter combination a W&B sweep file can produce parses in the CLI (`wandb agent` would run it).

Seeds change nothing the parser or the model's construction looks at, so each seed value is parsed at least once,
in rotation, rather than with every combination of the others: every combination of the other parameters parses,
and every seed value, with no combination's settings left unchecked (48 parses would take about 20 s; 16 do).
"""
from __future__ import annotations

import itertools

import pytest
import yaml

import cli
from tests.conftest import REPO, TINY_WRN_ARGS

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def wandb_args(name: str, value) -> str:
    """How `wandb agent` renders `${args}`: --name=value with Python's str()."""
    return f"--{name}={value}"


def combinations(sweep: dict) -> list[list[str]]:
    """Every combination `wandb agent` would run, as its arguments."""
    names = list(sweep["parameters"])
    grids = [sweep["parameters"][n]["values"] for n in names]
    return [[wandb_args(n, v) for n, v in zip(names, combo)] for combo in itertools.product(*grids)]


def parsed_combinations(sweep: dict) -> list[list[str]]:
    """Every combination of the parameters other than the seed, each with a seed value in rotation, so every seed
    value appears too."""
    others = {name: spec for name, spec in sweep["parameters"].items() if name != "seed_everything"}
    seeds = sweep["parameters"].get("seed_everything", {}).get("values", [])
    combos = combinations({"parameters": others})
    needed = max(len(combos), len(seeds))
    return [combos[i % len(combos)] + ([wandb_args("seed_everything", seeds[i % len(seeds)])] if seeds else [])
            for i in range(needed)]


def command_args(sweep: dict) -> list[str]:
    """The fixed part of the sweep's command after `cli.py fit` (without ${env}, python, ${program}, ${args})."""
    command = [c for c in sweep["command"] if not c.startswith("${") and c != "python"]
    assert command[0] == "fit", "sweeps run `cli.py fit`"
    return command[1:]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_combination_parses(path, cifar_dir, tmp_path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "cli.py" and sweep["method"] == "grid"
    assert len(combinations(sweep)) == {"cifar_optimizers.yaml": 36, "contenders_cifar.yaml": 12}[path.name]
    combos = parsed_combinations(sweep)
    seeds = sweep["parameters"]["seed_everything"]["values"]
    assert {a for args in combos for a in args} == {a for args in combinations(sweep) for a in args}  # every value
    assert len(combos) == len(combinations(sweep)) // len(seeds)
    for args in combos:
        run = cli.main([*command_args(sweep), *args, *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir),
                        "--data.download", "false", "--trainer.default_root_dir", str(tmp_path)], run=False)
        settings = dict(a[2:].split("=", 1) for a in args)
        assert run.trainer.loggers[1]._offline is False  # the sweep logs online
        assert run.config["seed_everything"] == int(settings["seed_everything"])
        if "config" in settings:  # a contender: its optim config composed after the task config, tagged as such
            composed = yaml.safe_load((REPO / settings["config"]).read_text())["model"]["init_args"]["optimizer"]
            assert run.model.hparams["optimizer"]["class_path"] == composed["class_path"]
            assert run.model.hparams["optimizer"]["init_args"]["lr"] == composed["init_args"]["lr"]
            continue
        optimizer = run.model.optimizer_factory([__import__("torch").nn.Parameter(__import__("torch").zeros(1))])
        assert type(optimizer).__name__ == settings["model.init_args.optimizer.class_path"].rsplit(".", 1)[1]
        assert optimizer.defaults["amsgrad"] == (settings["model.init_args.optimizer.init_args.amsgrad"] == "True")
        assert optimizer.defaults["weight_decay"] == float(settings["model.init_args.optimizer.init_args.weight_decay"])
