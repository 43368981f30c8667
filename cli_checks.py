"""What `cli.py` checks before it builds or writes anything, and how it words a bad config: one sentence that
names the field or file, what is wrong, and the fix.

Why a file of its own: LightningCLI and jsonargparse report a typo as a nested "Does not validate against any
of the Union subtypes" block, torch names no config field when it rejects a value, and Lightning creates the
run's folders (logger versions, the W&B offline run) before the datamodule first reads a file. `cli.py` stays the
thin CLI; this is the checking it calls.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse._common import debug_mode_active
from pytorch_lightning.cli import LightningArgumentParser

from optim.arg_checks import combination_problem, one_cycle_arg_problem, optimizer_arg_problem

_NOT_INIT_ARGS = ("self", "params", "optimizer", "args", "kwargs")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6) or [c for c in choices if c.startswith(word)]
    return f"; did you mean {match[0]}?" if match else ""


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _init_arg_names(class_path: str | None) -> list[str]:
    """The arguments `class_path` accepts, to suggest the one a typo meant (empty when it cannot be imported)."""
    if not class_path:
        return []
    try:
        signature = inspect.signature(_import(class_path))
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [name for name in signature.parameters if name not in _NOT_INIT_ARGS]


def explain_config_error(message: str, option_names: Iterable[str]) -> str:
    """jsonargparse's report of a bad config, reduced to one sentence with the field as the user writes it.

    `option_names` are the parser's options (`--trainer.max_epochs`, ...), to suggest what a typo meant. A report
    of a kind not recognised here is returned as jsonargparse wrote it.
    """
    option_names = list(option_names)
    if match := re.search(r"unrecognized arguments: (--?[^\s=]+)", message):
        return f"{match[1]} is not an option{_did_you_mean(match[1], option_names)} (`cli.py fit --help` lists them)."
    if match := re.search(r"(Group|Subcommand) '([^']+)' does not accept option '([^']+)'", message):
        kind, group, key = match.groups()
        field = f"{group}.{key}" if kind == "Group" else key
        siblings = [name[2:] for name in option_names if kind == "Subcommand" or name.startswith(f"--{group}.")]
        return f"{field} in the config is not an option{_did_you_mean(field, siblings)}"
    keys: list[str] = []
    class_path = None
    for line in message.splitlines():
        if match := re.search(r'Parser key "([^"]+)"', line):
            keys.append(match[1])
        if match := re.search(r"class_path[ =]'([^']+)'", line):
            class_path = match[1]
        field = ".init_args.".join(keys)
        if match := re.search(r"Option '([^']+)' is not accepted", line):
            names = _init_arg_names(class_path)
            hint = _did_you_mean(match[1], names) or (f"; it takes: {', '.join(names)}." if names else ".")
            return f"{field}.init_args.{match[1]} is not an argument of {class_path}{hint}"
        if match := re.search(r"module '([^']+)' has no attribute '([^']+)'", line):
            module, name = match.groups()
            classes = [f"{module}.{n}" for n in dir(importlib.import_module(module)) if n[:1].isupper()]
            hint = _did_you_mean(f"{module}.{name}", classes) or "; check the spelling."
            return f"{field}.class_path {class_path} does not exist: {module} has no {name}{hint}"
        if match := re.search(r"No module named '([^']+)'", line):
            return (f"{field}.class_path {class_path} cannot be imported: there is no module named {match[1]}; "
                    "check the spelling, or install the package that provides it.")
    return _reason_inside(message) or _wrong_type(message, keys) or message


_REPORT_FRAME = ("Subtypes:", "Errors:", "Given value", "Parser key", "Problem with given class_path", "Does not validate",
                 "Expected a ", "Type ", "Got value")


def _reason_inside(message: str) -> str | None:
    """The sentence a class raised while jsonargparse built it (e.g. a datamodule's "... is not UTF-8 text"),
    which jsonargparse nests in its "Does not validate against any of the Union subtypes" report."""
    if "Does not validate against any of the Union subtypes" not in message:
        return None
    lines = (line.strip().removeprefix("- ") for line in message.splitlines())
    return next((line for line in lines if line and not line.startswith(_REPORT_FRAME)), None)


def _wrong_type(message: str, keys: list[str]) -> str | None:
    """A value of the wrong type (`--trainer.max_epochs abc`): the field, the value and the types it accepts."""
    given = re.findall(r"Given value: (.*)", message)
    if nested := re.search(r"NestedArg\(key='([^']+)', val='([^']*)'\)", message):
        field, value = f"{keys[0]}.init_args.{nested[1]}" if keys else nested[1], nested[2]
    elif keys and given:
        field, value = ".init_args.".join(keys), given[-1]
    else:
        return None
    types = [t for t in dict.fromkeys(re.findall(r"Expected a <class '([^']+)'>", message)) if t != "NoneType"]
    expected = f" (expected {' or '.join(types)})" if types else ""
    return f"{field} is {value!r}, not a valid value{expected}; fix it in the config or on the command line."


def _as_dict(value: Any) -> dict:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value if isinstance(value, dict) else {}


def _first_writable_problem(folder: Path) -> str | None:
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        return f"trainer.default_root_dir {folder}: {existing} is a file, not a folder; choose another folder."
    try:
        with tempfile.TemporaryFile(dir=existing):
            return None
    except OSError as error:
        return (f"trainer.default_root_dir {folder} cannot be written ({error.strerror} in {existing}): choose a "
                "folder you can write to with --trainer.default_root_dir DIR.")


def _wandb_project_problem(project: Any) -> str | None:
    """W&B's own rule (wandb.Settings.validate_project), checked before W&B creates its offline run folder."""
    import wandb  # here: only configs with a WandbLogger pay for the import

    try:
        wandb.Settings(project=project)
    except wandb.errors.UsageError as error:  # "Invalid project name 'a/b': cannot contain characters ..."
        return (f"trainer.logger WandbLogger init_args.project: {error}; use letters, digits, '-', '_' and '.' "
                "(at most 128).")
    return None


def _training_length_problem(trainer: Any) -> str | None:
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if max_steps is not None and (max_steps == 0 or max_steps < -1):
        return f"trainer.max_steps is {max_steps}; use a positive number of steps, or -1 to let max_epochs decide."
    if max_epochs is not None and (max_epochs == 0 or max_epochs < -1):
        return f"trainer.max_epochs is {max_epochs}; train for at least 1 epoch (the seed: 30 for CIFAR-10)."
    if max_epochs == -1 and (max_steps is None or max_steps == -1):
        return ("trainer.max_epochs is -1 (endless) and trainer.max_steps is not set; the 1cycle schedule needs a "
                "finite length: set --trainer.max_epochs N or --trainer.max_steps N.")
    return None


def run_config_problem(config: Any, subcommand: str, root: str | os.PathLike) -> str | None:
    """The first problem in a parsed (not yet instantiated) config, as one sentence; None when it is fine."""
    model_args = _as_dict(config.get("model")).get("init_args") or {}
    for name, check in (("optimizer", optimizer_arg_problem), ("lr_scheduler", one_cycle_arg_problem)):
        part = model_args.get(name)
        if isinstance(part, dict) and (problem := check(part.get("init_args") or {}, f"model.init_args.{name}.init_args")):
            return problem
    if problem := combination_problem(_as_dict(model_args.get("optimizer")), _as_dict(model_args.get("lr_scheduler"))):
        return problem
    if subcommand == "fit" and (problem := _training_length_problem(config.trainer)):
        return problem
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
    for logger in loggers:
        if getattr(logger, "class_path", "").endswith("WandbLogger") and "project" in (logger.init_args or {}):
            if problem := _wandb_project_problem(logger.init_args["project"]):
                return problem
    return _first_writable_problem(Path(root).absolute())


def read_checkpoint(path: str | os.PathLike, weights_only: bool) -> tuple[dict | None, str | None]:
    """The checkpoint at `path` (tensors memory-mapped, so a large one costs no copy), or why it cannot be used."""
    if not Path(path).is_file():
        return None, (f"ckpt_path {path} does not exist: pass the path of a .ckpt file, or `last` for the newest "
                      "last.ckpt under trainer.default_root_dir.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except pickle.UnpicklingError as error:
        if str(error).startswith("Weights only load failed"):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            return None, (f"ckpt_path {path} holds Python objects other than tensors and plain values"
                          f"{f' ({found[1]})' if found else ''}; load it only if you trust its source, with "
                          "--weights_only false.")
        return None, f"ckpt_path {path} cannot be read as a checkpoint ({error}): it is not a .ckpt file; pass another."
    except (RuntimeError, OSError, EOFError, ValueError, IndexError) as error:
        return None, (f"ckpt_path {path} cannot be read as a checkpoint ({str(error).splitlines()[0][:120]}): it is "
                      "truncated or not a .ckpt file; pass another, e.g. an earlier last.ckpt of the run.")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        return None, f"ckpt_path {path} has no state_dict, so it is not a Lightning checkpoint: pass one written by cli.py."
    return checkpoint, None


def _class_name(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def model_class_problem(path: str | os.PathLike, checkpoint: dict, model_config: Any) -> str | None:
    """A checkpoint saved by another model or net than the config builds (compared by class name).

    Checked before LightningCLI merges the checkpoint's hyperparameters into the config, which would otherwise
    swap in the other model and fail later in a way that names neither.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    wanted = _as_dict(model_config)
    pairs = [("model", saved.get("_class_path"), wanted.get("class_path")),
             ("net", _as_dict(saved.get("net")).get("class_path"),
              _as_dict((wanted.get("init_args") or {}).get("net")).get("class_path"))]
    for what, was, now in pairs:
        if was and now and _class_name(was) != _class_name(now):
            return (f"ckpt_path {path} was saved by a {what} {_class_name(was)}, but this config builds "
                    f"{_class_name(now)}: pass a checkpoint of this model, or run with the config it was trained "
                    "with (config.yaml beside its checkpoints/ folder).")
    return None


def state_problem(path: str | os.PathLike, checkpoint: dict, model: torch.nn.Module, datamodule: Any = None) -> str | None:
    """Whether the checkpoint's tensors fit `model` (names and shapes) and `datamodule` accepts its saved state
    (e.g. the WikiText vocabulary), as one sentence; None when they do."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in checkpoint["state_dict"].items()}
    if expected != found:
        differing = sorted(expected.keys() ^ found.keys()) or sorted(k for k in expected if expected[k] != found[k])
        return (f"ckpt_path {path} does not fit this run's model ({len(differing)} tensors differ, e.g. "
                f"{differing[0]}): pass a checkpoint of this model, or run with the config it was trained with "
                "(config.yaml beside its checkpoints/ folder).")
    data_state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
    if data_state is not None:
        try:
            datamodule.load_state_dict(data_state)  # Lightning loads it again: only a check here
        except ValueError as error:
            return f"ckpt_path {path}: {error}"
    return None


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


def stop(sentence: str, error: Exception | None = None, status: int = 2) -> NoReturn:
    """Ends the run on bad input (status 2) or on a condition it cannot go on in (status 1, e.g. a full disk): the
    sentence on stderr, no traceback (`JSONARGPARSE_DEBUG=1`: the traceback)."""
    if error is not None and debug_mode_active():
        raise error
    sys.stderr.write(f"cli.py: error: {sentence}\n")
    sys.exit(status)
