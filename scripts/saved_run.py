"""A trained model's run, rebuilt from the checkpoint `cli.py fit` wrote, for the scripts that use the model:
whether the checkpoint is a language model's (`scripts/lm.py`, `scripts/tune_cache.py`), and the `cli.py`
arguments that rebuild its whole run — model, data and loggers — from the checkpoint alone (`tune_cache.py`).

Why: `lm.py` and `export.py` take a checkpoint alone, since it carries its model's settings; a script that needs
the data and the loggers too must rebuild the run, and asking the user to repeat the task's configs and every
override of the fit is a chance to get one wrong. The checkpoint's run record (`cli_resume.RUN_KEY`) holds the
resolved config of its `fit`, every override included, and a checkpoint written before runs were recorded has
the same in the `config.yaml` beside its `checkpoints/` folder.

A saved config is a dump of `cli.py fit`: it holds `fit`'s own arguments (`ckpt_path`, `weights_only`), which a
`cli.py` parsed without a subcommand (`cli.main(..., run=False)`) refuses ("ckpt_path is not an argument"), and
its W&B logger holds the fit's run id, which would make the script log into the fit's W&B run. Both are taken out
(`as_script_config`), whether the config comes from the record or is given as `--config RUN/config.yaml`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

FIT_ONLY_KEYS = ("ckpt_path", "weights_only")  # Trainer.fit's own arguments, saved at the top of a fit's config
WANDB_RUN_KEYS = ("id", "version", "resume_step")  # which W&B run the fit logged to (cli_loggers.prepare_loggers)
DATA_KEY = "WikiText2DataModule"  # where a LanguageModel checkpoint keeps its vocabulary


def language_model_problem(path: str | os.PathLike, checkpoint: dict) -> str | None:
    """Why the checkpoint at `path` is not a language model's written by `cli.py fit`, as one sentence; None if it is.
    Its model class names what it is instead; its vocabulary (the datamodule's state) is what text needs."""
    saved_class = str((checkpoint.get("hyper_parameters") or {}).get("_class_path") or "")
    if saved_class and not saved_class.endswith(".LanguageModel"):
        return (f"ckpt_path {path} was saved by {saved_class.rsplit('.', 1)[-1]}, not by a LanguageModel: pass a "
                "language model's checkpoint (cli.py fit --config wikitext2_lstm.yaml or wikitext2_qrnn.yaml).")
    if "vocab" not in (checkpoint.get(DATA_KEY) or {}):
        return (f"ckpt_path {path} holds no vocabulary: pass a language-model checkpoint written by cli.py fit with "
                f"a {DATA_KEY}.")
    return None


def as_script_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved `cli.py fit` config as `cli.main(..., run=False)` takes it (see the module docstring): without
    `fit`'s own arguments, and with its W&B logger starting a run of its own. `config` is changed in place."""
    for key in FIT_ONLY_KEYS:
        config.pop(key, None)
    loggers = (config.get("trainer") or {}).get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger"):
            for key in WANDB_RUN_KEYS:
                (logger.get("init_args") or {}).pop(key, None)
    return config


def read_saved_config(value: str) -> dict[str, Any] | None:
    """The config in the file `value` names if it is a run's saved config (it holds `fit`'s own arguments); None
    for a task config, a name under configs/, inline YAML, or a file that does not parse — `cli.py` reads those
    itself and names the file in its sentence if it is broken."""
    try:
        content = yaml.safe_load(Path(value).read_text(encoding="utf-8")) if Path(value).is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) and any(key in content for key in FIT_ONLY_KEYS) else None


def inline(config: dict[str, Any]) -> str:
    """A config as an inline `--config` value (`cli.py` takes a value starting with `{` as the config itself)."""
    return json.dumps(config, default=str)


def accept_saved_configs(cli_args: list[str]) -> list[str]:
    """`cli_args` with every `--config` that names a run's saved `config.yaml` given inline as the script takes it
    (`as_script_config`); any other argument unchanged."""
    accepted = []
    for index, arg in enumerate(cli_args):
        if index > 0 and cli_args[index - 1] == "--config" and (saved := read_saved_config(arg)) is not None:
            arg = inline(as_script_config(saved))
        elif arg.startswith("--config=") and (saved := read_saved_config(arg[len("--config="):])) is not None:
            arg = "--config=" + inline(as_script_config(saved))
        accepted.append(arg)
    return accepted


def names_a_config(cli_args: list[str]) -> bool:
    return any(arg == "--config" or arg.startswith("--config=") for arg in cli_args)


def run_arguments(ckpt_path: str, cli_args: list[str]) -> list[str]:
    """`cli.py`'s arguments (without a subcommand) for the run that wrote the checkpoint: the configs and overrides
    given, a run's `config.yaml` among them made acceptable; or, with no `--config`, the checkpoint's own config
    followed by the overrides given (`--data.data_dir` where the data has moved). Stops in one sentence when the
    checkpoint is unreadable, not a language model's, or carries no config to rebuild its run from."""
    from cli_checks import read_checkpoint, stop
    from cli_resume import saved_config_text

    if names_a_config(cli_args):
        return accept_saved_configs(cli_args)
    if ckpt_path == "last":
        stop("--ckpt_path last needs the task's --config to know which experiment's newest last.ckpt to take: pass "
             "the checkpoint's path (RUN/checkpoints/last.ckpt) instead, or the configs with it.")
    checkpoint, problem = read_checkpoint(ckpt_path, weights_only=True)
    if problem or (problem := language_model_problem(ckpt_path, checkpoint)):
        stop(problem)
    text = saved_config_text(ckpt_path, checkpoint)
    if text is None:
        stop(f"ckpt_path {ckpt_path} carries no run record and has no config.yaml beside its checkpoints/ folder, so "
             "its run cannot be rebuilt from it: pass the configs and overrides it was trained with too, as to "
             "cli.py (--config configs/wikitext2_lstm.yaml ...).")
    return ["--config", inline(as_script_config(yaml.safe_load(text))), *cli_args]

