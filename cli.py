"""Thin LightningCLI: `python cli.py fit|validate|test --config configs/<task>.yaml [--config ...]`.

What it adds to LightningCLI, and why:
- model and data are chosen by `class_path` in YAML (one CLI for every task);
- the datamodule's `num_classes` is linked into the net, so no YAML repeats it;
- loggers without their own `save_dir` write under `--trainer.default_root_dir`, like checkpoints;
- W&B runs are tagged with the optimizer and its weight-decay mode (adamw/adam/sgd, amsgrad, decoupled-wd/l2-wd);
- a W&B logger asked to log online falls back to offline, with a warning, when online logging cannot start;
- the resolved config is saved next to the checkpoints and logged to every logger (W&B shows it in full);
- `fit` ends with a test of the final weights (the seed's reported number), unless `--test_after_fit false`;
- mixed precision defaults to bf16 on a GPU that supports it and to fp32 elsewhere, so one config runs on both;
- `--ckpt_path last` resumes from the newest `last.ckpt` under `--trainer.default_root_dir` (Lightning alone
  looks only in the new run's own version folder, finds nothing and silently starts from scratch);
- bad input stops the run before anything is written, with one sentence naming the field or file and the fix
  (`cli_checks.py`): typos and unknown classes, bad optimizer/1cycle values, a run length the 1cycle cannot
  use, an unwritable run folder, an invalid W&B project, missing or broken data, a checkpoint that cannot be read
  or belongs to another model. Checkpoints load with `weights_only=True` unless `--weights_only false`.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import torch
from jsonargparse import Namespace
from jsonargparse._common import debug_mode_active
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cli_checks import explain_config_error, model_class_problem, read_checkpoint, run_config_problem, state_problem


def optimizer_tags(optimizer: Namespace | None) -> list[str]:
    """W&B tags naming the optimizer and its weight-decay mode, so dashboards can group runs without edits."""
    if optimizer is None or not hasattr(optimizer, "class_path"):
        return []
    name = optimizer.class_path.rsplit(".", 1)[-1].lower()
    init_args = optimizer.get("init_args") or Namespace()
    tags = [name]
    if init_args.get("amsgrad"):
        tags.append("amsgrad")
    if init_args.get("weight_decay"):
        tags.append("decoupled-wd" if name == "adamw" else "l2-wd")
    return tags


def default_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def newest_last_checkpoint(root: str | os.PathLike) -> str:
    """The most recently written `last.ckpt` under `root` (any logger version), or a clear error."""
    candidates = sorted(Path(root).glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under trainer.default_root_dir={root}; "
                                "pass the checkpoint's path, or drop --ckpt_path to start a new run.")
    return str(candidates[-1])


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


class ExplainingArgumentParser(LightningArgumentParser):
    """Reports a bad config as one sentence (field, problem, fix) and exits with status 2, nothing written.

    `JSONARGPARSE_DEBUG=1` brings back jsonargparse's full report and the traceback.
    """

    def option_names(self) -> list[str]:
        names = []
        for action in self._actions:
            names += action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                names += [n for sub in action.choices.values() for n in ExplainingArgumentParser.option_names(sub)]
        return names

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)
        stop(explain_config_error(message, self.option_names()))


def stop(sentence: str, error: Exception | None = None) -> NoReturn:
    """Ends the run on bad input: the sentence on stderr, exit status 2 (`JSONARGPARSE_DEBUG=1`: the traceback)."""
    if error is not None and debug_mode_active():
        raise error
    sys.stderr.write(f"cli.py: error: {sentence}\n")
    sys.exit(2)


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the run's log dir (beside `checkpoints/`) and sends the whole config to the loggers."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.config.as_dict()
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class SuperconvergenceCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Facts the data knows and the net needs; a link whose source or target the chosen classes lack is skipped.
        parser.link_arguments("data.num_classes", "model.init_args.net.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.init_args.net.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.bptt", "model.init_args.bptt", apply_on="instantiate")
        parser.set_defaults({"trainer.precision": default_precision()})
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="After `fit`, evaluate the final weights on the test split (test/acc, test/acc_tta).",
        )

    checkpoint: dict | None = None  # ckpt_path, read once (tensors memory-mapped) for the checks before the run

    def read_matching_checkpoint(self, path: str, config: Namespace) -> dict:
        """The checkpoint at `path`, or a stop if it is unreadable or was saved by another model or net."""
        checkpoint, problem = read_checkpoint(path, weights_only=config.get("weights_only") is not False)
        if problem or (problem := model_class_problem(path, checkpoint, config.get("model"))):
            stop(problem)
        return checkpoint

    def _parse_ckpt_path(self) -> None:
        """Lightning merges the checkpoint's hyperparameters into the config here, before any hook of ours: read
        the checkpoint first, so an unreadable one, or one of another model, is refused in one sentence."""
        config = self.config.get(self.config.get("subcommand") or "", None)
        path = config.get("ckpt_path") if config else None
        if path and Path(path).is_file():
            self.checkpoint = self.read_matching_checkpoint(path, config)
            if config.get("weights_only") is False:
                return  # Lightning would read the hyperparameters with weights_only=True; keep the config's own
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, OSError, RuntimeError) as error:  # the classes' own checks: data.batch_size <= 0, ...
            stop(explain_config_error(str(error), []), error)

    def check_data_and_checkpoint(self, stage: str) -> None:
        """Reads the data and the checkpoint once before `trainer.<stage>`, which creates the run's folders first.

        Only local rank 0 prepares data (downloads), as Lightning does; the datamodules keep what they read, so
        Lightning's own `setup` call costs little more (Stanford Cars re-reads its annotation files).
        """
        config = self.config[self.subcommand]
        if self.datamodule is not None and self.trainer.local_rank == 0:
            loaders = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
            try:
                self.datamodule.prepare_data()
                self.datamodule.setup(stage)
                for split in loaders:  # built, not iterated: their checks (batch size vs data size) run now
                    getattr(self.datamodule, f"{split}_dataloader")()
            except (ValueError, OSError, RuntimeError) as error:
                stop(str(error), error)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("best", "hpc") and not str(ckpt_path).startswith("registry"):
            # `last` is resolved after Lightning's _parse_ckpt_path, so that checkpoint is read here
            checkpoint = self.checkpoint or self.read_matching_checkpoint(ckpt_path, config)
            self.checkpoint = None  # Lightning loads it again itself; let the mapping go
            if problem := state_problem(ckpt_path, checkpoint, self.model, self.datamodule):
                stop(problem)

    def before_fit(self) -> None:
        self.check_data_and_checkpoint("fit")

    def before_validate(self) -> None:
        self.check_data_and_checkpoint("validate")

    def before_test(self) -> None:
        self.check_data_and_checkpoint("test")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit") and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        root = config.trainer.default_root_dir or os.getcwd()
        if problem := run_config_problem(config, self.subcommand, root):
            stop(problem)
        if config.get("ckpt_path") == "last":
            try:
                config.ckpt_path = newest_last_checkpoint(root)
            except FileNotFoundError as error:
                stop(str(error), error)
        if self.subcommand and config.get("weights_only") is None:
            config.weights_only = True  # tensors and plain values only: a checkpoint cannot run code when loaded
        # Let the flags win over callbacks in the YAML that would otherwise refuse to start.
        unwanted = []
        if config.trainer.enable_progress_bar is False:
            unwanted.append("ProgressBar")
        if config.trainer.logger is False:
            unwanted.append("LearningRateMonitor")
        config.trainer.callbacks = [
            cb for cb in config.trainer.callbacks or [] if not any(cb.class_path.endswith(u) for u in unwanted)
        ]
        loggers = config.trainer.logger
        tags = optimizer_tags(config.model.init_args.get("optimizer") if config.get("model") else None)
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is None:
                continue
            if init_args.get("save_dir") in (None, ".", ""):
                init_args["save_dir"] = root
            if logger.class_path.endswith("WandbLogger"):
                init_args["tags"] = list(dict.fromkeys([*(init_args.get("tags") or []), *tags]))
                if reason := wandb_offline_reason(init_args):
                    warnings.warn(f"trainer.logger WandbLogger: online logging cannot start ({reason}); this run logs "
                                  f"offline under {init_args['save_dir']}/wandb instead, upload it later with "
                                  "`wandb sync <that folder>/offline-run-*`.", stacklevel=2)
                    init_args["offline"], init_args["mode"] = True, "offline"  # mode: wandb.login has read the env


def main(args: list[str] | None = None, run: bool = True) -> SuperconvergenceCLI:
    """Build the CLI; `run=False` parses and instantiates only (tests drive the trainer themselves)."""
    return SuperconvergenceCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=ExplainingArgumentParser,
        save_config_callback=LoggedSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
