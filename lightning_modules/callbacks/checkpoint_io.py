"""AtomicCheckpointIO: write each checkpoint to a temporary file beside it, then rename it into place.

Why not Lightning's own save: `TorchCheckpointIO` calls `lightning_fabric.utilities.cloud_io._atomic_save`, which
serialises the whole checkpoint into memory, then writes it inside an fsspec transaction. For a local path
fsspec's `LocalFileOpener` writes a `tempfile.mkstemp()` file — in $TMPDIR, not beside the checkpoint — and commits
it with `shutil.move`. That is a rename, hence atomic, only while $TMPDIR and the checkpoint folder are on the same
filesystem. On a cluster they rarely are (a node-local or tmpfs $TMPDIR, checkpoints on NFS/Lustre): the rename
fails with EXDEV and `shutil.move` falls back to copying into the destination itself, so a kill, a full disk or a
node failure during the copy leaves a truncated `last.ckpt` in place of the previous good one
(tests/lightning_modules/callbacks/test_checkpoint_io.py shows it). A checkpoint also has to fit in $TMPDIR, and a kill
during the write leaves its temporary file there.

Here, for local paths: the checkpoint is streamed by `torch.save` into `<name>.tmp` in the checkpoint's own folder
(so no second copy in memory and no $TMPDIR), flushed and fsync'ed, then `os.replace`d onto `<name>` — one atomic
rename on the same filesystem — and the folder is fsync'ed so the rename survives a power loss. A failed write
removes its temporary file and leaves the previous checkpoint untouched. A SIGKILL during the write cannot clean
up: it leaves `<name>.tmp` beside an intact `<name>`, and the next save of that name overwrites it. A full disk
raises `CheckpointSpaceError` (folder, MiB needed and free), which `cli.py` reports in one sentence. Remote paths
(s3://, gs://, ...) go through Lightning's save: object stores publish an object whole or not at all.
Every task config uses it (`trainer.plugins`); `trainer.save_checkpoint` from any callback goes through it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

TEMP_SUFFIX = ".tmp"


def _fsync_folder(folder: Path) -> None:
    """Makes the rename durable where the OS allows it. Windows cannot open a folder and some filesystems refuse
    fsync on one: the rename is still atomic there, only its durability is left to the OS."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(descriptor)
    os.close(descriptor)


class CheckpointSpaceError(OSError):
    """The disk filled up while a checkpoint was written; the message says where, how much, and that the previous
    checkpoint of that name is intact. `cli.py` ends the run with it in one sentence."""


def tensor_bytes(tree: Any) -> int:
    """Bytes of every tensor in a checkpoint: about what its file needs (the pickled rest is small)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(value) for value in tree)
    return 0


def _space_error(path: Path, checkpoint: dict[str, Any], error: OSError) -> CheckpointSpaceError:
    needed, free = tensor_bytes(checkpoint) / 2**20, shutil.disk_usage(path.parent).free / 2**20
    last = path.with_name("last.ckpt")
    kept = (f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            + (", last.ckpt there is intact" if last.exists() else ""))
    full = CheckpointSpaceError(
        f"the disk holding {path.parent} is full: writing {path.name} needs about {needed:,.0f} MiB and "
        f"{free:,.0f} MiB are free ({kept}); free some space, or put the run on another disk with "
        "--trainer.default_root_dir DIR, then resume with --ckpt_path last")
    full.errno = error.errno
    return full


class _WriteWatcher:
    """A binary file that remembers why a write failed. `torch.save` reports a failed write as a RuntimeError
    ("unexpected pos ..."), dropping the OSError whose errno says that the disk is full."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()

    def __getattr__(self, name: str) -> Any:  # name, fileno, ...: the file's own
        return getattr(self.file, name)


def atomic_torch_save(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """`torch.save` to `<path>.tmp` in the same folder, fsync, then rename onto `path`; on failure remove the temp.

    A full disk (or a quota reached) is raised as `CheckpointSpaceError`, after the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + TEMP_SUFFIX)
    watcher = None
    try:
        with open(temp, "wb") as file:
            watcher = _WriteWatcher(file)
            torch.save(checkpoint, watcher)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        cause = error if isinstance(error, OSError) else getattr(watcher, "error", None)
        if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _space_error(path, checkpoint, cause) from error
        raise
    _fsync_folder(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, with local saves written beside the target and renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for a local path; "
                            f"got {storage_options!r}.")
        atomic_torch_save(checkpoint, path)
