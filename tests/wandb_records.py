"""Read an offline W&B run file (`run-*.wandb`) without the server: what tests assert about W&B runs.

The records come from `lightning_modules.loggers.resumable.read_wandb_records` (which says how the file is laid out).
"""
from __future__ import annotations

import json
from pathlib import Path

from wandb.proto import wandb_internal_pb2

from lightning_modules.loggers.resumable import read_wandb_records


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    return read_wandb_records(path)


def logged_metrics(path: Path) -> dict[str, list]:
    """Every history key → the list of values logged for it, in order."""
    history: dict[str, list] = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    return history


def config_keys(path: Path) -> set[str]:
    keys = set()
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            keys.update(item.key or "/".join(item.nested_key) for item in record.config.update)
    return keys


def config_values(path: Path) -> dict:
    """The run's config as W&B holds it: top-level key → value (nested dicts as logged)."""
    values = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def run_tags(path: Path) -> list[str]:
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            return list(record.run.tags)
    return []
