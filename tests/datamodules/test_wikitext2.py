"""WikiText-2 datamodule: tokenising, vocabulary, stream batching with random lengths, DDP sharding, download."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from datamodules import WikiText2DataModule
from datamodules import wikitext2_files as files
from datamodules.wikitext2 import StreamBatches, batchify, draw_seq_len
from tests.conftest import SHARED_DATA

WORDS = "the cat sat on a mat and then a dog came by to see what the cat was doing there".split()


def write_corpus(root: Path, lines: int = 400, seed: int = 0) -> Path:
    """A tiny wikitext-2/ folder: generated lines of words; valid/test contain a word train lacks."""
    generator = torch.Generator().manual_seed(seed)
    folder = root / "wikitext-2"
    folder.mkdir(parents=True, exist_ok=True)

    def text(n: int, extra: str = "") -> str:
        rows = []
        for _ in range(n):
            ids = torch.randint(len(WORDS), (int(torch.randint(3, 15, (1,), generator=generator)),), generator=generator)
            rows.append(" " + " ".join(WORDS[i] for i in ids) + extra + " \n")
        return "".join(rows)

    (folder / "wiki.train.tokens").write_text(text(lines))
    (folder / "wiki.valid.tokens").write_text(text(lines // 4, " zebra"))
    (folder / "wiki.test.tokens").write_text(text(lines // 4, " <unk>"))
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "data")


def module(root: Path, **kwargs) -> WikiText2DataModule:
    return WikiText2DataModule(str(root), **{"batch_size": 4, "bptt": 10, "eval_batch_size": 1, "eval_bptt": 50,
                                             **kwargs})


def test_lines_end_with_eos_and_unknown_words_become_unk(corpus):
    dm = module(corpus)
    dm.setup("fit")
    train_lines = (corpus / "wikitext-2" / "wiki.train.tokens").read_text().splitlines()
    assert dm.vocab[0] == train_lines[0].split()[0] and "<eos>" in dm.vocab and "zebra" not in dm.vocab
    assert dm.vocab_size == len(dm.vocab) == len(set(WORDS) & set(" ".join(train_lines).split())) + 2  # eos, unk
    assert len(dm.streams["train"]) == sum(len(line.split()) + 1 for line in train_lines)
    unk = dm.vocab.index("<unk>")
    assert (dm.streams["valid"] == unk).sum() == 100  # one "zebra" per validation line


def test_real_wikitext_token_counts_and_train_file_option():
    folder = SHARED_DATA / "wikitext-2"
    if not (folder / "wiki.valid.tokens").is_file():
        pytest.skip(f"real WikiText-2 not available: {folder} is absent (it ships in ../shared/data on project machines)")
    dm = WikiText2DataModule(str(SHARED_DATA), train_file="wiki.valid.tokens", val_file="wiki.test.tokens",
                             test_file="wiki.test.tokens")
    dm.setup("fit")
    assert len(dm.streams["train"]) == 217_646 and len(dm.streams["valid"]) == 245_569
    assert dm.vocab_size == len(set(files.read_tokens(folder / "wiki.valid.tokens")))


def test_val_tokens_holds_out_the_end_of_the_training_file_with_a_vocabulary_from_the_rest(corpus):
    (corpus / "wikitext-2" / "wiki.train.tokens").open("a").write(" qa qb qc qd qe \n")  # words seen only here
    tokens = files.read_tokens(corpus / "wikitext-2" / "wiki.train.tokens")
    dm = module(corpus, val_tokens=6, val_file="missing.tokens")  # the held-out part replaces val_file
    dm.setup("fit")
    assert len(dm.streams["train"]) == len(tokens) - 6 and len(dm.streams["valid"]) == 6
    assert "qa" not in dm.vocab and dm.vocab == files.build_vocab(tokens[:-6])
    assert [dm.vocab[i] for i in dm.streams["valid"]] == ["<unk>"] * 5 + ["<eos>"]  # unseen in training
    with pytest.raises(ValueError, match=r"data.val_tokens is 0 but wiki.train.tokens holds \d+ tokens"):
        module(corpus, val_tokens=0)


def test_training_batches_follow_the_rows_with_awd_lstm_lengths(corpus):
    dm = module(corpus)
    dm.setup("fit")
    loader = dm.train_dataloader()
    rows = batchify(dm.streams["train"], 4)
    batches = list(loader)
    assert len(batches) == len(loader) == (rows.shape[1] - 1) // 10
    start = 0
    for inputs, targets in batches:
        start = 0 if start >= rows.shape[1] - 1 else start  # draws that overrun the rows begin again at the start
        assert inputs.shape[0] == 4 and torch.equal(inputs, rows[:, start : start + inputs.shape[1]])
        assert torch.equal(targets, rows[:, start + 1 : start + 1 + inputs.shape[1]])
        start += inputs.shape[1]


def test_sequence_length_distribution():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([draw_seq_len(generator, 70) for _ in range(20_000)], dtype=torch.float)
    short = lengths < 52.5
    assert 0.04 < short.float().mean() < 0.06  # bptt/2 with probability 0.05
    # int() truncates like the seed's `int(np.random.normal(bptt, 5))`: the mean sits half a token below bptt
    assert abs(lengths[~short].mean() - 69.5) < 0.2 and abs(lengths[~short].std() - 5) < 0.3
    assert abs(lengths[short].mean() - 34.5) < 1 and lengths.min() >= 5


def test_every_epoch_has_the_same_step_count_and_its_own_lengths():
    data = torch.arange(4 * 1000).view(4, 1000)
    dataset = StreamBatches(data, bptt=70, random_lengths=True, seed=3)
    epoch0, epoch1 = dataset.lengths(0), dataset.lengths(1)
    assert len(epoch0) == len(epoch1) == len(dataset) == 999 // 70
    assert epoch0 != epoch1 and epoch0 == StreamBatches(data.clone(), 70, True, seed=3).lengths(0)


def test_ddp_ranks_get_distinct_contiguous_parts_and_the_same_lengths(corpus):
    dm = module(corpus)
    dm.setup("fit")
    stream = dm.streams["train"]
    rank0, rank1 = batchify(stream, 4, rank=0, world_size=2), batchify(stream, 4, rank=1, world_size=2)
    length = len(stream) // 8
    assert rank0.shape == rank1.shape == (4, length)
    assert torch.equal(torch.cat([rank0, rank1]).flatten(), stream[: 8 * length])  # all of it, no overlap
    loaders = [StreamBatches(r, 10, True, seed=0) for r in (rank0, rank1)]
    assert [x.shape[1] for x, _ in loaders[0]] == [x.shape[1] for x, _ in loaders[1]]


def test_evaluation_chunks_cover_every_token_once(corpus):
    dm = module(corpus, eval_bptt=37)
    dm.setup("validate")
    targets = torch.cat([y for _, y in dm.val_dataloader()], dim=1)
    assert torch.equal(targets[0], dm.streams["valid"][1:])


@pytest.mark.parametrize("content, message", [
    (b"", "holds no words"),
    (b"\n \n", "holds no words"),
    (b"caf\xe9 au lait\n", "is not UTF-8 text"),
])
def test_bad_token_files_are_named(tmp_path, content, message):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        module(tmp_path)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wiki.train.tokens does not exist.*download: true"):
        module(tmp_path)


def test_resuming_with_another_vocabulary_is_refused(corpus, tmp_path):
    saved = module(corpus).state_dict()
    other = module(write_corpus(tmp_path / "other", lines=50, seed=1))
    with pytest.raises(ValueError, match="vocabulary .* differs"):
        other.load_state_dict(saved)
    module(corpus).load_state_dict(saved)  # the same files: accepted


def make_zip(corpus: Path, tmp_path: Path) -> tuple[Path, str]:
    archive = tmp_path / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in files.SPLIT_FILES.values():
            z.write(corpus / "wikitext-2" / name, f"wikitext-2/{name}")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_extracts_a_verified_archive_and_checks_token_counts(corpus, tmp_path, serve, monkeypatch):
    archive, md5 = make_zip(corpus, tmp_path)
    counts = {name: len(files.read_tokens(corpus / "wikitext-2" / name)) for name in files.SPLIT_FILES.values()}
    monkeypatch.setattr(files, "TOKEN_COUNTS", counts)
    files.download(tmp_path / "fresh", url=f"{serve}/{archive.name}", md5=md5)
    assert (tmp_path / "fresh" / "wikitext-2" / "wiki.test.tokens").read_text() == \
        (corpus / "wikitext-2" / "wiki.test.tokens").read_text()
    monkeypatch.setattr(files, "TOKEN_COUNTS", {**counts, "wiki.valid.tokens": 217_646})
    with pytest.raises(RuntimeError, match="not WikiText-2's 217646"):
        files.download(tmp_path / "again", url=f"{serve}/{archive.name}", md5=md5)


def test_download_with_wrong_checksum_is_rejected_and_deleted(corpus, tmp_path, serve):
    archive, _ = make_zip(corpus, tmp_path)
    with pytest.raises(RuntimeError, match="failed its MD5 check"):
        files.download(tmp_path / "fresh", url=f"{serve}/{archive.name}", md5="0" * 32)
    assert not (tmp_path / "fresh" / archive.name).exists()


def test_download_failure_says_where_to_put_the_files(tmp_path, serve):
    with pytest.raises(RuntimeError, match=r"place wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens in"):
        files.download(tmp_path / "fresh", url=f"{serve}/absent.zip")


def test_published_mirror_and_md5():
    assert files.URL == "https://wikitext.smerity.com/wikitext-2-v1.zip"
    assert files.ARCHIVE_MD5 == "542ccefacc6c27f945fb54453812b3cd"  # torchtext's published MD5 of this archive
