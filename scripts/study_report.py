"""Read a study's runs from their local metric files and write the blog-style table and the plots.

Results come from each run's `csv/version_*/metrics.csv` (never from the W&B server), so a study can be
reported offline, from a cluster's shared disk, or half-finished.
"""
from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """All rows of all metrics.csv files of a run (a resumed run has several versions), in version order."""
    rows: list[dict[str, float]] = []
    files = sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in files:
        with path.open() as f:
            for row in csv.DictReader(f):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def final(rows: list[dict[str, float]], metric: str) -> float | None:
    """The last logged value of `metric` (test metrics are logged once, at the end)."""
    values = [row[metric] for row in rows if metric in row]
    return values[-1] if values else None


def wall_time(runs: list[dict]) -> str:
    """One sentence: the fitting time of the runs, from each run's `time/elapsed_s` (it survives a resume)."""
    minutes = [max(row["time/elapsed_s"] for row in run["rows"] if "time/elapsed_s" in row) / 60
               for run in runs if any("time/elapsed_s" in row for row in run["rows"])]
    if not minutes:
        return "Wall time: not logged by these runs (no `time/elapsed_s`)."
    return (f"Wall time of fitting (each run's `time/elapsed_s`; tests and start-up not included): {sum(minutes):.0f} "
            f"min for {len(minutes)} runs, median {statistics.median(minutes):.1f} min per run "
            f"(range {min(minutes):.1f}–{max(minutes):.1f}).")


def per_epoch(rows: list[dict[str, float]], metric: str) -> list[float]:
    """One value per epoch (the last logged in that epoch); a resumed run's repeated epochs keep the latest."""
    by_epoch: dict[int, float] = {}
    for row in rows:
        if metric in row and "epoch" in row:
            by_epoch[int(row["epoch"])] = row[metric]
    return [by_epoch[e] for e in sorted(by_epoch)]


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    scale = 100 if all(0 <= v <= 1 for v in values) else 1  # accuracies as percent, perplexities as they are
    return f"{scale * mean:.2f} ± {scale * std:.2f} (n={len(values)})"


def table(runs: list[dict], group_axes: list[str], metrics: list[str]) -> str:
    """Markdown table: one row per setting of `group_axes`, mean ± std over the other axes (the seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run["labels"][a] for a in group_axes)].append(run)
    lines = ["| " + " | ".join(group_axes + metrics) + " |", "|" + " --- |" * (len(group_axes) + len(metrics))]
    for key, members in groups.items():
        cells = [mean_std([r["final"][m] for r in members if r["final"].get(m) is not None]) for m in metrics]
        lines.append("| " + " | ".join([*key, *cells]) + " |")
    return "\n".join(lines)


def tuned_table(runs: list[dict], group_axes: list[str]) -> str:
    """Markdown table of the cache values tune_cache.py chose, one row per setting, each seed's in order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        if run.get("tuned"):
            groups[tuple(run["labels"][a] for a in group_axes)].append(run["tuned"])
    lines = ["| " + " | ".join(group_axes + ["θ", "λ", "window"]) + " |", "|" + " --- |" * (len(group_axes) + 3)]
    for key, tuned in groups.items():
        cells = [" / ".join(f"{t[name]:g}" for t in tuned) for name in ("cache/theta", "cache/lambda", "cache/window")]
        lines.append("| " + " | ".join([*key, *cells]) + " |")
    return "\n".join(lines)


def plot_heatmaps(runs: list[dict], rows: str, columns: str, metric: str, path: Path) -> dict[str, tuple]:
    """`metric` (mean over the other axes) as maps of `rows` × `columns`; a `columns` label "panel:value" puts the
    cell on the map of its panel (e.g. "adamw:0.1": AdamW's map, weight decay 0.1). Rows and columns are sorted
    numerically. Returns each panel's best cell (row, column, value); the best is outlined on the map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        value = run["final"].get(metric)
        panel, _, column = run["labels"][columns].rpartition(":")
        if value is not None:
            cells[panel or metric][(run["labels"][rows], column)].append(value)
    figure, axes = plt.subplots(1, len(cells), figsize=(4.6 * len(cells), 3.8), squeeze=False)
    # One colour scale for every map, so that the same colour is the same accuracy on each optimizer's map.
    all_means = [statistics.fmean(v) for panel in cells.values() for v in panel.values()]
    low, high = min(all_means), max(all_means)
    best = {}
    for axis, (panel, values) in zip(axes[0], cells.items()):
        row_labels = sorted({r for r, _ in values}, key=float)
        column_labels = sorted({c for _, c in values}, key=float)
        means = [[statistics.fmean(values[(r, c)]) if values.get((r, c)) else math.nan for c in column_labels]
                 for r in row_labels]
        image = axis.imshow(means, origin="lower", aspect="auto", cmap="viridis", vmin=low, vmax=high)
        for i, r in enumerate(row_labels):
            for j, c in enumerate(column_labels):
                if not math.isnan(means[i][j]):
                    bright = means[i][j] > low + 0.35 * (high - low)  # viridis lightens from teal on: dark text there
                    axis.text(j, i, f"{means[i][j]:.3f}", ha="center", va="center", fontsize=7,
                              color="black" if bright else "white")
        i, j = max(((i, j) for i in range(len(row_labels)) for j in range(len(column_labels))
                    if not math.isnan(means[i][j])), key=lambda ij: means[ij[0]][ij[1]])
        axis.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        best[panel] = (row_labels[i], column_labels[j], means[i][j])
        axis.set_xticks(range(len(column_labels)), column_labels, fontsize=8)
        axis.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        axis.set_xlabel(f"{columns} ({panel})" if panel != metric else columns)
        axis.set_ylabel(rows)
        axis.set_title(panel, fontsize=9)
        figure.colorbar(image, ax=axis, label=metric)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return best


def plot_curves(runs: list[dict], group_axes: list[str], metric: str, path: Path) -> None:
    """`metric` per epoch, mean over the seeds, one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[list[float]]] = defaultdict(list)
    for run in runs:
        if run["curve"]:
            groups[", ".join(run["labels"][a] for a in group_axes)].append(run["curve"])
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, curves in groups.items():
        length = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        axes.plot(range(1, length + 1), mean, marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric + " (mean over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_schedule(rows: list[dict[str, float]], path: Path) -> bool:
    """The learning rate and beta1 per step of one run, as LearningRateMonitor logged them; False if none was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr_key = next((k for r in rows for k in r
                   if k.startswith("lr-") and not k.endswith(("-momentum", "-weight_decay"))), None)
    if lr_key is None:
        return False
    points = [(r["step"], r[lr_key], r.get(lr_key + "-momentum", math.nan)) for r in rows if lr_key in r]
    figure, lr_axis = plt.subplots(figsize=(6, 3.5))
    lr_axis.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    lr_axis.set_xlabel("step")
    lr_axis.set_ylabel("lr", color="tab:blue")
    beta_axis = lr_axis.twinx()
    beta_axis.plot([p[0] for p in points], [p[2] for p in points], color="tab:orange")
    beta_axis.set_ylabel("beta1 / momentum", color="tab:orange")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
