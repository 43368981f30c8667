"""The `--config` files of a `cli.py` command: where a short name points, and whether each file can be read.

Why a file of its own: jsonargparse reads every `--config` into one string before parsing it, so a YAML mistake in
the second of three files is reported as `mapping values are not allowed in this context in "<unicode string>",
line 3, column 11` — no file named — and an empty file as `Unexpected config: ` (nothing named at all). Each file is
read here first, as the user named it, so the sentence can say which file, where, and what is wrong.

An empty (or comment-only) file is refused rather than taken as "no change": a config that says nothing is almost
always the wrong file, or one saved before it was written, and a run that silently ignores it trains with
settings the user did not mean.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from cli_checks import stop

CONFIGS = Path(__file__).resolve().parent / "configs"

# What the commonest YAML problems usually mean, in a config file's terms (PyYAML's own words say where, not why).
YAML_HINTS = {
    "mapping values are not allowed here": "usually a key indented deeper than the keys beside it, or an unquoted "
                                           "value holding ': '",
    "could not find expected ':'": "usually a line that is not `key: value`, or a key indented wrongly",
    "found character '\\t' that cannot start any token": "YAML indents with spaces, not tabs",
    "did not find expected key": "usually a key indented less or more than the keys beside it",
    "did not find expected '-' indicator": "usually a list item indented unlike the items beside it",
    "expected <block end>, but found": "usually a line indented less than the line before it but more than its "
                                       "parent key",
    "expected ',' or ']'": "a [ list ] not closed",
    "expected ',' or '}'": "a { mapping } not closed",
}


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


def config_file_problem(path: Path, given: str) -> str | None:
    """Why the config file at `path` (named `given` on the command line) cannot be used, in one sentence; None if
    it can: unreadable, not YAML (with line, column and the problem in words), empty, or not a mapping."""
    name = f"--config {given}"
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        return f"{name} is a folder, not a config file: name a .yaml file in it."
    except UnicodeDecodeError as error:
        return f"{name} is not UTF-8 text (byte {error.start}): save it as UTF-8 YAML, or name the right file."
    except OSError as error:
        return f"{name} cannot be read ({error.strerror}): check its permissions, or name another file."
    try:
        content = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        problem = error.problem or error.context or "not valid YAML"
        hint = next((hint for start, hint in YAML_HINTS.items() if problem.startswith(start)), None)
        return (f"{name} is not valid YAML: {_where(error.problem_mark)}: {problem}"
                f"{f' ({hint})' if hint else ''}; fix that line.")
    except yaml.YAMLError as error:
        return f"{name} is not valid YAML ({str(error).splitlines()[0]}); fix the file."
    if content is None:
        return (f"{name} is empty (nothing but blank lines or comments): write the settings it should change in "
                "it, or leave it off the command line.")
    if not isinstance(content, dict):
        return (f"{name} holds a {type(content).__name__} ({str(content)[:40]!r}), not settings: a config is a "
                "mapping such as `trainer: {max_epochs: 3}`; fix the file.")
    return None


def resolve_configs(args: list[str]) -> list[str]:
    """`--config cifar.yaml` (or `optim/amsgrad.yaml`) names configs/cifar.yaml when no such path exists, so the
    one-line promise `python cli.py fit --config cifar.yaml` works from anywhere; an existing path or an inline
    YAML/JSON value is left alone, and a name that matches neither stops with the configs there are. Every file
    named is read once here: a broken or empty one stops the command with its name (`config_file_problem`)."""
    resolved, value_follows = [], False
    for arg in args:
        prefix, value = ("", arg) if value_follows else ("--config=", arg[len("--config="):]) \
            if arg.startswith("--config=") else ("", None)
        value_follows = arg == "--config"
        if value is None or value.lstrip().startswith(("{", "[")):
            resolved.append(arg)
            continue
        path = Path(value)
        if not path.exists():
            path = CONFIGS / value
            if not path.is_file():
                known = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")
                               if p.parent.name not in ("studies", "sweeps"))  # those are for scripts/, not cli.py
                stop(f"--config {value} is neither a file nor a config in {CONFIGS}: give a path, or one of "
                     f"{', '.join(known)}.")
        if problem := config_file_problem(path, value):
            stop(problem)
        resolved.append(arg if path == Path(value) else prefix + str(path))
    return resolved
