"""Optimizer contenders compared by one fair protocol (docs/STUDIES.md, "A fair protocol"), then reported.

    python scripts/contenders.py configs/studies/contenders_cifar.yaml              # run what is missing, report
    python scripts/contenders.py configs/studies/contenders_cifar.yaml --report-only
    python scripts/contenders.py configs/studies/contenders_cifar.yaml --slurm   # job array (scripts/slurm/fit.sbatch)

The protocol, applied alike to every contender (an optimizer with its schedule):
1. tuning: one run per lr of the contender's own grid (`lrs`, the same number for all), at the tuning seed; when
   the best of them is at an end of the grid, one more lr beyond that end (the grid's ratio), for every contender;
2. selection: the lr whose run ends with the best validation metric (`select`: a held-out part of the training
   data, never the test set) — decided by this script, before any test number is read;
3. seeds: the chosen lr again at every other seed; the report gives the test metric as mean ± std over seeds;
4. anytime: the `anytime.against` contender at its chosen lr, trained for shorter budgets (`fractions` of the full
   run, each its own complete schedule), against the per-epoch validation curve of one `anytime.contender` run.
Plus steps to target: the first optimizer step at which the validation metric reaches `target` (per seed, then
the mean), the idea of scripts/time_to_accuracy.py. Runs use study.py's machinery: one folder per run under
runs/studies/<name>/, finished runs skipped, interrupted ones resumed, several processes sharing the work by lock.

A study file:
    name: contenders_cifar
    configs: [configs/cifar.yaml, configs/cifar_cpu.yaml]
    args: [--data.init_args.val_split, "5000"]
    lr_arg: --model.init_args.optimizer.init_args.lr
    select: {metric: val/acc, mode: max}
    metrics: [test/acc]                       # the table's columns (mean ± std over seeds)
    target: 0.5                               # of select.metric, for steps to target
    seeds: ["0", "1"]                         # the first is the tuning seed
    contenders: {adamw_one_cycle: {args: [--config, configs/optim/adamw.yaml], lrs: [1.0e-3, 3.0e-3, 1.0e-2]}}
    anytime: {contender: schedule_free_adamw, against: adamw_one_cycle, fractions: [0.25, 0.5]}
    notes: "..."
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts import contenders_report, study_report  # noqa: E402
from scripts.study import claim, is_done, run_locally, write_slurm_array  # noqa: E402

REQUIRED = ("name", "configs", "lr_arg", "select", "metrics", "seeds", "contenders")


def load(path: Path) -> dict:
    spec = yaml.safe_load(path.read_text())
    missing = [key for key in REQUIRED if key not in (spec or {})]
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)}; see the format in scripts/contenders.py's docstring.")
    sizes = {name: len(c["lrs"]) for name, c in spec["contenders"].items()}
    if len(set(sizes.values())) != 1:
        raise SystemExit(f"{path}: every contender needs the same number of lrs (a fair protocol); got {sizes}.")
    if spec["select"].get("mode") not in ("min", "max"):
        raise SystemExit(f"{path}: select.mode must be min or max.")
    spec.setdefault("args", [])
    spec.setdefault("anytime", None)
    spec.setdefault("max_epochs", None)
    return spec


def make_run(spec: dict, name: str, lr: float, seed: str, budget: float = 1.0, root: Path = REPO) -> dict:
    """One run: its labels, folder and `cli.py fit` arguments (study.py's run format)."""
    labels = {"contender": name, "lr": f"{lr:g}", "seed": seed, **({"budget": f"{budget:g}"} if budget != 1 else {})}
    args = [arg for config in spec["configs"] for arg in ("--config", config)] + [str(a) for a in spec["args"]]
    args += [str(a) for a in spec["contenders"][name]["args"]] + [spec["lr_arg"], f"{lr:g}"]
    if budget != 1:
        args += ["--trainer.max_epochs", str(max(1, round(spec["max_epochs"] * budget)))]
    args += ["--seed_everything", seed, "--trainer.logger.init_args.group", spec["name"]]
    run_dir = root / "runs" / "studies" / spec["name"] / ",".join(f"{k}={v}" for k, v in labels.items())
    return {"labels": labels, "dir": run_dir, "args": args + ["--trainer.default_root_dir", str(run_dir)]}


def final_value(run: dict, metric: str) -> float | None:
    rows = study_report.read_metrics(run["dir"]) if is_done(run) else []
    value = study_report.final(rows, metric) if rows else None
    return None if value is None or math.isnan(value) else value


def tuning(spec: dict, name: str, root: Path = REPO) -> dict[float, float | None]:
    """The lrs `name` is tuned over, in order, each with its run's final validation metric (None until it has
    finished): its grid, plus one step beyond the grid's end (the grid's own ratio) when the grid's best lr is at
    that end — the same rule for every contender, applied once, so a best value at the edge of a range chosen
    before any run is not mistaken for the best lr."""
    lrs = sorted(float(lr) for lr in spec["contenders"][name]["lrs"])
    scores = _scores(spec, name, lrs, root)
    if len(lrs) < 2 or any(score is None for score in scores.values()):
        return scores
    best = _best(spec, scores)
    if best == lrs[0]:
        added = float(f"{lrs[0] ** 2 / lrs[1]:.3g}")
        return {**_scores(spec, name, [added], root), **scores}
    if best == lrs[-1]:
        added = float(f"{lrs[-1] ** 2 / lrs[-2]:.3g}")
        return {**scores, **_scores(spec, name, [added], root)}
    return scores


def tuning_lrs(spec: dict, name: str, root: Path = REPO) -> list[float]:
    """The lrs of `tuning`, in order."""
    return list(tuning(spec, name, root))


def _scores(spec: dict, name: str, lrs: list[float], root: Path) -> dict[float, float | None]:
    metric = spec["select"]["metric"]
    return {lr: final_value(make_run(spec, name, lr, spec["seeds"][0], root=root), metric) for lr in lrs}


def _best(spec: dict, scores: dict[float, float | None]) -> float:
    return (max if spec["select"]["mode"] == "max" else min)(scores, key=scores.get)


def _chosen(spec: dict, scores: dict[float, float | None]) -> float | None:
    return None if any(score is None for score in scores.values()) else _best(spec, scores)


def chosen_lr(spec: dict, name: str, root: Path = REPO) -> float | None:
    """The lr the protocol picks for `name` (best final validation metric at the tuning seed, over `tuning`), or
    None until every tuning run has finished."""
    return _chosen(spec, tuning(spec, name, root))


def planned_runs(spec: dict, root: Path = REPO) -> tuple[list[dict], bool]:
    """The runs that can be started now, in protocol order, and whether more will follow once tuning ends."""
    tuned = {name: tuning(spec, name, root) for name in spec["contenders"]}  # each run's metrics read once
    runs = [make_run(spec, name, lr, spec["seeds"][0], root=root) for name, scores in tuned.items() for lr in scores]
    waiting = False
    anytime = spec.get("anytime")
    order = ([anytime["against"]] if anytime else []) + list(spec["contenders"])
    for name in dict.fromkeys(order):
        lr = _chosen(spec, tuned[name])
        if lr is None:
            waiting = True
            continue
        if anytime and name == anytime["against"]:
            runs += [make_run(spec, name, lr, spec["seeds"][0], fraction, root) for fraction in anytime["fractions"]]
        runs += [make_run(spec, name, lr, seed, root=root) for seed in spec["seeds"][1:]]
    return runs, waiting


def run_all(spec: dict, python: str, root: Path = REPO) -> None:
    """Run every pending run this process can take; wait while other processes hold the runs it needs."""
    while True:
        runs, waiting = planned_runs(spec, root)
        pending = [run for run in runs if not is_done(run)]
        started = False
        for run in pending:
            with claim(run) as mine:
                if mine and not is_done(run):
                    run_locally(run, python)
                    started = True
        if not pending and not waiting:
            return
        if not started:
            time.sleep(15)  # another process holds what is left, or tuning runs it is finishing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--report-only", action="store_true", help="only write the report from finished runs")
    parser.add_argument("--slurm", action="store_true", help="write a SLURM job-array file of the runs that can start "
                        "now (tuning first; run it again once tuning has finished for the seeds and budgets)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs cli.py")
    parser.add_argument("--root", type=Path, default=REPO, help="where runs/studies/ and docs/results/ go")
    options = parser.parse_args(argv)
    spec = load(options.study)
    if spec["anytime"] and spec["max_epochs"] is None:
        raise SystemExit(f"{options.study}: anytime needs max_epochs (the full budget the fractions refer to).")
    root = options.root.resolve()
    if options.slurm:
        runs, waiting = planned_runs(spec, root)
        write_slurm_array(spec, runs, root)
        if waiting:
            print("[contenders] tuning is not finished: run --slurm again afterwards for the seeds and budgets.")
        return
    if not options.report_only:
        run_all(spec, options.python, root)
    contenders_report.write(spec, root, tuning, chosen_lr, make_run, final_value)


if __name__ == "__main__":
    main()
