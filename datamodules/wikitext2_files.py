"""WikiText-2 token files: download (checksum-verified), tokenise, build the vocabulary — with clear errors.

WikiText-2 v1 is already tokenised: a line is split on whitespace and ends with `<eos>`, exactly as the seed's
(and Salesforce awd-lstm-lm's) `data.py` does; the vocabulary is the train split's words in order of first
appearance (33,278), and words of other splits that it lacks become `<unk>`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

FOLDER = "wikitext-2"
SPLIT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
# The original host (s3.amazonaws.com/research.metamind.io) returns 403 since 2024; the dataset author's own mirror
# serves the same archive (torchtext's published MD5).
URL = "https://wikitext.smerity.com/wikitext-2-v1.zip"
ARCHIVE_MD5 = "542ccefacc6c27f945fb54453812b3cd"
TOKEN_COUNTS = {"wiki.train.tokens": 2_088_628, "wiki.valid.tokens": 217_646, "wiki.test.tokens": 245_569}
EOS, UNK = "<eos>", "<unk>"


def read_tokens(path: Path) -> list[str]:
    """Whitespace tokens of every line, each line closed by `<eos>`; clear errors for missing/empty/non-UTF-8."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; place WikiText-2's {path.name} there, set "
                                "data.download: true, or point data.data_dir / the *_file options at your files.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}); WikiText token files are UTF-8 — "
                         "download the file again.") from err
    tokens = [token for line in text.splitlines() for token in (*line.split(), EOS)]
    if not any(token != EOS for token in tokens):
        raise ValueError(f"{path} holds no words; check that it is a WikiText token file.")
    return tokens


def build_vocab(tokens: list[str]) -> list[str]:
    """Words in order of first appearance (the seed's `Dictionary`), with `<unk>` guaranteed."""
    vocab = list(dict.fromkeys(tokens))
    if UNK not in vocab:
        vocab.append(UNK)
    return vocab


def encode(tokens: list[str], vocab: list[str]) -> torch.Tensor:
    """Token ids as one int64 stream; words outside the vocabulary map to `<unk>`."""
    index = {word: i for i, word in enumerate(vocab)}
    unk = index[UNK]
    return torch.tensor([index.get(token, unk) for token in tokens], dtype=torch.long)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(data_dir: str | Path, url: str = URL, md5: str = ARCHIVE_MD5) -> None:
    """Fetch and extract `wikitext-2-v1.zip` into `data_dir/wikitext-2/`, MD5-checked; clear error when offline.

    After extraction each split's token count is checked against the published one, so a wrong or truncated
    file never reaches training.
    """
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    root = Path(data_dir)
    folder = root / FOLDER
    if all((folder / name).is_file() for name in SPLIT_FILES.values()):
        return
    archive = root / Path(url).name
    try:
        download_and_extract_archive(url, str(root), filename=archive.name, md5=md5, remove_finished=True)
    except (OSError, RuntimeError) as err:
        if archive.exists() and not check_integrity(str(archive), md5):
            archive.unlink()  # never leave a wrong archive that looks finished
            raise RuntimeError(f"WikiText-2 archive from {url} failed its MD5 check ({md5}); it was deleted — "
                               "download it again.") from err
        raise RuntimeError(
            f"Could not download WikiText-2 from {url} ({err}); download wikitext-2-v1.zip by hand (or the "
            f"Salesforce/wikitext dataset from the Hugging Face hub) and place wiki.train.tokens, "
            f"wiki.valid.tokens and wiki.test.tokens in {folder}."
        ) from err
    for name, count in TOKEN_COUNTS.items():
        found = len(read_tokens(folder / name))
        if found != count:
            raise RuntimeError(f"{folder / name} has {found} tokens, not WikiText-2's {count}; delete {folder} "
                               "and download again.")
