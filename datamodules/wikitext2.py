"""WikiText-2 as token streams cut into parallel rows, with AWD-LSTM's random sequence lengths.

Batching as the seed (Salesforce awd-lstm-lm): the token stream is cut into `batch_size` parallel streams
(rows); a batch is the next `seq_len` columns, so each row continues where it stopped and the model carries its
hidden state across batches. In training `seq_len` is drawn per batch — bptt with probability 0.95, else
bptt/2, then normal with std 5, at least 5 — and the model scales that batch's lr by seq_len/bptt.

Two choices made for exact schedules and DDP:
- every training epoch has the same number of batches, ⌊(tokens per row − 1)/bptt⌋, so the 1cycle's total
  steps are exact; the draws average 0.975·bptt, so an epoch covers about 97.5% of each row (the seed's loop
  covered all of it with ~2.5% more, variable, steps);
- the lengths come from a generator seeded with `seed + epoch`, identical on every rank, and under DDP each rank
  takes its own contiguous part of the stream — so all ranks run the same number of steps (a mismatch hangs DDP).

Because an epoch's batches are a function of `seed + epoch`, the training loader (`ResumableDataLoader`) saves
its position in every checkpoint — the epoch and the batches done in it — and a mid-epoch resume replays that
epoch's lengths up to there: the same next batch at the same stream offset, as in the uninterrupted run.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules import wikitext2_files as files
from datamodules.resumable_loader import POSITION_KEY, ResumableDataLoader, TrainLoaderPosition


def draw_seq_len(generator: torch.Generator, bptt: int) -> int:
    """AWD-LSTM's length: bptt (p=0.95) or bptt/2, plus normal noise of std 5, at least 5."""
    base = bptt if torch.rand(1, generator=generator).item() < 0.95 else bptt / 2
    return max(5, int(base + 5 * torch.randn(1, generator=generator).item()))


def batchify(stream: torch.Tensor, rows: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's `rows` parallel streams, [rows, length]: the stream is cut into world_size·rows equal parts."""
    length = len(stream) // (rows * world_size)
    if length < 2:
        raise ValueError(f"{len(stream)} tokens cannot fill {rows * world_size} rows of at least 2 tokens; lower "
                         "data.batch_size / data.eval_batch_size.")
    parts = stream[: length * rows * world_size].view(rows * world_size, length)
    return parts[rank * rows : (rank + 1) * rows]


class StreamBatches(IterableDataset):
    """(inputs, targets) batches of shape [rows, seq_len] walking the rows left to right.

    Training (`random_lengths`): a fixed number of batches per epoch with lengths drawn from `seed + epoch`.
    Evaluation: consecutive chunks of `bptt` tokens covering every row to the end.
    """

    def __init__(self, data: torch.Tensor, bptt: int, random_lengths: bool, seed: int = 0,
                 epoch_fn: Callable[[], int] | None = None):
        self.data, self.bptt, self.random_lengths, self.seed = data, bptt, random_lengths, seed
        self.epoch_fn = epoch_fn or (lambda: 0)

    @property
    def epoch(self) -> int:
        """The epoch whose lengths the next iteration draws (the trainer's current epoch)."""
        return self.epoch_fn()

    def __len__(self) -> int:
        usable = self.data.shape[1] - 1
        return max(usable // self.bptt, 1) if self.random_lengths else -(-usable // self.bptt)

    def lengths(self, epoch: int) -> list[int]:
        if not self.random_lengths:
            usable = self.data.shape[1] - 1
            return [min(self.bptt, usable - start) for start in range(0, usable, self.bptt)]
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return [draw_seq_len(generator, self.bptt) for _ in range(len(self))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, last = 0, self.data.shape[1] - 1
        for seq_len in self.lengths(self.epoch):
            if start >= last:  # the draws ran past the end of the rows (rare): begin again at the start
                start = 0
            seq_len = min(seq_len, last - start)
            yield self.data[:, start : start + seq_len], self.data[:, start + 1 : start + 1 + seq_len]
            start += seq_len


class WikiText2DataModule(pl.LightningDataModule):
    """WikiText-2 (v1, tokenised) from `data_dir/wikitext-2/`.

    Args:
        data_dir: folder holding `wikitext-2/` (downloaded there when `download` is true).
        train_file, val_file, test_file: which token file serves each split (e.g. train on wiki.valid.tokens
            and test on wiki.test.tokens when only those exist); the vocabulary comes from `train_file`.
        batch_size: parallel streams per device in training (the seed: 100).
        bptt: mean training sequence length (the seed: 70); also the unit of the per-batch lr scaling.
        eval_batch_size, eval_bptt: streams and chunk length for validation/test (the seed: 1 and 2,000, which
            the neural cache needs).
        seed: base seed of the sequence-length draws (epoch e uses seed + e on every rank).
        download: fetch wikitext-2-v1.zip (MD5-checked) when the files are missing.
        val_tokens: hold out the last N tokens of `train_file` as the validation stream (`val_file` is then not
            read) and build the vocabulary from the rest only: a validation split where only one file of text is
            at hand (the CPU study trains on part of wiki.valid.tokens). null: validate on `val_file`.
    """

    def __init__(
        self,
        data_dir: str = "data",
        train_file: str = "wiki.train.tokens",
        val_file: str = "wiki.valid.tokens",
        test_file: str = "wiki.test.tokens",
        batch_size: int = 100,
        bptt: int = 70,
        eval_batch_size: int = 1,
        eval_bptt: int = 2000,
        seed: int = 0,
        download: bool = False,
        val_tokens: int | None = None,
    ):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("bptt", bptt), ("eval_batch_size", eval_batch_size),
                            ("eval_bptt", eval_bptt)):
            if value <= 0:
                raise ValueError(f"data.{name} is {value}; set it to a positive number.")
        data_dir = str(data_dir)  # saved as a str: a Path would make checkpoints fail to load with weights_only=True
        self.save_hyperparameters()
        self.folder = Path(data_dir) / files.FOLDER
        self.files = {"train": train_file, "valid": val_file, "test": test_file}
        self.batch_size, self.bptt, self.seed = batch_size, bptt, seed
        self.eval_batch_size, self.eval_bptt = eval_batch_size, eval_bptt
        if download:
            files.download(data_dir)
        # Read now, not in setup(): the CLI links vocab_size into the net when it builds the classes.
        train_tokens = files.read_tokens(self.folder / train_file)
        self.held_out: list[str] | None = None  # the validation tokens cut from the training file (val_tokens)
        if val_tokens is not None:
            if not 0 < val_tokens < len(train_tokens):
                raise ValueError(f"data.val_tokens is {val_tokens} but {train_file} holds {len(train_tokens)} tokens; "
                                 "hold out a positive number below that, or set it to null to use data.val_file.")
            train_tokens, self.held_out = train_tokens[:-val_tokens], train_tokens[-val_tokens:]
        self.vocab = files.build_vocab(train_tokens)
        self.vocab_size = len(self.vocab)
        self.streams: dict[str, torch.Tensor] = {"train": files.encode(train_tokens, self.vocab)}
        if self.held_out is not None:
            self.streams["valid"] = files.encode(self.held_out, self.vocab)
        self.train_position = TrainLoaderPosition()

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",)}.get(stage, ("train", "valid", "test"))
        for split in wanted:
            if split not in self.streams:
                self.streams[split] = files.encode(files.read_tokens(self.folder / self.files[split]), self.vocab)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> ResumableDataLoader:
        rank, world = self._rank()
        rows = batchify(self.streams["train"], self.batch_size, rank, world)
        epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
        batches = StreamBatches(rows, self.bptt, random_lengths=True, seed=self.seed, epoch_fn=epoch_fn)
        # Batches are slices of one tensor: no workers, no collation, no sampler for Lightning to replace.
        return self.train_position.hand_to(ResumableDataLoader(batches, batch_size=None, num_workers=0))

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = self._rank()
        rows = batchify(self.streams[split], self.eval_batch_size, rank, world)
        return DataLoader(StreamBatches(rows, self.eval_bptt, random_lengths=False), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def state_dict(self) -> dict:
        """The vocabulary travels with every checkpoint, so a resumed or reloaded model reads the same ids; so does
        the training loader's position (`datamodules/resumable_loader.py`)."""
        position = self.train_position.state_dict(self.trainer)
        return {"vocab": self.vocab, **({POSITION_KEY: position} if position is not None else {})}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_position.load_state_dict(state_dict.get(POSITION_KEY), self.trainer)
        saved = state_dict.get("vocab")
        if saved is not None and saved != self.vocab:
            raise ValueError(
                f"the checkpoint's vocabulary ({len(saved)} words) differs from the one built from "
                f"{self.folder / self.files['train']} ({len(self.vocab)} words); resume with the train_file it "
                "was trained on."
            )
