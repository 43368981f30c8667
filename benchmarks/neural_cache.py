"""Time per token of the neural cache pointer: `NeuralCache` (blocked matmul) against pointer.py's per-token loop.

Why: Salesforce's `pointer.py` (and the seed's own `my_cache_pointer`, which differs only in which positions it
mixes) walks the test stream one token at a time and, for each, multiplies the attention into a one-hot
[window, vocab] history (126M multiply-adds per token at WikiText-2 size). `lightning_modules/neural_cache.py` computes the same numbers a block of queries at a
time without the vocabulary. This measures what that gains in the cache's steady state (history full).

Sides, both in `lightning_modules/neural_cache.py`:
- vectorised: `NeuralCache.log_probs` on one evaluation chunk of `tokens` positions (the seed's eval_bptt 2000).
- naive: `naive_chunk_log_probs`, pointer.py's chunk body transcribed line for line (torch.mv, softmax, the
  one-hot history), on the first `naive_tokens` positions of the same chunk — the loop is far too slow for all
  of them, and its cost per token does not depend on how many there are.

Fairness: both start from the same full history (`window` random positions, set up untimed) and get the same
float32 data on the same device: hidden states tanh(N(0, 1)) like LSTM outputs, targets drawn Zipf-like over
the vocabulary (p ∝ 1/rank, so words repeat within the window as in text), p_vocab = softmax of N(0, 1) logits.
Times are per mixed position (the first position of a chunk is never mixed, as in pointer.py). The vectorised
time includes its per-chunk work; the naive per-chunk work (the chunk's one-hot rows and concatenating the
[window, vocab] history), which pointer.py spreads over 2000 tokens, is excluded from the naive side entirely:
its time per token is (t(naive_tokens) − t(1)) / (naive_tokens − 1), with t(1) a one-position chunk, which is
pure per-chunk work. Each side gets one untimed warm-up whose outputs are compared; repetitions alternate which
side runs first; medians are reported and the speed-up is paired per repetition.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # runnable as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.cifar_pipeline import machine
from lightning_modules.neural_cache import LAMBDAH, QUERY_BLOCK, THETA, NeuralCache, naive_chunk_log_probs

TARGET_RATIO = 20.0
WIKITEXT2_VOCAB = 33278
LOGIT_ROWS = 256  # rows of [*, vocab] logits drawn at a time, to keep the data's peak memory small


def synthetic_stream(history: int, tokens: int, vocab: int, hidden: int, keep_probs: int,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """A full cache history and one chunk after it; p_vocab rows kept in full only for the first `keep_probs`."""
    generator = torch.Generator().manual_seed(seed)
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    targets = torch.multinomial(zipf, history + tokens, replacement=True, generator=generator)
    states = torch.tanh(torch.randn(history + tokens, hidden, generator=generator))
    target_log_probs, probs = [], []
    for first in range(0, tokens, LOGIT_ROWS):
        log_p = torch.log_softmax(torch.randn(min(LOGIT_ROWS, tokens - first), vocab, generator=generator), dim=1)
        rows = targets[history + first:history + first + len(log_p)]
        target_log_probs.append(log_p.gather(1, rows[:, None]).squeeze(1))
        if first < keep_probs:
            probs.append(log_p[:keep_probs - first].exp())
    return {"history_hidden": states[:history], "history_targets": targets[:history],
            "hidden": states[history:], "targets": targets[history:],
            "target_log_probs": torch.cat(target_log_probs), "probs": torch.cat(probs)}


def _timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def run(tokens: int = 2000, vocab: int = WIKITEXT2_VOCAB, hidden: int = 400, window: int = 3785,
        naive_tokens: int = 32, repeats: int = 3, tune_grid: bool = True) -> dict:
    """Warm up both sides and compare their outputs, then time `repeats` alternating rounds; ms per position."""
    if not 2 <= naive_tokens <= tokens:
        raise ValueError(f"naive_tokens ({naive_tokens}) must lie in [2, tokens={tokens}].")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = {k: v.to(device) for k, v in synthetic_stream(window, tokens, vocab, hidden, naive_tokens).items()}
    # pointer.py's state after a full history: the one-hot next words and the hidden states (set up untimed).
    one_hot_history = torch.nn.functional.one_hot(data["history_targets"], vocab).float()

    def vectorised():
        """A cache holding the full history (filled untimed: those positions are never mixed), then the chunk."""
        cache = NeuralCache(window, THETA, LAMBDAH, mixing="after_window")  # pointer.py's rule, as the loop
        cache.log_probs(torch.zeros(window, device=device), data["history_hidden"], data["history_targets"])
        return lambda: cache.log_probs(data["target_log_probs"], data["hidden"], data["targets"])

    def naive(n: int):
        return lambda: naive_chunk_log_probs(data["probs"][:n], data["hidden"][:n], data["targets"][:n],
                                             one_hot_history, data["history_hidden"], window, THETA, LAMBDAH)[0]

    _, ours = _timed(vectorised(), device)  # warm-up, keeping what each side computed
    _, reference = _timed(naive(naive_tokens), device)
    _timed(naive(1), device)
    max_abs_diff = (ours[:naive_tokens] - reference).abs().max().item()
    keys = data["history_targets"].tolist() + data["targets"].tolist()
    hits = sum(keys[window + j] in set(keys[j:window + j]) for j in range(1, naive_tokens))  # mixed positions

    seconds = {"vectorised": [], "naive": [], "naive_one_position": []}
    for rep in range(repeats):
        for side in (("vectorised", "naive") if rep % 2 == 0 else ("naive", "vectorised")):
            if side == "vectorised":
                seconds["vectorised"].append(_timed(vectorised(), device)[0])
            else:
                seconds["naive_one_position"].append(_timed(naive(1), device)[0])
                seconds["naive"].append(_timed(naive(naive_tokens), device)[0])

    ms = {"vectorised": [1e3 * s / (tokens - 1) for s in seconds["vectorised"]],
          "naive": [1e3 * (s - s1) / (naive_tokens - 1)
                    for s, s1 in zip(seconds["naive"], seconds["naive_one_position"])]}
    ratios = [n / v for n, v in zip(ms["naive"], ms["vectorised"])]  # paired: same repetition
    ratio = statistics.median(ratios)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
    grid = grid_timing(shared if shared.is_file() else None, hidden=hidden, window=window) if tune_grid else None
    return {
        "grid": grid,
        "tokens": tokens, "naive_tokens": naive_tokens, "vocab": vocab, "hidden": hidden, "window": window,
        "theta": THETA, "lambdah": LAMBDAH, "block": QUERY_BLOCK, "repeats": repeats, "dtype": "float32",
        "machine": machine(device),
        "seconds": seconds,
        "ms_per_token": {side: statistics.median(values) for side, values in ms.items()},
        "ms_per_token_all": ms,
        "ratios": ratios, "ratio": ratio, "target": TARGET_RATIO, "passed": ratio >= TARGET_RATIO,
        "max_abs_diff": max_abs_diff, "compared": naive_tokens, "cache_hits": hits,
    }


def grid_timing(tokens_file: str | Path | None = None, tokens: int = 217_646, hidden: int = 400,
                window: int = 3785, seed: int = 0) -> dict:
    """Seconds of `scripts/tune_cache.py`'s grid (its default 7 θ × 8 λ at one window) over a validation stream of
    WikiText-2's size (its real ids when `tokens_file` is given, e.g. wiki.valid.tokens), after the model pass:
    the part that is the same for every model of this hidden size."""
    from datamodules.wikitext2_files import build_vocab, encode, read_tokens
    from scripts import tune_cache

    generator = torch.Generator().manual_seed(seed)
    if tokens_file is not None:
        words = read_tokens(Path(tokens_file))
        targets = encode(words, build_vocab(words))[1:]
    else:
        zipf = 1.0 / torch.arange(1, WIKITEXT2_VOCAB + 1, dtype=torch.float64)
        targets = torch.multinomial(zipf, tokens, replacement=True, generator=generator)
    stream = {"hidden": torch.tanh(torch.randn(len(targets), hidden, generator=generator)), "targets": targets,
              "log_probs": torch.rand(len(targets), generator=generator).clamp_min(1e-6).log(), "chunk": 2000}
    found = tune_cache.search(stream, list(tune_cache.THETAS), list(tune_cache.LAMBDAS), [window], "all")
    return {"tokens": len(targets), "real_text": tokens_file is not None, "hidden": hidden, "window": window,
            "points": len(found["rows"]), "seconds": found["seconds"], "seconds_per_point": found["seconds_per_point"]}


def stream_pass(targets: torch.Tensor, hidden: torch.Tensor, target_log_probs: torch.Tensor, window: int,
                chunk: int) -> tuple[float, torch.Tensor]:
    """Seconds for `NeuralCache` to read a whole stream in evaluation chunks of `chunk` tokens (as `test/ppl_cache`
    is computed), and the mixed log-probabilities it returned."""
    device = hidden.device
    cache = NeuralCache(window, THETA, LAMBDAH)

    def whole() -> torch.Tensor:
        return torch.cat([cache.log_probs(target_log_probs[i:i + chunk], hidden[i:i + chunk], targets[i:i + chunk])
                          for i in range(0, len(targets), chunk)])

    return _timed(whole, device)


def run_stream(tokens_file: str | Path | None = None, tokens: int = 245_569, window: int = 3785,
               chunk: int = 2000, hidden: int = 400, cpu_tokens: int = 20_000, seed: int = 0) -> dict:
    """The cache over a whole test stream on the GPU (if there is one), against the same code on the CPU.

    Targets are the real stream's word ids when `tokens_file` is given (WikiText-2's `wiki.test.tokens`, read as
    the datamodule reads it), else Zipf-like draws of `tokens` ids; hidden states tanh(N(0, 1)) and target
    log-probabilities log U(0, 1) stand in for a model's (the cache's cost does not depend on their values). The
    CPU reads the first `cpu_tokens` of the same stream (the whole one would take minutes); both are compared in
    microseconds per token. Each side runs once untimed first; the first CPU block's results must match the GPU's.
    """
    from datamodules.wikitext2_files import build_vocab, encode, read_tokens

    generator = torch.Generator().manual_seed(seed)
    if tokens_file is not None:
        words = read_tokens(Path(tokens_file))
        targets = encode(words, build_vocab(words))
    else:
        zipf = 1.0 / torch.arange(1, WIKITEXT2_VOCAB + 1, dtype=torch.float64)
        targets = torch.multinomial(zipf, tokens, replacement=True, generator=generator)
    states = torch.tanh(torch.randn(len(targets), hidden, generator=generator))
    target_log_probs = torch.rand(len(targets), generator=generator).clamp_min(1e-6).log()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    result = {"tokens": len(targets), "real_text": tokens_file is not None, "window": window, "chunk": chunk,
              "hidden": hidden, "cpu_tokens": min(cpu_tokens, len(targets)), "machine": machine(devices[-1]),
              "seconds": {}, "us_per_token": {}}
    outputs = {}
    for device in devices:
        n = len(targets) if device.type == "cuda" else result["cpu_tokens"]
        data = [t[:n].to(device) for t in (targets, states, target_log_probs)]
        stream_pass(*data, window, chunk)  # warm-up
        seconds, out = stream_pass(*data, window, chunk)
        result["seconds"][device.type] = seconds
        result["us_per_token"][device.type] = 1e6 * seconds / n
        outputs[device.type] = out.cpu()
    if "cuda" in outputs:
        n = result["cpu_tokens"]
        result["max_abs_diff_cpu_gpu"] = (outputs["cuda"][:n] - outputs["cpu"]).abs().max().item()
        result["gpu_speedup"] = result["us_per_token"]["cpu"] / result["us_per_token"]["cuda"]
    return result


def markdown(result: dict) -> str:
    """The docs/BENCHMARKS.md section for one `run` result."""
    m = result["machine"]
    where = f"{m['device']} ({m['gpu']})" if m["gpu"] else m["device"]
    n, window, vocab = result["naive_tokens"], result["window"], result["vocab"]
    lines = [
        "## Neural cache pointer",
        "",
        f"Cache of window {window}, θ {result['theta']}, λ {result['lambdah']} over hidden size "
        f"{result['hidden']} and a vocabulary of {vocab:,}, {result['dtype']}, with a full history:",
        "",
        f"- **vectorised**: `NeuralCache.log_probs` on one chunk of {result['tokens']} positions, queries in blocks "
        f"of {result['block']} (`lightning_modules/neural_cache.py`).",
        f"- **naive**: `naive_chunk_log_probs`, pointer.py's per-token loop (torch.mv, softmax, one-hot "
        f"[{window}, {vocab}] history), on the first {n} positions of the same chunk; its per-chunk work is "
        f"excluded ((t({n}) − t(1)) / {n - 1}).",
        "",
        "Data: hidden states tanh(N(0, 1)), Zipf-like targets, p_vocab = softmax of N(0, 1) logits; times per "
        "mixed position. One untimed warm-up per side; "
        f"{result['repeats']} repetitions alternating which side runs first; medians reported. The outputs of "
        f"the {n} compared positions differ by at most {result['max_abs_diff']:.1e} "
        f"({result['cache_hits']} of their {n - 1} mixed targets occur in the window).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, device {where}, torch {m['torch']}, Python {m['python']}, "
        f"{m['torch_threads']} torch threads; 1-minute load average {m['load_1min']} at start.",
        "",
        "| side | ms per position (median) | min | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for side in ("vectorised", "naive"):
        values = result["ms_per_token_all"][side]
        lines.append(f"| {side} | {result['ms_per_token'][side]:.4g} | {min(values):.4g} | {max(values):.4g} |")
    verdict = "PASS" if result["passed"] else "FAIL"
    lines += [
        "",
        f"Median speed-up naive/vectorised (paired per repetition): **{result['ratio']:,.0f}×** "
        f"(range {min(result['ratios']):,.0f}–{max(result['ratios']):,.0f}×); target ≥ {result['target']:.0f}×: "
        f"**{verdict}**.",
        "",
    ]
    if result.get("grid"):
        g = result["grid"]
        text = "WikiText-2's validation stream" if g["real_text"] else "a stream of WikiText-2 validation's length"
        lines += [
            f"Tuning the cache (`scripts/tune_cache.py`): after the model's one pass, the default grid of {g['points']} "
            f"(θ, λ) points at window {g['window']} over {text} ({g['tokens']:,} positions, hidden {g['hidden']}) "
            f"took **{g['seconds']:.1f} s, {1e3 * g['seconds_per_point']:.0f} ms per grid point** (one blocked pass "
            "of scores per window shared by every θ; each λ a `logaddexp`).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="positions in the vectorised side's chunk")
    parser.add_argument("--vocab", type=int, default=WIKITEXT2_VOCAB, help="vocabulary size (WikiText-2's)")
    parser.add_argument("--hidden", type=int, default=400, help="hidden size of the last RNN layer")
    parser.add_argument("--window", type=int, default=3785, help="cache window (the seed's)")
    parser.add_argument("--naive-tokens", type=int, default=32, help="positions the per-token loop is timed on")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per side (after one warm-up)")
    args = parser.parse_args()
    print(markdown(run(args.tokens, args.vocab, args.hidden, args.window, args.naive_tokens, args.repeats)))


if __name__ == "__main__":
    main()
