"""Resuming a run: which checkpoint belongs to this experiment, whether its 1cycle fits the run asked for, and
what the loggers need to continue the same run (`cli.py` calls these before anything is built or written); and
the callback that writes the run's record into every checkpoint (`LoggedSaveConfigCallback`).

Why: several runs often share one `--trainer.default_root_dir` (AdamW wd 0.1 beside wd 0.3 is the ordinary way to
compare). "The newest last.ckpt" may then be another experiment's: with another optimizer Lightning crashes inside
its restore, with the same one it silently continues the wrong weights. A checkpoint written by `cli.py` carries
its run's record (`RUN_KEY`: the resolved config as YAML, the run id its loggers use, the world size, the CSV
version), so a resume can be matched to the config being run, and the run can keep its W&B run and CSV file.

Keys of the config that say which experiment a run is ("identity") are compared for `--ckpt_path last`; keys that
may change on resume are ignored: paths, devices and precision, loggers and callbacks, evaluation-only settings
(TTA, the neural cache), speed-only ones (`compile`, `channels_last`, `num_workers`). The run length — epochs,
steps, stages, batch size, processes, the training data's size — is checked apart: the saved 1cycle covers a
fixed number of steps, a fixed number per epoch: a run that would step past them crashes, and one with other steps
per epoch no longer lines its schedule up with its epochs.
"""
from __future__ import annotations

import datetime
import os
import secrets
import string
from pathlib import Path
from typing import Any

import torch
import yaml
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger

RUN_KEY = "superconvergence_run"  # the checkpoint entry that LoggedSaveConfigCallback writes
RUN_LENGTH_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.accumulate_grad_batches",
                   "trainer.limit_train_batches", "model.init_args.stages", "data.init_args.batch_size",
                   "data.init_args.bptt", "data.init_args.train_subset", "data.init_args.val_split")
STOP_KEYS = ("trainer.max_epochs", "trainer.max_steps")  # where the run stops: may be less than planned, not more
IDENTITY_TRAINER_KEYS = ("trainer.gradient_clip_val", "trainer.gradient_clip_algorithm")
FREE_MODEL_ARGS = ("compile", "channels_last", "tta", "tta_seed", "cache", "cache_window", "cache_theta",
                   "cache_lambda", "cache_mixing", "cache_in_validation", "init_weights")
FREE_DATA_ARGS = ("data_dir", "download", "num_workers", "eval_batch_size", "eval_bptt", "val_file", "test_file",
                  "predict_dir")
SHOWN = 3  # differing keys named per candidate, candidates named per sentence: enough to choose, still one line


def new_run_id() -> str:
    """An id for a new run, in W&B's alphabet and length, shared by its W&B run and its checkpoints."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists are values (a list of stages or callbacks compares as a whole)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_identity_key(key: str) -> bool:
    """Whether `key` (flattened) says which experiment a run is, beyond its length (see the module docstring)."""
    if key in RUN_LENGTH_KEYS:
        return False
    top, _, rest = key.partition(".")
    argument = rest.split(".")[1] if rest.startswith("init_args.") and rest.count(".") >= 1 else None
    if top == "trainer":
        return key in IDENTITY_TRAINER_KEYS
    if top == "model":
        return argument not in FREE_MODEL_ARGS
    if top == "data":
        return argument not in FREE_DATA_ARGS
    return top == "seed_everything"


def differences(saved: dict[str, Any], current: dict[str, Any], keys: list[str] | None = None) -> dict[str, tuple]:
    """{key: (saved value, current value)} over `keys` (default: the identity keys of either config)."""
    keys = keys if keys is not None else sorted(k for k in saved.keys() | current.keys() if is_identity_key(k))
    return {key: (saved.get(key), current.get(key)) for key in keys if saved.get(key) != current.get(key)}


def describe(diff: dict[str, tuple], limit: int = SHOWN) -> str:
    shown = [f"{key} {old!r} → {new!r}" for key, (old, new) in list(diff.items())[:limit]]
    return ", ".join(shown) + (f" and {len(diff) - limit} more" if len(diff) > limit else "")


def saved_config_text(path: str | os.PathLike, checkpoint: dict) -> str | None:
    """The config the checkpoint's run was trained with, as YAML: its run record's, else (a checkpoint written
    before runs were recorded) the `config.yaml` beside its `checkpoints/` folder; None when neither exists."""
    text = (checkpoint.get(RUN_KEY) or {}).get("config")
    if text is None and (beside := Path(path).parent.parent / "config.yaml").is_file():
        text = beside.read_text()
    return text


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint says of its run: id, flattened config, world size, CSV version, global step, the total
    steps of its 1cycle, its date. A checkpoint written before runs were recorded gives its config from the
    `config.yaml` beside its `checkpoints/` folder, if there is one, and no id."""
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    record = dict(checkpoint.get(RUN_KEY) or {})
    config_text = saved_config_text(path, checkpoint)
    schedulers = checkpoint.get("lr_schedulers") or [{}]
    return {"path": str(path), "id": record.get("id"), "world_size": record.get("world_size"),
            "csv_version": record.get("csv_version"), "parent": record.get("parent"),
            "config": flatten(yaml.safe_load(config_text)) if config_text else None,
            "global_step": checkpoint.get("global_step"), "total_steps": schedulers[0].get("total_steps"),
            "date": datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")}


class ResumeProblem(ValueError):
    """A resume that cannot go ahead, said in one sentence."""


def choose_last(root: str | os.PathLike, current: dict[str, Any]) -> dict[str, Any]:
    """The newest `last.ckpt` under `root` whose run was this experiment (`current`: the flattened config).

    Raises ResumeProblem when none matches, or when the matches belong to several runs (the same config trained
    twice from scratch): the sentence lists the candidates with their dates and differing keys.
    """
    paths = sorted(Path(root).glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not paths:
        raise ResumeProblem(f"--ckpt_path last: no last.ckpt under trainer.default_root_dir={root}; pass the "
                            "checkpoint's path, or drop --ckpt_path to start a new run.")
    runs = [read_run(path) for path in paths]
    matches = [run for run in runs if run["config"] is not None and not differences(run["config"], current)]
    if not matches:
        listed = "; ".join(f"{run['path']} ({run['date']}): " + (describe(differences(run["config"], current))
                                                                 if run["config"] else "no saved config")
                           for run in runs[:SHOWN])
        raise ResumeProblem(f"--ckpt_path last: none of the {len(runs)} last.ckpt under {root} was trained with "
                            f"this config — {listed}; resume one with --ckpt_path PATH (its own settings are "
                            "restored), or drop --ckpt_path to start a new run.")
    lineages = {run["id"] or run["path"] for run in matches}
    if len(lineages) > 1:
        listed = "; ".join(f"{run['path']} ({run['date']}, run {run['id']}, step {run['global_step']})"
                           for run in matches[:SHOWN])
        raise ResumeProblem(f"--ckpt_path last: {len(lineages)} runs under {root} were trained with this config — "
                            f"{listed}; choose one with --ckpt_path PATH.")
    return matches[0]


def run_length_problem(run: dict[str, Any], current: dict[str, Any], world_size: int) -> str | None:
    """Why resuming `run` with this run length would break its 1cycle, as one sentence; None if it would not.

    The saved schedule (restored with the optimizer) covers a fixed number of steps, each epoch a fixed number of
    them. So the steps per epoch must not change (batch size, processes, accumulation, the training data's size,
    the stages), and the run must not go past the schedule's end (more epochs or steps than it was planned for):
    `OneCycleLR` raises "Tried to step N times" there. A shorter run is allowed: it stops early with the schedule
    unchanged, like a time limit, and a later resume with the full length finishes it. With fine-tuning stages
    the stages fix the schedule and `trainer.max_epochs` only says where to stop, so it is not compared.
    """
    saved = run["config"]
    if saved is None:
        return None
    diff = differences(saved, current, [key for key in RUN_LENGTH_KEYS if key not in STOP_KEYS])
    if run["world_size"] is not None and run["world_size"] != world_size:
        diff["processes (devices × nodes)"] = (run["world_size"], world_size)
    epochs_then, epochs_now = saved.get("trainer.max_epochs"), current.get("trainer.max_epochs")
    if (not current.get("model.init_args.stages") and None not in (epochs_then, epochs_now)
            and (epochs_now == -1 or epochs_then != -1 and epochs_now > epochs_then)):
        diff["trainer.max_epochs"] = (epochs_then, epochs_now)
    steps_then, steps_now = saved.get("trainer.max_steps") or -1, current.get("trainer.max_steps") or -1
    if (steps_now != -1 and run["total_steps"] and steps_now > run["total_steps"]) or (
            steps_then != -1 and (steps_now == -1 or steps_now > steps_then)):
        diff["trainer.max_steps"] = (steps_then, steps_now)
    if not diff:
        return None
    covers = f"covers {run['total_steps']} steps" if run["total_steps"] else "was planned for its own run length"
    return (f"ckpt_path {run['path']}: its 1cycle {covers}, and this run changes that ({describe(diff, 9)}); "
            "to finish that schedule, resume with the checkpoint's values (fewer epochs or steps only stop early); "
            f"to train on, start a new 1cycle from its weights with --model.init_args.init_weights {run['path']} "
            "and no --ckpt_path.")


def explicit_resume_warning(run: dict[str, Any], current: dict[str, Any]) -> str | None:
    """For an explicit `--ckpt_path PATH` trained with another config: which identity keys differ, and what wins."""
    if run["config"] is None or not (diff := differences(run["config"], current)):
        return None
    return (f"ckpt_path {run['path']} was trained with another config ({describe(diff, 5)}); resuming restores its "
            "model settings, optimizer state and schedule, so model and optimizer values given now are not used "
            f"— to train with them, start a new 1cycle from its weights: --model.init_args.init_weights {run['path']}.")


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the run's log dir (beside `checkpoints/`), sends the whole config to the loggers, and
    writes the run's record into every checkpoint (`cli_resume.RUN_KEY`: what a resume needs to find this run and
    continue it — the config as YAML, the run id, the world size, the CSV version, the parent run)."""

    run: dict[str, Any] = {}  # {"id": ..., "parent": ...}, set by the CLI before `fit`

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # As config.yaml holds it: plain values (`as_dict()` would keep jsonargparse's Path objects, which the CSV
        # logger's hparams.yaml would then write as Python object tags that no safe YAML loader reads).
        config = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
        run = dict(self.run)
        csv_loggers = [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]
        if csv_loggers:  # the W&B run names its run folder: the claimed CSV version (rank 0's own)
            run.update(dir=csv_loggers[0].log_dir, csv_version=csv_loggers[0].version)
        if run:
            config["run"] = run
        for logger in trainer.loggers:
            logger.log_hyperparams(config)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        csv_versions = [logger.version for logger in trainer.loggers if isinstance(logger, CSVLogger)]
        checkpoint[RUN_KEY] = {**self.run, "config": self.parser.dump(self.config, skip_unset=False),
                               "world_size": trainer.world_size,
                               "csv_version": csv_versions[0] if csv_versions else None}
