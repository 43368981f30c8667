"""Thin LightningCLI: `python cli.py fit|validate|test --config configs/<task>.yaml [--config ...]`.

What it adds to LightningCLI, and why:
- model and data are chosen by `class_path` in YAML (one CLI for every task);
- the datamodule's `num_classes` is linked into the net, so no YAML repeats it;
- loggers without their own `save_dir` write under `--trainer.default_root_dir`, like checkpoints;
- the resolved config is saved next to the checkpoints and logged to every logger (W&B shows it in full);
- mixed precision defaults to bf16 on a GPU that supports it and to fp32 elsewhere, so one config runs on both.
"""
from __future__ import annotations

import os

import torch
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback


def default_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the run's log dir (beside `checkpoints/`) and sends the whole config to the loggers."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config} if type(logger).__name__ == "CSVLogger" else self.config.as_dict())


class SuperconvergenceCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.net.init_args.num_classes", apply_on="instantiate")
        parser.set_defaults({"trainer.precision": default_precision()})

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        root = config.trainer.default_root_dir or os.getcwd()
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and init_args.get("save_dir") in (None, ".", ""):
                init_args["save_dir"] = root


def main(args: list[str] | None = None) -> SuperconvergenceCLI:
    return SuperconvergenceCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggedSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
