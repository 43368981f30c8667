"""Thin LightningCLI: `python cli.py fit|validate|test --config configs/<task>.yaml [--config ...]`.

What it adds to LightningCLI, and why:
- model and data are chosen by `class_path` in YAML (one CLI for every task);
- the datamodule's `num_classes` is linked into the net, so no YAML repeats it;
- loggers write under `--trainer.default_root_dir`; W&B runs are tagged with the optimizer and fall back to offline
  when online logging cannot start (`cli_loggers.py`);
- the resolved config is saved next to the checkpoints and logged to every logger (W&B shows it in full), and every
  checkpoint carries its run's record (config, run id, world size: `cli_resume.py`);
- `fit` ends with a test of the final weights (the seed's reported number), unless `--test_after_fit false`;
- mixed precision defaults to bf16 on a GPU that supports it and to fp32 elsewhere, so one config runs on both;
- `--ckpt_path last` resumes the newest `last.ckpt` under `--trainer.default_root_dir` *of this experiment*
  (Lightning alone looks only in the new run's own version folder and silently starts from scratch; the newest
  alone may be another experiment's); a resumed `fit` continues the same W&B run and CSV metrics.csv, and a run
  length its 1cycle cannot cover stops before anything is written;
- `--model.init_args.init_weights PATH` starts a new run — fresh optimizer, fresh 1cycle — from a checkpoint's net
  weights, recorded as the run's parent;
- bad input stops the run before anything is written, with one sentence naming the field or file and the fix
  (`cli_checks.py`): typos and unknown classes, bad optimizer/1cycle values, a run length the 1cycle cannot
  use, an unwritable run folder, an invalid W&B project, missing or broken data, a checkpoint that cannot be read
  or belongs to another model. Checkpoints load with `weights_only=True` unless `--weights_only false`. A disk
  that fills up while a checkpoint is written stops the run in one sentence too, the previous checkpoint intact.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from cli_checks import (ExplainingArgumentParser, explain_config_error, model_class_problem, read_checkpoint,
                        run_config_problem, state_problem, stop)
from cli_configs import resolve_configs
from cli_loggers import current_wandb_run, finish_own_wandb_run, prepare_loggers
from cli_lr_find import SuperconvergenceTrainer, report
from cli_resume import (LoggedSaveConfigCallback, ResumeProblem, choose_last, explicit_resume_warning, flatten,
                        new_run_id, read_run, run_length_problem)
from datamodules.resumable_loader import POSITION_KEY  # a new run starts its data at the beginning
from lightning_modules.callbacks.checkpoint_io import CheckpointSpaceError
from lightning_modules.callbacks.prediction_csv import PredictionCSV

# Startup noise this project can silence without hiding a real problem (README "A quiet start"): Lightning's
# advertisement for its hosted logger at every Trainer, and deprecation notices raised inside Lightning itself
# (its own pytree helper, its own use of jsonargparse's `skip_none`), which no config of ours can act on.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda entry: "litlogger" not in entry.getMessage())
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"\s*skip_none parameter was deprecated")


def default_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


class SuperconvergenceCLI(LightningCLI):
    def __init__(self, *args: Any, user_args: list[str] | None = None, **kwargs: Any) -> None:
        self.argv = list(user_args or [])  # as the user typed them, for lr_find's `fit` line
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's, and `lr_find`: the learning-rate range test (`cli_lr_find.py`)."""
        return {**LightningCLI.subcommands(), "lr_find": {"model", "datamodule"}}

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """As Lightning's, without its warning that `args` and `sys.argv` are both given: `main` has already chosen
        (`args` when called from Python, `sys.argv` only when it is None), so a script or test calling `main([...])`
        from a command line of its own is not the mistake Lightning warns about."""
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    checkpoint: dict | None = None  # ckpt_path, read once (tensors memory-mapped) for the checks before the run
    resumed: dict | None = None  # the run record of the checkpoint a `fit` resumes (cli_resume.read_run)
    run: dict[str, Any] = {}  # this fit's run id and parent, for the checkpoints and the loggers

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
        parser.add_argument("--predictions", type=str | None, default=None,
                            help="`predict`: the CSV to write (default: <trainer.default_root_dir>/predictions.csv).")
        parser.add_argument("--top_k", type=int, default=5, help="`predict`: classes per image in the CSV.")
        parser.add_argument("--predict_tta", type=bool, default=False,
                            help="`predict`: average the model's tta augmented views with the plain image.")

    def flat_config(self, config: Namespace) -> dict[str, Any]:
        """The subcommand's config as config.yaml would hold it, flattened (`cli_resume.flatten`)."""
        dumped = self._parser(self.config.get("subcommand")).dump(config, skip_unset=False, skip_validation=True)
        return flatten(yaml.safe_load(dumped))

    def read_matching_checkpoint(self, path: str, config: Namespace) -> dict:
        """The checkpoint at `path`, or a stop if it is unreadable or was saved by another model or net."""
        checkpoint, problem = read_checkpoint(path, weights_only=config.get("weights_only") is not False)
        if problem or (problem := model_class_problem(path, checkpoint, config.get("model"))):
            stop(problem)
        return checkpoint

    def _parse_ckpt_path(self) -> None:
        """Lightning merges the checkpoint's hyperparameters into the config here, before any hook of ours: read
        the checkpoint first, so an unreadable one, or one of another model, is refused in one sentence, and say
        which of the config's values the checkpoint's replace."""
        config = self.config.get(self.config.get("subcommand") or "", None)
        path = config.get("ckpt_path") if config else None
        if path and Path(path).is_file():
            self.checkpoint = self.read_matching_checkpoint(path, config)
            if self.config.subcommand == "fit" and (warning := explicit_resume_warning(read_run(path),
                                                                                        self.flat_config(config))):
                warnings.warn(warning, stacklevel=2)
            if config.get("weights_only") is False:
                return  # Lightning would read the hyperparameters with weights_only=True; keep the config's own
        super()._parse_ckpt_path()

    def resume_source(self, config: Namespace, root: str) -> str | None:
        """The checkpoint this `fit` continues: `--ckpt_path` (`last` resolved to this experiment's), or the
        `hpc_ckpt_N.ckpt` Lightning restores by itself after a SLURM requeue."""
        path = config.get("ckpt_path")
        if path == "last":
            try:
                config.ckpt_path = path = choose_last(root, self.flat_config(config))["path"]
            except ResumeProblem as problem:
                stop(str(problem), problem)
        if path in (None, "hpc"):
            hpc = sorted(Path(root).glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
            path = str(hpc[-1]) if hpc else None
        return path if path and Path(path).is_file() else None

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config)
        root = config.trainer.default_root_dir or os.getcwd()
        if problem := run_config_problem(config, self.subcommand, root):
            stop(problem)
        if self.subcommand == "fit":
            source = self.resume_source(config, root)
            self.resumed = read_run(source) if source else None
            # A W&B sweep agent names the run itself (WANDB_RUN_ID): keep its id rather than give another.
            self.run = {"id": (self.resumed or {}).get("id") or os.environ.get("WANDB_RUN_ID") or new_run_id()}
            if self.resumed and self.resumed.get("parent"):
                self.run["parent"] = self.resumed["parent"]
        elif config.get("ckpt_path") == "last":
            try:
                config.ckpt_path = choose_last(root, self.flat_config(config))["path"]
            except ResumeProblem as problem:
                stop(str(problem), problem)
        if self.subcommand and "weights_only" in config and config.get("weights_only") is None:
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
        prepare_loggers(config, root, self.run.get("id"), self.resumed)

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
            loaders = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                       "predict": ("predict",)}.get(stage, ())
            try:
                if stage != "predict":  # prediction reads images of one's own, never downloads the dataset
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
        if stage == "fit" and self.resumed and (problem := run_length_problem(
                self.resumed, self.flat_config(config), self.trainer.world_size)):
            stop(problem)
        if stage == "fit" and not self.resumed and (weights := getattr(self.model, "init_weights", None)):
            self.check_init_weights(weights, config)

    def check_init_weights(self, path: str, config: Namespace) -> None:
        """`init_weights` must be a readable checkpoint of this net (and, for text, of this vocabulary)."""
        checkpoint = self.read_matching_checkpoint(path, config)
        data_key = type(self.datamodule).__qualname__
        if isinstance(checkpoint.get(data_key), dict):  # check the data's state (vocabulary), but not its position:
            checkpoint = {**checkpoint, data_key: {k: v for k, v in checkpoint[data_key].items() if k != POSITION_KEY}}
        if problem := state_problem(path, checkpoint, self.model, self.datamodule):
            stop(problem.replace("ckpt_path", "model.init_args.init_weights", 1))
        parent = read_run(path)
        self.run["parent"] = {"checkpoint": str(Path(path).resolve()), "run_id": parent["id"],
                              "global_step": parent["global_step"]}

    def before_fit(self) -> None:
        self.check_data_and_checkpoint("fit")
        for callback in self.trainer.callbacks:
            if isinstance(callback, LoggedSaveConfigCallback):
                callback.run = dict(self.run)

    def fit(self, **kwargs: Any) -> None:
        try:
            self.trainer.fit(**kwargs)
        except CheckpointSpaceError as error:
            stop(str(error), error, status=1)

    def before_lr_find(self) -> None:
        self.check_data_and_checkpoint("fit")

    def lr_find(self, **kwargs: Any) -> None:
        """The range test; then its suggestion and rule, the curve as PNG and CSV in the run folder (and on W&B),
        and the `fit` command with the suggested lr."""
        try:
            result = self.trainer.lr_find(**kwargs)
        except ValueError as error:
            stop(str(error), error)
        report(result, Path(self.trainer.log_dir or self.trainer.default_root_dir) / "lr_find",
               self.trainer.loggers, self.argv)
        self.lr_find_result = result

    def before_predict(self) -> None:
        self.check_data_and_checkpoint("predict")

    def predict(self, **kwargs: Any) -> None:
        """Images of one's own (`--data.predict_dir`) → one CSV of top-k classes (callbacks/prediction_csv.py)."""
        config = self.config[self.subcommand]
        path = Path(config.get("predictions") or Path(self.trainer.default_root_dir) / "predictions.csv")
        try:
            writer = PredictionCSV(path, config.get("top_k"))
        except ValueError as error:
            stop(str(error), error)
        self.model.predict_tta = bool(config.get("predict_tta"))
        self.trainer.callbacks.append(writer)
        try:
            self.trainer.predict(**{**kwargs, "return_predictions": True})
        except ValueError as error:  # an unreadable image, named
            stop(str(error).splitlines()[0], error)
        print(f"predict: {writer.rows} images, top {config.get('top_k')} classes each → {path}", flush=True)

    def before_validate(self) -> None:
        self.check_data_and_checkpoint("validate")

    def before_test(self) -> None:
        self.check_data_and_checkpoint("test")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit") and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule)


def main(args: list[str] | None = None, run: bool = True) -> SuperconvergenceCLI:
    """Build the CLI; `run=False` parses and instantiates only (tests drive the trainer themselves)."""
    from_command_line = args is None
    given = sys.argv[1:] if from_command_line else list(args)
    args = resolve_configs(given)
    if from_command_line:  # DDP's child processes re-run sys.argv: give them the resolved config paths
        sys.argv[1:] = args
    started_before, failed = current_wandb_run(), True
    try:
        built = SuperconvergenceCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=ExplainingArgumentParser,
            save_config_callback=LoggedSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_class=SuperconvergenceTrainer,
            args=args,
            run=run,
            user_args=given,
        )
        failed = False
        return built
    finally:
        if run:
            finish_own_wandb_run(started_before, exit_code=1 if failed else 0)


if __name__ == "__main__":
    main()
