"""The project's W&B workspace, as code: a section per task, the schedules, the sweeps; saved to a W&B project.

    python scripts/wandb_dashboard.py --entity ME --project superconvergence             # save it as a new view
    python scripts/wandb_dashboard.py --entity ME --project superconvergence --dry-run   # print it, touch nothing

Why: every user of this project builds the same dashboard by hand (val/acc per optimizer, the lr and beta1
schedules, test/acc with and without TTA, perplexity with and without the cache). This builds it with
`wandb-workspaces` (W&B's own library for workspaces as code) from the names the runs really log —
`lightning_modules/metric_names.py`, the list the LightningModules log under, never retyped here — so a panel
cannot ask for a metric no run has.

What it holds:
- a section per task (CIFAR-10, Stanford Cars, WikiText-2): each training curve against the step, the validation
  metric against wall time (`time/elapsed_s`: time to accuracy), and the test metrics as a bar chart (test/acc
  with and without TTA; test/ppl with and without the neural cache);
- a "Schedules" section: learning rate, beta1 and weight decay as Lightning's LearningRateMonitor logs them, by
  regular expression, so every optimizer and every parameter group (fine-tuning stages, Muon's two sides) shows;
- a "Sweeps" section: a parallel-coordinates panel per sweep in `configs/sweeps/`, its parameters (as the runs'
  config entries) against its metric;
- runs grouped by the optimizer's tag (`optimizer_tag`, a config entry every run of ours has) and the W&B group
  (the task, or the study's name), so seeds of one setting fold into one line with its spread.

Saving needs `wandb login` (or WANDB_API_KEY) and the network; `--dry-run` needs neither.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python scripts/wandb_dashboard.py`
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from lightning_modules import metric_names as names  # noqa: E402

STEP = "trainer/global_step"  # the x axis Lightning's WandbLogger logs every metric against
TASKS = {  # section: (training curves, the validation metric to plot against wall time, test metrics)
    "CIFAR-10": (names.IMAGE_CURVES, names.VAL_ACC, names.IMAGE_TESTS),
    "Stanford Cars": (names.IMAGE_CURVES + names.STAGED_CURVES, names.VAL_ACC, names.IMAGE_TESTS),
    "WikiText-2": (names.LANGUAGE_CURVES, names.VAL_PPL, names.LANGUAGE_TESTS),
}
SWEEP_KEYS_NOT_IN_CONFIG = {"config": names.OPTIMIZER_TAG}  # a `--config FILE` sweep parameter: its optimizer's tag


def sweep_columns(sweep_file: Path) -> tuple[list[str], str]:
    """A sweep file's parameters as the config entries a run of it records, and the metric it optimizes."""
    sweep = yaml.safe_load(sweep_file.read_text())
    params = [SWEEP_KEYS_NOT_IN_CONFIG.get(name, name) for name in sweep["parameters"]]
    return params, sweep["metric"]["name"]


def build(entity: str, project: str, name: str = "superconvergence") -> object:
    """The workspace (a `wandb_workspaces.workspaces.Workspace`), built offline."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = []
    for task, (curves, val_metric, tests) in TASKS.items():
        panels = [wr.LinePlot(title=f"{task}: {metric}", x=STEP, y=[metric]) for metric in curves]
        panels.append(wr.LinePlot(title=f"{task}: {val_metric} against wall time", x=names.ELAPSED_S, y=[val_metric]))
        panels.append(wr.BarPlot(title=f"{task}: test", metrics=list(tests)))
        sections.append(ws.Section(name=task, panels=panels, is_open=True))
    sections.append(ws.Section(name="Schedules", is_open=True, panels=[
        wr.LinePlot(title=title, x=STEP, metric_regex=regex) for title, regex in names.SCHEDULES.items()]))
    sweep_panels = []
    for sweep_file in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        params, metric = sweep_columns(sweep_file)
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(param)) for param in params]
        columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric)))
        sweep_panels.append(wr.ParallelCoordinatesPlot(title=f"sweep {sweep_file.stem}", columns=columns))
    sections.append(ws.Section(name="Sweeps", panels=sweep_panels, is_open=False))
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections,
                        settings=ws.WorkspaceSettings(x_axis=STEP),
                        runset_settings=ws.RunsetSettings(groupby=[expr.Config(names.OPTIMIZER_TAG),
                                                                   expr.Metric("Group")]))


def panel_metrics(workspace) -> list[dict]:
    """Every panel's metrics, flat: {section, panel, kind, name}, kind being "history" (a logged metric),
    "history_regex", "summary" (a metric's last value) or "config" (a config entry)."""
    import wandb_workspaces.reports.v2 as wr

    found = []
    for section in workspace.sections:
        for panel in section.panels:
            def add(kind: str, metric_name: str) -> None:
                found.append({"section": section.name, "panel": panel.title, "kind": kind, "name": metric_name})

            if isinstance(panel, wr.LinePlot):
                add("history", panel.x)
                if panel.metric_regex:
                    add("history_regex", panel.metric_regex)
                for metric in panel.y or []:
                    add("history", metric)
            elif isinstance(panel, wr.BarPlot):
                for metric in panel.metrics:
                    add("summary", metric)
            elif isinstance(panel, wr.ParallelCoordinatesPlot):
                for column in panel.columns:
                    add("config" if isinstance(column.metric, wr.Config) else "summary", column.metric.name)
            else:
                raise TypeError(f"panel_metrics does not know {type(panel).__name__}; add it here.")
    return found


def outline(workspace) -> str:
    """What --dry-run prints: where it would save, the grouping, and every panel with its metrics."""
    lines = [f"workspace {workspace.name!r} for {workspace.entity}/{workspace.project}, runs grouped by "
             + ", ".join(f"{type(key).__name__}({key.name!r})" for key in workspace.runset_settings.groupby)]
    rows = panel_metrics(workspace)
    for section in workspace.sections:
        lines.append(f"  section {section.name}")
        for panel in section.panels:
            used = [f"{row['kind']}:{row['name']}" for row in rows
                    if row["section"] == section.name and row["panel"] == panel.title]
            lines.append(f"    {type(panel).__name__} {panel.title!r}: {', '.join(used)}")
    return "\n".join(lines)


def save(workspace) -> str:
    """Save the workspace as a new view; its URL. Stops in one sentence without a W&B API key."""
    import wandb

    try:
        wandb.Api()
    except wandb.errors.UsageError as error:
        raise SystemExit(f"scripts/wandb_dashboard.py: W&B refuses to connect ({error}): run `wandb login` (or set "
                         "WANDB_API_KEY) first, or pass --dry-run to print the workspace without saving it.")
    return workspace.save().url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entity", required=True, help="W&B user or team that owns the project")
    parser.add_argument("--project", default="superconvergence", help="W&B project (the task configs' own)")
    parser.add_argument("--name", default="superconvergence", help="the saved view's name")
    parser.add_argument("--dry-run", action="store_true", help="print the workspace; save nothing, no network")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+", args.entity):
        parser.error(f"--entity {args.entity!r} is not a W&B user or team name (letters, digits, '_', '-', '.')")
    workspace = build(args.entity, args.project, args.name)
    print(outline(workspace))
    if not args.dry_run:
        print(f"saved: {save(workspace)}")


if __name__ == "__main__":
    main()
