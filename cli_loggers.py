"""How `cli.py` sets up the loggers before they are built: where they write, what W&B is told, and how a resumed
run's loggers continue that run.

- A logger without its own `save_dir` (or with ".") writes under `--trainer.default_root_dir`, like checkpoints.
- W&B runs are tagged with the optimizer, its weight-decay mode and the schedule (adamw/nadamw/muon/..., amsgrad,
  decoupled-wd/l2-wd, one-cycle/cosine/wsd/constant), and the optimizer's and the schedule's tags are also config
  entries (`optimizer_tag`, `schedule_tag`), so dashboards group runs without edits (W&B groups by a config
  value, not by one of a run's tags).
- A W&B logger asked to log online falls back to offline, with a warning, when online logging cannot start.
- `fit` gives the W&B run the run's id (new, or the resumed checkpoint's); resuming sets the CSV logger's version
  to the checkpoint's and both loggers' `resume_step` (see `lightning_modules/loggers/resumable.py`).
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lightning_modules.metric_names import OPTIMIZER_TAG, SCHEDULE_TAG
from optim.schedules import DEFAULT_DECAY_FRACTION


OPTIMIZER_TAGS = {"adamwschedulefree": "schedule-free-adamw", "muonwithauxadamw": "muon"}
DECOUPLED = ("adamw", "nadamw", "schedule-free-adamw", "muon")
SCHEDULE_TAGS = {"OneCycleLR": "one-cycle", "RNNOneCycleLR": "rnn-one-cycle", "WarmupCosineLR": "cosine",
                 "WarmupStableDecayLR": "wsd"}


def optimizer_tags(optimizer: Namespace | None, lr_scheduler: Namespace | None = None) -> list[str]:
    """W&B tags naming the optimizer, its weight-decay mode and the schedule, so dashboards can group runs without
    edits: e.g. [adamw, decoupled-wd, one-cycle], [nadamw, decoupled-wd, cosine], [schedule-free-adamw, ..., constant]."""
    if optimizer is None or not hasattr(optimizer, "class_path"):
        return []
    name = optimizer.class_path.rsplit(".", 1)[-1].lower()
    init_args = optimizer.get("init_args") or Namespace()
    name = "nadamw" if name == "nadam" and init_args.get("decoupled_weight_decay") else OPTIMIZER_TAGS.get(name, name)
    tags = [name]
    if init_args.get("amsgrad"):
        tags.append("amsgrad")
    if init_args.get("weight_decay") or init_args.get("adamw_weight_decay"):
        tags.append("decoupled-wd" if name in DECOUPLED else "l2-wd")
    if lr_scheduler is not None and hasattr(lr_scheduler, "class_path"):
        scheduler = lr_scheduler.class_path.rsplit(".", 1)[-1]
        schedule = SCHEDULE_TAGS.get(scheduler, scheduler.lower())
        decay = (lr_scheduler.get("init_args") or Namespace()).get("decay_fraction", DEFAULT_DECAY_FRACTION)
        if schedule == "wsd" and not decay:
            schedule = "constant"
        tags.append(schedule)
    return tags


def tag_labels(tags: list[str], lr_scheduler: Namespace | None = None) -> dict[str, str]:
    """The optimizer's tag and the schedule's tag (the first and the last of `optimizer_tags(optimizer,
    lr_scheduler)`) as W&B config entries, e.g. {"optimizer_tag": "adamw", "schedule_tag": "one-cycle"}; no
    schedule, no `schedule_tag`."""
    labels = {OPTIMIZER_TAG: tags[0]} if tags else {}
    if tags and lr_scheduler is not None and hasattr(lr_scheduler, "class_path"):
        labels[SCHEDULE_TAG] = tags[-1]
    return labels


def wandb_offline_reason(init_args: Namespace) -> str | None:
    """Why this WandbLogger, set to log online, cannot (no API key, no network, host unreachable, key refused).

    Asked before the logger is built, on rank 0 only (the others never start a run), because `wandb.init` itself
    only gives up after retrying for its `init_timeout` (90 s), and then fails inside `trainer.fit`;
    `wandb.login(verify=True)` asks the server once and fails within `WANDB_HTTP_TIMEOUT` (10 s). It never prompts
    and writes no key.
    """
    offline_mode = os.environ.get("WANDB_MODE", "online") in ("offline", "dryrun", "disabled")
    if init_args.get("offline") or offline_mode or rank_zero_only.rank != 0:
        return None
    import wandb  # here, not at the top: only online runs pay for it

    if wandb.run is not None:
        return None  # a run already exists in this process: the logger attaches to it
    try:
        return None if wandb.login(verify=True, prompt=False) else "no API key: set WANDB_API_KEY or run `wandb login`"
    except wandb.errors.Error as error:  # AuthenticationError (key refused, host unreachable), UsageError
        return str(error).splitlines()[0]


def prepare_loggers(config: Namespace, root: str, run_id: str | None, resumed: dict[str, Any] | None) -> None:
    """Fill in the loggers' init args in `config` (see the module docstring); `run_id` only for `fit`."""
    loggers = config.trainer.logger
    model_args = config.model.init_args if config.get("model") else Namespace()
    tags = optimizer_tags(model_args.get("optimizer"), model_args.get("lr_scheduler"))
    labels = tag_labels(tags, model_args.get("lr_scheduler"))
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            continue
        if init_args.get("save_dir") in (None, ".", ""):
            init_args["save_dir"] = root
        resumable = logger.class_path.rsplit(".", 1)[-1].startswith("Resumable")
        if logger.class_path.endswith("CSVLogger") and resumed and resumable and resumed["csv_version"] is not None:
            init_args["version"], init_args["resume_step"] = resumed["csv_version"], resumed["global_step"]
        if not logger.class_path.endswith("WandbLogger"):
            continue
        init_args["tags"] = list(dict.fromkeys([*(init_args.get("tags") or []), *tags]))
        if labels:
            init_args["config"] = {**(init_args.get("config") or {}), **labels}
        if run_id and not init_args.get("id") and not init_args.get("version"):
            init_args["id"] = run_id
            if resumed and resumable:
                init_args["resume_step"] = resumed["global_step"]
        if reason := wandb_offline_reason(init_args):
            warnings.warn(f"trainer.logger WandbLogger: online logging cannot start ({reason}); this run logs "
                          f"offline under {init_args['save_dir']}/wandb instead, upload it later with "
                          "`wandb sync <that folder>/offline-run-*`.", stacklevel=3)
            init_args["offline"], init_args["mode"] = True, "offline"  # mode: wandb.login has read the env


def current_wandb_run() -> object | None:
    """The active W&B run of this process, without importing wandb for runs that never use it."""
    wandb = sys.modules.get("wandb")
    return None if wandb is None else wandb.run


def finish_own_wandb_run(started_before: object | None, exit_code: int = 0) -> None:
    """End the W&B run this command started. A process exit does that by itself, but a caller that runs several
    commands in one process (a study driven in-process, a notebook) would otherwise see Lightning's WandbLogger
    reuse the open run, so every later command would log into the first one's history and folder."""
    run_now = current_wandb_run()
    if run_now is not None and run_now is not started_before:
        offline_file = Path(run_now.settings.sync_file) if run_now.offline else None
        run_now.finish(exit_code=exit_code)
        if offline_file is not None:
            wait_until_written(offline_file)


def wait_until_written(run_file: Path, timeout_s: float = 60.0) -> bool:
    """Wait until an offline run's file holds its exit record, i.e. W&B has written the whole run to disk.

    Why: `wandb.Run.finish()` only *publishes* the close to W&B's service process and returns; the service writes
    the file's last buffered block afterwards. A caller reading the run right away (a study driven in-process, a
    notebook, our tests) could find it empty — measured here: 1 read in 15 straight after `finish()` saw no records.
    Returns whether it was written; after `timeout_s` it warns once and returns False (a full disk, a killed service).
    """
    from lightning_modules.loggers.resumable import WANDB_HEADER, read_wandb_records

    deadline = time.monotonic() + timeout_s
    while True:
        started = run_file.is_file() and run_file.stat().st_size >= WANDB_HEADER
        last = read_wandb_records(run_file, last_blocks=2) if started else []  # the exit record is written last
        if any(record.WhichOneof("record_type") == "exit" for record in last):
            return True
        if time.monotonic() > deadline:
            warnings.warn(f"{run_file}: W&B has not finished writing this offline run after {timeout_s:.0f} s; it "
                          "may end before its last records (check the disk, then `wandb sync` it).", stacklevel=2)
            return False
        time.sleep(0.05)
