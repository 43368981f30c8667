"""Run a study — a base config and a grid of CLI arguments — and write its results table and plots.

    python scripts/study.py configs/studies/cifar_cpu.yaml            # run what is missing, then report
    python scripts/study.py configs/studies/cifar.yaml --slurm        # write a SLURM job-array file instead
    python scripts/study.py configs/studies/cifar.yaml --report-only  # tables and plots from finished runs

A study file:
    name: cifar_cpu
    configs: [configs/cifar.yaml, configs/cifar_cpu.yaml]   # composed in order
    args: [--trainer.max_epochs, "8"]                         # fixed extra CLI arguments
    grid:                                                     # axis → label → CLI arguments
      optimizer: {adamw: [--config, configs/optim/adamw.yaml], adam_l2: [--config, configs/optim/adam_l2.yaml]}
      seed: {"0": [--seed_everything, "0"], "1": [--seed_everything, "1"]}
    average_over: seed                                        # the table's mean ± std runs over this axis
    metrics: [test/acc, test/acc_tta]                         # the table's columns
    curve: val/acc                                            # plotted per epoch
    notes: "..."                                              # optional: what the numbers say, put under the table
    heatmap: {metric: test/acc, rows: lr, columns: decay}     # optional: a map per part of `columns` before ":"
    tune_cache: {windows: [2000, 3785], thetas: [...]}        # optional (language models): scripts/tune_cache.py
                                                              # on each run's last.ckpt; its test/ppl_cache_tuned
                                                              # and val/ppl_cache_tuned can then be metrics

Each combination runs `cli.py fit` in its own process under `runs/studies/<name>/<axis=label,...>/`; a run that
finished (its `done.json` exists) is skipped, so an interrupted study resumes where it stopped. Several study.py
processes may work on one study at once (one per core, or per machine sharing the folder): each takes a run by an
OS lock on `<run>/.study.lock`, which dies with its process, and the others pass that run by. The report goes
to `docs/results/<name>.md` with PNGs in `docs/results/<name>/`, written atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts import study_report  # noqa: E402

REQUIRED = ("name", "configs", "grid", "metrics")


def load_study(path: Path) -> dict:
    study = yaml.safe_load(path.read_text())
    missing = [key for key in REQUIRED if key not in (study or {})]
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)}; see the format in scripts/study.py's docstring.")
    study.setdefault("args", [])
    study.setdefault("average_over", "seed")
    study.setdefault("curve", None)
    study.setdefault("tune_cache", None)
    if study["average_over"] not in study["grid"]:
        raise SystemExit(f"{path}: average_over '{study['average_over']}' is not an axis of the grid "
                         f"({', '.join(study['grid'])}); name one of them.")
    return study


def combinations(study: dict, root: Path = REPO) -> list[dict]:
    """Every grid point: its labels, its run directory and its CLI arguments."""
    axes = list(study["grid"])
    runs = []
    for labels in itertools.product(*(list(study["grid"][a]) for a in axes)):
        chosen = dict(zip(axes, (str(label) for label in labels)))
        run_dir = root / "runs" / "studies" / study["name"] / ",".join(f"{a}={chosen[a]}" for a in axes)
        args = [arg for config in study["configs"] for arg in ("--config", config)] + [str(a) for a in study["args"]]
        # The averaged axis (the seed) goes last whatever the grid's order: a task config brought by another axis
        # (configs/wikitext2_qrnn.yaml sets seed_everything) would otherwise set it back.
        for axis, label in sorted(zip(axes, labels), key=lambda pair: pair[0] == study["average_over"]):
            args += [str(a) for a in study["grid"][axis][label]]
        # W&B groups the study's runs (the W&B logger is the last logger of every task config).
        args += ["--trainer.logger.init_args.group", study["name"]]
        runs.append({"labels": chosen, "dir": run_dir, "args": args + ["--trainer.default_root_dir", str(run_dir)]})
    return runs


def is_done(run: dict) -> bool:
    return (run["dir"] / "done.json").is_file()


@contextlib.contextmanager
def claim(run: dict):
    """Yield True if this process holds the run's lock (then it runs it), False if another study process does.
    flock, not a marker file: a killed process releases it, so a crashed run is never left looking taken."""
    run["dir"].mkdir(parents=True, exist_ok=True)
    with open(run["dir"] / ".study.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def run_locally(run: dict, python: str) -> None:
    print(f"[study] running {run['dir']}", flush=True)
    resume = ["--ckpt_path", "last"] if list(run["dir"].glob("**/last.ckpt")) else []
    done = subprocess.run([python, "cli.py", "fit", *run["args"], *resume], cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"[study] {run['dir']} failed (exit {done.returncode}); fix it and run the study again "
                         "(finished runs are skipped, this one resumes from its last.ckpt).")
    write_atomic(run["dir"] / "done.json", json.dumps({"args": run["args"]}))


def tuning_results(run_dir: Path) -> Path | None:
    found = sorted(run_dir.glob("csv/version_*/cache_tuning/results.json"))
    return found[-1] if found else None


def tune_locally(run: dict, study: dict, python: str) -> None:
    """`scripts/tune_cache.py` on the run's newest last.ckpt with the study's grid, unless it has run already."""
    if tuning_results(run["dir"]) is not None:
        return
    checkpoint = max(run["dir"].glob("**/last.ckpt"), key=lambda path: path.stat().st_mtime)
    grid = [arg for key, values in study["tune_cache"].items() for arg in (f"--{key}", *map(str, values))]
    print(f"[study] tuning the cache of {run['dir']}", flush=True)
    done = subprocess.run([python, "scripts/tune_cache.py", "--ckpt_path", str(checkpoint), *grid, *run["args"]],
                          cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"[study] tuning the cache of {run['dir']} failed (exit {done.returncode}).")


def tuned_metrics(run_dir: Path) -> dict[str, float]:
    """What tune_cache.py found for a run, as metrics: the tuned test and validation perplexities."""
    path = tuning_results(run_dir)
    if path is None:
        return {}
    results = json.loads(path.read_text())
    return {"test/ppl_cache_tuned": results["test"]["tuned_cache"]["ppl"],
            "val/ppl_cache_tuned": results["best"]["val_ppl"],
            "cache/theta": results["best"]["theta"], "cache/lambda": results["best"]["lambda"],
            "cache/window": results["best"]["window"]}


def write_slurm_array(study: dict, runs: list[dict], root: Path = REPO) -> Path:
    """One line per pending run for `scripts/slurm/fit.sbatch --study`: its run directory, then its arguments."""
    pending = [run for run in runs if not is_done(run)]
    path = root / "runs" / "studies" / study["name"] / "slurm_array.txt"
    # The template passes the first config itself; each line carries the rest (run dir first).
    write_atomic(path, "".join(f"{run['dir']} {' '.join(run['args'][2:])}\n" for run in pending))
    first = study["configs"][0]
    print(f"[study] {len(pending)} runs: mkdir -p runs/slurm && sbatch --array 0-{len(pending) - 1} "
          f"scripts/slurm/fit.sbatch {first} --study {path}")
    return path


def report(study: dict, runs: list[dict], root: Path = REPO) -> Path:
    """docs/results/<name>.md: the table (mean ± std over `average_over`) and the plots."""
    results = []
    for run in runs:
        rows = study_report.read_metrics(run["dir"])
        if rows:
            tuned = tuned_metrics(run["dir"])
            results.append({"labels": run["labels"], "rows": rows, "tuned": tuned,
                            "final": {m: tuned.get(m, study_report.final(rows, m)) for m in study["metrics"]},
                            "curve": study_report.per_epoch(rows, study["curve"]) if study["curve"] else []})
    group_axes = [a for a in study["grid"] if a != study["average_over"]]
    out_dir = root / "docs" / "results" / study["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Study: {study['name']}", "",
             f"Generated by `python scripts/study.py` from {len(results)} of {len(runs)} runs' local metric files; "
             f"mean ± std over `{study['average_over']}`.", "",
             f"Configs: {', '.join(f'`{c}`' for c in study['configs'])}; extra arguments: `{' '.join(map(str, study['args']))}`.",
             "", study_report.table(results, group_axes, study["metrics"]), "", study_report.wall_time(results), ""]
    if study.get("tune_cache") and any(r["tuned"] for r in results):
        lines += ["Cache values chosen on validation per run (θ, λ, window; one entry per "
                  f"{study['average_over']}):", "", study_report.tuned_table(results, group_axes), ""]
    if study.get("notes"):  # a person's reading of the numbers, kept in the study file
        lines += [str(study["notes"]).strip(), ""]
    if results and study["curve"]:
        study_report.plot_curves(results, group_axes, study["curve"], out_dir / "curves.png")
        lines += [f"![{study['curve']} per epoch]({study['name']}/curves.png)", ""]
    if results and study.get("heatmap"):
        spec = study["heatmap"]
        best = study_report.plot_heatmaps(results, spec["rows"], spec["columns"], spec["metric"], out_dir / "heatmaps.png")
        lines += [f"![{spec['metric']} over {spec['rows']} × {spec['columns']}, the best cell of each map outlined]"
                  f"({study['name']}/heatmaps.png)", "", "Best cell per map (mean over "
                  f"{study['average_over']}): " + "; ".join(f"{panel}: {spec['rows']} {row}, {spec['columns']} "
                                                             f"{column} → {value:.4f}" for panel, (row, column, value)
                                                             in best.items()) + ".", ""]
    if results and study_report.plot_schedule(results[0]["rows"], out_dir / "schedule.png"):
        lines += [f"![lr and beta1 per step of one run]({study['name']}/schedule.png)", ""]
    path = root / "docs" / "results" / f"{study['name']}.md"
    write_atomic(path, "\n".join(lines))
    print(f"[study] wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--slurm", action="store_true", help="write a SLURM job-array file instead of running")
    parser.add_argument("--report-only", action="store_true", help="only write the table and plots")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs cli.py")
    parser.add_argument("--root", type=Path, default=REPO, help="where runs/studies/ and docs/results/ go")
    options = parser.parse_args(argv)
    study = load_study(options.study)
    runs = combinations(study, options.root.resolve())
    if options.slurm:
        write_slurm_array(study, runs, options.root.resolve())
        return
    if not options.report_only:
        for run in runs:
            with claim(run) as mine:
                if not mine:
                    print(f"[study] another study process is running {run['dir']}; passing it by")
                    continue
                if is_done(run):
                    print(f"[study] done already: {run['dir']}")
                else:
                    run_locally(run, options.python)
                if study.get("tune_cache"):
                    tune_locally(run, study, options.python)
    report(study, runs, options.root.resolve())


if __name__ == "__main__":
    main()
