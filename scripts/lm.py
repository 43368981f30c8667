"""Use a trained language model: sample text from a prompt, or score a text file's perplexity (with the cache).

    python scripts/lm.py generate --ckpt_path runs/wikitext2/.../last.ckpt --prompt "the game was" \\
        --tokens 60 --temperature 0.8 --top_k 40 --seed 0
    python scripts/lm.py score --ckpt_path .../last.ckpt --file data/wikitext-2/wiki.test.tokens [--no-cache]

Everything comes from the checkpoint written by `cli.py fit`: the net (its saved config), the vocabulary (the
datamodule's state) and the cache settings — no config and no training data are needed, and `--ckpt_path last`
is not offered because there is no config to match it with.

- **generate**: the prompt is split on whitespace like WikiText (a word outside the vocabulary becomes `<unk>`,
  with a warning); the model reads it with its state carried, then samples `--tokens` words one at a time from
  softmax(logits / temperature), restricted to the `--top_k` likeliest (0: all), from a generator seeded with
  `--seed`: the same seed gives the same text. `<eos>` is printed as a line break.
- **score**: the file is read with WikiText's tokenisation (each line closed by `<eos>`), encoded with the
  vocabulary, and streamed through the model in chunks of `--chunk` tokens (the eval_bptt of the checkpoint's
  data, 2,000 for the seed) as one stream, the state carried, the neural cache fed chunk by chunk: only one
  chunk's softmax exists at a time, however long the file. Given the test file it prints `test/ppl` and
  `test/ppl_cache` as `cli.py test` computes them.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python scripts/lm.py`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from datamodules import wikitext2_files as files  # noqa: E402
from scripts.saved_run import DATA_KEY, language_model_problem  # noqa: E402


def load(path: str | Path):
    """(LanguageModel in eval mode, vocabulary list, the data's eval_bptt) from a checkpoint written by cli.py."""
    from lightning_modules import LanguageModel

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if problem := language_model_problem(path, checkpoint):
        raise SystemExit(f"scripts/lm.py: error: {problem}")
    model = LanguageModel.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    chunk = (checkpoint.get("datamodule_hyper_parameters") or {}).get("eval_bptt", 2000)
    return model, list(checkpoint[DATA_KEY]["vocab"]), chunk


def encode_words(words: list[str], vocab: list[str]) -> torch.Tensor:
    """Word ids; a word outside the vocabulary becomes `<unk>`, with one warning naming them."""
    unknown = sorted({word for word in words if word not in vocab})
    if unknown:
        warnings.warn(f"not in the model's vocabulary, read as <unk>: {', '.join(unknown[:10])}"
                      + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""), stacklevel=2)
    return files.encode(words, vocab)


@torch.no_grad()
def generate(model, vocab: list[str], prompt: str, tokens: int, temperature: float = 1.0, top_k: int = 0,
             seed: int = 0) -> str:
    """`tokens` words sampled after `prompt` (see the module docstring); deterministic for a given seed."""
    if temperature <= 0 or tokens < 0 or top_k < 0:
        raise ValueError(f"temperature must be > 0 and tokens, top_k ≥ 0; got {temperature}, {tokens}, {top_k}.")
    words = prompt.split() or [files.EOS]
    ids = encode_words(words, vocab)[None]
    generator = torch.Generator().manual_seed(seed)
    model.hidden, out = None, []
    inputs = ids
    for _ in range(tokens):
        result = model.net(inputs, model.hidden)
        model.hidden = result.hidden
        logits = model.net.decoder(result.output[0, -1]).float() / temperature
        if 0 < top_k < logits.numel():
            kept = logits.topk(top_k)
            logits = torch.full_like(logits, -math.inf).scatter(0, kept.indices, kept.values)
        next_id = torch.multinomial(logits.softmax(dim=0), 1, generator=generator)
        out.append(vocab[next_id.item()])
        inputs = next_id[None]
    model.hidden = None
    text = " ".join("\n" if word == files.EOS else word for word in words + out)
    return text.replace(" \n ", "\n").replace(" \n", "\n").replace("\n ", "\n")


@torch.no_grad()
def score(model, vocab: list[str], path: str | Path, chunk: int, cache: bool = True) -> dict[str, float]:
    """Perplexity of a WikiText-tokenised file, streamed in chunks, with and without the model's neural cache."""
    from lightning_modules.neural_cache import NeuralCache

    stream = encode_words(files.read_tokens(Path(path)), vocab)
    neural_cache = NeuralCache(**model.cache_settings) if cache else None
    model.hidden, total, total_cache, count = None, 0.0, 0.0, 0
    for start in range(0, len(stream) - 1, chunk):
        inputs = stream[start:start + chunk][None]
        targets = stream[start + 1:start + 1 + chunk][None]
        inputs = inputs[:, :targets.shape[1]]
        target_log_probs, raw_output = model.score(inputs, targets)
        total -= target_log_probs.double().sum().item()
        if neural_cache is not None:
            mixed = neural_cache.log_probs(target_log_probs[0], raw_output[0].float(), targets[0])
            total_cache -= mixed.double().sum().item()
        count += targets.numel()
    model.hidden = None
    result = {"tokens": count, "ppl": math.exp(total / count)}
    if neural_cache is not None:
        result["ppl_cache"] = math.exp(total_cache / count)
    return result


def main(argv: list[str] | None = None) -> str | dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="sample text after a prompt")
    make.add_argument("--prompt", default="")
    make.add_argument("--tokens", type=int, default=50)
    make.add_argument("--temperature", type=float, default=1.0)
    make.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest words (0: all)")
    make.add_argument("--seed", type=int, default=0)
    rate = commands.add_parser("score", help="perplexity of a text file, with and without the cache")
    rate.add_argument("--file", required=True, type=Path)
    rate.add_argument("--chunk", type=int, help="tokens per chunk (default: the checkpoint's eval_bptt)")
    rate.add_argument("--no-cache", dest="cache", action="store_false")
    for sub in (make, rate):
        sub.add_argument("--ckpt_path", required=True, help="a language-model checkpoint written by cli.py fit")
    options = parser.parse_args(argv)
    model, vocab, chunk = load(options.ckpt_path)
    if options.command == "generate":
        text = generate(model, vocab, options.prompt, options.tokens, options.temperature, options.top_k,
                        options.seed)
        print(text)
        return text
    result = score(model, vocab, options.file, options.chunk or chunk, options.cache)
    print(f"{options.file}: {result['tokens']:,} tokens, ppl {result['ppl']:.2f}"
          + (f", ppl with the cache {result['ppl_cache']:.2f}" if "ppl_cache" in result else ""))
    return result


if __name__ == "__main__":
    main()
