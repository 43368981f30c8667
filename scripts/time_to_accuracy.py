"""Time to a target accuracy, and final accuracy, of finished runs, read from their local metrics.csv.

Why: airbench-style speed claims are "wall time until val/acc first reaches the target". `lightning_modules.
ElapsedTime` logs `time/elapsed_s` next to each epoch's `val/acc`; this reads both (and the final `test/acc`,
`test/acc_tta`) from each run's `csv/version_*/metrics.csv` and writes a markdown table, atomically.

    python scripts/time_to_accuracy.py --target 0.94 --out docs/results/gpu_bench.md RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python scripts/time_to_accuracy.py`
    sys.path.insert(0, str(REPO))

from scripts import study_report  # noqa: E402
from scripts.study import write_atomic  # noqa: E402


def summarize(run_dir: Path, target: float) -> dict:
    """Epochs run, first epoch (1-based) and seconds at which val/acc ≥ target, final metrics, total time."""
    rows = study_report.read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no csv/version_*/metrics.csv; pass a run's --trainer.default_root_dir.")
    accuracy = study_report.per_epoch(rows, "val/acc")
    elapsed = study_report.per_epoch(rows, "time/elapsed_s")
    if len(elapsed) != len(accuracy):
        raise ValueError(f"{run_dir}: {len(accuracy)} epochs of val/acc but {len(elapsed)} of time/elapsed_s; "
                         "add the lightning_modules.callbacks.ElapsedTime callback to the run's trainer.callbacks.")
    reached = next((epoch for epoch, acc in enumerate(accuracy) if acc >= target), None)
    return {"run": str(run_dir), "epochs": len(accuracy), "target": target,
            "epoch_reached": None if reached is None else reached + 1,
            "seconds_to_target": None if reached is None else elapsed[reached],
            "total_seconds": elapsed[-1] if elapsed else None, "val_acc": accuracy[-1] if accuracy else None,
            "test_acc": study_report.final(rows, "test/acc"), "test_acc_tta": study_report.final(rows, "test/acc_tta")}


def _fmt(value, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def markdown(summaries: list[dict], title: str, context: str = "") -> str:
    target = summaries[0]["target"] if summaries else 0.94
    lines = [f"# {title}", ""] + ([context, ""] if context else []) + [
        f"| run | epochs | reached {target:.0%} at epoch | time to {target:.0%} | total time | final val/acc | "
        "test/acc | test/acc_tta |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        minutes = None if s["seconds_to_target"] is None else s["seconds_to_target"] / 60
        lines.append(f"| `{s['run']}` | {s['epochs']} | {_fmt(s['epoch_reached'], 'd')} | "
                     f"{_fmt(minutes, '.2f')} min | {_fmt(s['total_seconds'] and s['total_seconds'] / 60, '.2f')} min | "
                     f"{_fmt(s['val_acc'], '.4f')} | {_fmt(s['test_acc'], '.4f')} | {_fmt(s['test_acc_tta'], '.4f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (their --trainer.default_root_dir)")
    parser.add_argument("--target", type=float, default=0.94, help="val/acc to reach (default 0.94)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print only)")
    parser.add_argument("--title", default="Time to accuracy")
    parser.add_argument("--context", default="", help="a paragraph under the title: machine, settings")
    args = parser.parse_args(argv)
    text = markdown([summarize(run, args.target) for run in args.runs], args.title, args.context)
    if args.out:
        write_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
