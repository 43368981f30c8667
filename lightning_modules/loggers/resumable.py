"""Loggers that continue a resumed run instead of starting another: one CSV file and one W&B run per run.

Why: Lightning's `CSVLogger` given an existing version folder deletes its `metrics.csv` ("Previous log files in
this directory will be deleted"), so a resumed run must take a new version and its curve is cut in two. W&B
continues a run online when given its id (`resume="allow"`, which Lightning passes), but wandb 0.31 cannot resume
offline: every process writes a new `offline-run-<time>-<id>` folder, and syncing several folders of one id keeps
only one of them. A cluster job preempted three times became four runs on the dashboard.

Both classes behave exactly like Lightning's when `resume_step` is None. `cli.py` sets, when it resumes a
checkpoint it wrote, the CSV logger's `version` to the checkpoint's and `resume_step` to its global step, and the
W&B logger's `id` to the run's; then:
- `ResumableCSVLogger` keeps the folder's `metrics.csv`, drops the rows logged after the checkpoint (steps past
  `resume_step`: the resumed run logs them again), rewrites it atomically, and appends;
- `ResumableWandbLogger`, offline, replays the history of the run's earlier offline folders (steps up to
  `resume_step`) into the new folder before anything else is logged, so the newest folder holds the whole run,
  and once the fit ends successfully moves the earlier folders to `wandb/superseded/` (nothing is deleted). Online
  it changes nothing: the server continues the run.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

WANDB_BLOCK, WANDB_HEADER = 32 * 1024, 7  # the offline run file's LevelDB-style log layout (see read_wandb_records)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping an existing metrics.csv (up to `resume_step`) instead of deleting it."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.resume_step is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("step") and int(float(row["step"])) <= self.resume_step]
        temporary = self.metrics_file_path + ".tmp"
        with self._fs.open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self._fs.mv(temporary, self.metrics_file_path)
        self.metrics_keys = header  # later saves append under this header (rewritten if new columns appear)


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` that, with `resume_step`, appends to its version's metrics.csv after dropping rows past it; and
    that claims a new run's version folder atomically.

    Why the claim: Lightning picks the next version by listing the `version_N` folders, and the folder appears only
    when something is first written into it, about two seconds later (W&B starts in between). Two runs started
    together under one `default_root_dir` (AdamW wd 0.1 beside wd 0.3, a job array) both took `version_0`: one
    config.yaml, one metrics.csv losing the other's rows, one set of checkpoints written by both. Here the version
    is claimed with an exclusive `mkdir` (atomic on every local filesystem, NFS included), retried with the next
    number until one succeeds. Only global rank 0 claims: the other ranks' version is never used (Lightning
    broadcasts rank 0's log and checkpoint folders). The trainer's log dir, and with it `checkpoints/`,
    `config.yaml`, `metrics.csv`, the run record in every checkpoint (`cli_resume.py`) and the run folder logged to
    W&B, all follow the claimed folder. A resumed run is given its version (`cli.py`) and claims nothing.

    Args (beyond CSVLogger's): resume_step: the global step of the checkpoint being resumed (set by cli.py).
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    def _get_next_version(self) -> int:
        version = super()._get_next_version()  # the first free number by listing: where the claims start
        if rank_zero_only.rank != 0 or "://" in str(self.root_dir):  # remote stores have no atomic mkdir
            return version
        os.makedirs(self.root_dir, exist_ok=True)
        while True:
            try:
                os.mkdir(os.path.join(self.root_dir, f"version_{version}"))
                return version
            except FileExistsError:
                version += 1

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir, resume_step=self.resume_step)
        return self._experiment


def read_wandb_records(path: str | os.PathLike, last_blocks: int | None = None) -> list:
    """The records of an offline W&B run file (`run-<id>.wandb`), read without the server.

    The file is a 7-byte header (b":W&B", magic, version), then 32 KiB blocks of records, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a payload that is a serialized
    `wandb.proto.wandb_internal_pb2.Record`; fragments of one record are joined. A file cut short by a kill ends
    at its last whole record.

    `last_blocks`: only the records that start in the file's last N blocks (the fragments of a record begun before
    them are skipped), for a look at a run's last records without parsing a long run's whole file (0.5 s for
    60,000 history rows, 29 MB).
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not an offline W&B run file.")
    position = WANDB_HEADER if last_blocks is None else \
        max(WANDB_HEADER, (len(data) // WANDB_BLOCK + 1 - last_blocks) * WANDB_BLOCK)
    records, pending, in_record = [], b"", False
    while position + WANDB_HEADER <= len(data):
        left_in_block = WANDB_BLOCK - position % WANDB_BLOCK
        if left_in_block < WANDB_HEADER:  # block trailer padding
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + WANDB_HEADER])
        payload = data[position + WANDB_HEADER:position + WANDB_HEADER + length]
        if len(payload) < length:  # cut short inside this record (a kill, or W&B still writing it)
            break
        position += WANDB_HEADER + length
        if (kind == 0 and length == 0) or (kind in (3, 4) and not in_record):  # padding; a skipped record's rest
            continue
        pending = payload if kind in (1, 2) else pending + payload
        in_record = kind in (2, 3)
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every history row of an offline run file, as {key: value}, W&B's own `_step`/`_runtime`/... left out."""
    rows = []
    for record in read_wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            row = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
            rows.append({key: value for key, value in row.items() if not key.startswith("_")})
    return rows


class ResumableWandbLogger(WandbLogger):
    """`WandbLogger` that continues an offline run across processes (see the module docstring).

    Also quiets two warnings W&B prints at every start for reasons of Lightning's or ours: Lightning always passes
    `anonymous` (deprecated in W&B, "has no effect"), and W&B looks for a git repository in the run's folder
    (`git root ... does not exist`); here it is pointed at the folder the run was started from when that is a git
    checkout, so the run records the commit, and told there is none otherwise.

    Args (beyond WandbLogger's): resume_step: the global step of the checkpoint being resumed (set by cli.py).
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self.superseded: list[Path] = []
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        if self._wandb_init.get("settings") is None:  # (LightningCLI passes every wandb.init argument, as None)
            checkout = Path.cwd()
            self._wandb_init["settings"] = ({"git_root": str(checkout)} if (checkout / ".git").exists()
                                            else {"disable_git": True})

    def is_offline(self) -> bool:
        return bool(self._offline) or os.environ.get("WANDB_MODE") in ("offline", "dryrun")

    def earlier_offline_folders(self) -> list[Path]:
        """This run's offline folders from earlier processes, oldest first (their names start with the time)."""
        if not self._id:
            return []
        root = Path(self._save_dir or ".")
        found = [*root.glob(f"wandb/offline-run-*-{self._id}"), *root.glob(f".wandb/offline-run-*-{self._id}")]
        return sorted(found, key=lambda folder: folder.name)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        starting = self._experiment is None
        earlier = self.earlier_offline_folders() if starting and self.resume_step is not None and self.is_offline() \
            else []
        if starting:  # online, continue the run of this id on the server; offline W&B would only warn about it
            self._wandb_init["resume"] = None if self.is_offline() else (self._wandb_init.get("resume") or "allow")
        experiment = super().experiment
        if earlier:
            self._replay(earlier, experiment)
            self.superseded = earlier
        return experiment

    def _replay(self, folders: list[Path], experiment: Any) -> None:
        """Log the earlier folders' history up to `resume_step` again, one row per step, later folders winning."""
        by_step: dict[int, dict[str, Any]] = {}
        for folder in folders:
            for path in folder.glob("run-*.wandb"):
                for row in wandb_history(path):
                    step = row.get("trainer/global_step")
                    if step is not None and int(step) <= self.resume_step:
                        by_step.setdefault(int(step), {}).update(row)
        for step in sorted(by_step):
            experiment.log({**by_step[step], "trainer/global_step": step})

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "success" and self.superseded:
            for folder in self.superseded:
                target = folder.parent / "superseded" / folder.name
                target.parent.mkdir(exist_ok=True)
                shutil.move(str(folder), str(target))
            self.superseded = []
