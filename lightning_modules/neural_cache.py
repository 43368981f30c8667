"""The neural cache pointer (Grave et al. 2016, "Improving Neural Language Models with a Continuous Cache").

What: at evaluation, a language model reading one token stream also remembers its last `window` hidden states
h_i (the last RNN layer's raw output, before output dropout) and the word that followed each, target_i. For the
next position j it points back into that memory:

    p_cache(w) = Σ_{i ∈ [j−window, j)} softmax_i(θ · h_j·h_i) · 1{target_i = w}
    p(w)       = (1 − λ) · p_vocab(w) + λ · p_cache(w)

so a word that followed contexts like the current one recently becomes likelier — rare names and topic words
repeat within a page. No parameters are learnt; θ (flatness of the attention) and λ (mixing weight) are tuned
on validation (`scripts/tune_cache.py`). The defaults, window 3785, θ 0.662, λ 0.1279, are the seed's WikiText-2
values (sgugger/Adam-experiments, `lm_val_fns.py: my_cache_pointer`), themselves Salesforce awd-lstm-lm's
`pointer.py` defaults (0.6625523432485668 and 0.12785920428335693, found by its authors' search).

Which positions are mixed (`mixing`) — the two public implementations differ, and the seed's perplexities
(52.9 / 50.9 with the cache) come from its own:
- "all" (default; the seed's `my_cache_pointer`): every position of the stream after the first is mixed, over all
  the predecessors it has, up to `window` — a position early in the stream attends to fewer keys. The stream is
  read in chunks of batch size 1; the history (hidden states and their next words) is kept across chunks and
  truncated to the last `window` positions after each chunk.
- "after_window" (Salesforce `pointer.py`): position idx of a chunk is mixed iff `start_idx + idx > window`, where
  start_idx is the history length when the chunk arrives — min(tokens seen, window). That is "global index >
  window" (the first `window` tokens are left unmixed: a warm-up), except that once the history is full, start_idx
  equals window and the first position of every later chunk is *not* mixed (p = p_vocab); one token in 2000 at
  eval_bptt 2000. A mixed position always attends to exactly `window` predecessors.
On a 245k-token test stream the two differ by the first `window` tokens and one token per chunk.

Why vectorised in blocks: pointer.py loops over tokens in Python and multiplies the attention into a one-hot
[window, vocab] history for each one (126M multiply-adds per token at WikiText-2 size). Here a block of queries
takes one matmul against the keys its band can reach (block + window rows), masks the band, softmaxes, and sums
the attention of keys whose target equals the query's target — the vocabulary never appears. Blocks bound the
[block, block + window] score matrix (~20 MB in float32 at the defaults) while keeping the matmul large.
`naive_cache_log_probs` is the per-token transcription of pointer.py, kept as the tests' and benchmark's
reference; tests/lightning_modules/test_neural_cache.py holds one of the seed's `my_cache_pointer` too.

Evaluation only: the public functions run under `torch.no_grad()` and compute in place.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

WINDOW = 3785  # the seed's my_cache_pointer default (pointer.py's --window)
THETA = 0.662  # the seed's default; pointer.py's --theta 0.6625523432485668, rounded as in awd-lstm-lm's README
LAMBDAH = 0.1279  # the seed's `lambd` default; pointer.py's --lambdasm 0.12785920428335693, rounded likewise
MIXING = ("all", "after_window")  # the seed's my_cache_pointer, Salesforce pointer.py
QUERY_BLOCK = 1024  # queries per matmul; 256-1024 cost the same on one CPU core, larger ones waste band work,
# and fewer blocks mean fewer parallel regions (threads) and kernel launches (GPU)


@torch.no_grad()
def cache_target_probs(hidden: Tensor, targets: Tensor, history_hidden: Tensor, history_targets: Tensor,
                       window: int, theta: float | Sequence[float], block: int = QUERY_BLOCK) -> Tensor:
    """p_cache(targets[j]) for every query j of the current chunk, shape [T] — or [len(theta), T] when `theta` is
    a sequence: the scores of each block are computed once and softmaxed at every θ (`scripts/tune_cache.py`).

    Keys are [history (older), current chunk]: `history_hidden` [M, H] / `history_targets` [M] precede
    `hidden` [T, H] / `targets` [T]. Query j attends to the `window` keys strictly before it; with fewer
    predecessors it softmaxes over those it has, and with none its p_cache is 0. Which positions are mixed at
    all is the caller's decision (`NeuralCache.log_probs`). θ must be positive.
    """
    if window <= 0 or block <= 0:
        raise ValueError(f"window ({window}) and block ({block}) must be positive.")
    thetas = [float(theta)] if isinstance(theta, (int, float)) else [float(t) for t in theta]
    if not thetas or min(thetas) <= 0:
        raise ValueError(f"the neural cache's theta must be positive, got {theta}.")
    history_len = history_hidden.shape[0]
    keys = torch.cat([history_hidden.to(hidden), hidden])
    key_targets = torch.cat([history_targets.to(targets), targets])
    out = hidden.new_zeros(len(thetas), hidden.shape[0])
    for first in range(0, len(hidden), block):
        last = min(first + block, len(hidden))
        rows = torch.arange(last - first, device=hidden.device)
        # Row r of the block is the query at key index q0 + r; it sees keys [q0 + r − window, q0 + r).
        q0 = history_len + first
        lo, hi = max(0, q0 - window), q0 + last - first - 1  # the keys the whole block reaches
        if hi <= lo:
            continue  # a one-query block at the stream's very first position: no predecessor, p_cache 0
        scores = hidden[first:last] @ keys[lo:hi].T  # h_j·h_i; θ > 0 scales them below, after the −inf masks
        # Only two triangles can fall outside the band, so only they are masked (not the whole [b, b + window]):
        # keys from q0 on are the block's own positions (row r sees those before q0 + r) ...
        own = scores[:, q0 - lo:]
        own.masked_fill_(torch.arange(own.shape[1], device=hidden.device)[None, :] >= rows[:, None], -math.inf)
        # ... and the oldest keys, which row r has left behind once q0 + r − window passes them.
        oldest = q0 - lo - window  # ≤ 0: the column of row 0's oldest key; row r's is oldest + r
        if oldest + len(rows) - 1 > 0:
            old = scores[:, :oldest + len(rows) - 1]
            old.masked_fill_(torch.arange(old.shape[1], device=hidden.device)[None, :] < oldest + rows[:, None],
                             -math.inf)
        same_word = key_targets[None, lo:hi] == targets[first:last, None]
        for k, scale in enumerate(thetas):
            attention = torch.softmax(scores * scale, dim=1)
            out[k, first:last] = torch.where(same_word, attention, 0.0).sum(dim=1)
        if q0 == 0:
            out[:, 0] = 0.0  # the stream's first position has no predecessor (its row was all −inf, hence NaN)
    return out[0] if isinstance(theta, (int, float)) else out


class NeuralCache:
    """The rolling cache of one evaluation stream: feed it the chunks in order, `reset()` between streams.

    Args:
        window: how many past positions the cache holds (and each mixed position attends to).
        theta: inverse temperature of the attention over the cache (flatter as it goes to 0).
        lambdah: weight of the cache in the mixture, in [0, 1] (pointer.py's `lambdasm`).
        block: queries per matmul in `cache_target_probs` (speed only; results agree to rounding).
        mixing: which positions are mixed: "all" (the seed's `my_cache_pointer`) or "after_window" (Salesforce
            `pointer.py`); see the module docstring.

    The history (hidden states and their next words) stays on the device and in the dtype of the last chunk.
    """

    def __init__(self, window: int = WINDOW, theta: float = THETA, lambdah: float = LAMBDAH,
                 block: int = QUERY_BLOCK, mixing: str = "all"):
        if window <= 0 or block <= 0:
            raise ValueError(f"the neural cache's window ({window}) and block ({block}) must be positive.")
        if not 0.0 <= lambdah <= 1.0:
            raise ValueError(f"the neural cache's lambdah must lie in [0, 1], got {lambdah}.")
        if mixing not in MIXING:
            raise ValueError(f"the neural cache's mixing is {mixing!r}; use one of {MIXING}.")
        self.window, self.theta, self.lambdah, self.block, self.mixing = window, theta, lambdah, block, mixing
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next chunk starts a new stream."""
        self.history_hidden: Tensor | None = None
        self.history_targets: Tensor | None = None

    def __len__(self) -> int:
        """Positions in the history (pointer.py's start_idx for the next chunk); at most `window`."""
        return 0 if self.history_targets is None else len(self.history_targets)

    @torch.no_grad()
    def log_probs(self, vocab_log_probs: Tensor, hidden: Tensor, targets: Tensor) -> Tensor:
        """Mixed log-probability of each target of the next chunk, shape [T]; then remember the chunk.

        Args:
            vocab_log_probs: [T] the model's log p_vocab(targets[j]) (log-softmax gathered at the targets).
            hidden: [T, H] the last RNN layer's raw output at each position.
            targets: [T] the next token at each position (long).

        Positions not mixed (see `mixing` in the module docstring) return `vocab_log_probs` unchanged. Mixed
        ones are logaddexp(log(1 − λ) + log p_vocab, log λ + log p_cache): no exp of log p_vocab, so a tiny
        p_vocab is not rounded away, and p_cache = 0 simply leaves log(1 − λ) + log p_vocab.
        """
        if hidden.dim() != 2 or targets.shape != (hidden.shape[0],) or vocab_log_probs.shape != targets.shape:
            raise ValueError(f"expected vocab_log_probs [T], hidden [T, H], targets [T]; got "
                             f"{tuple(vocab_log_probs.shape)}, {tuple(hidden.shape)}, {tuple(targets.shape)}.")
        start_idx = len(self)
        history_hidden = hidden[:0] if self.history_hidden is None else self.history_hidden.to(hidden)
        history_targets = targets[:0] if self.history_targets is None else self.history_targets.to(targets)

        out = vocab_log_probs.clone()
        if self.mixing == "all":  # the seed: every position but the stream's very first
            first_mixed = 1 if start_idx == 0 else 0
        else:  # pointer.py: start_idx + idx > window
            first_mixed = max(0, self.window + 1 - start_idx)
        if first_mixed < len(targets):
            # Queries from first_mixed on; everything before them (history and earlier chunk rows) is keys.
            keys = torch.cat([history_hidden, hidden[:first_mixed]])[-self.window:]
            key_targets = torch.cat([history_targets, targets[:first_mixed]])[-self.window:]
            p_cache = cache_target_probs(hidden[first_mixed:], targets[first_mixed:], keys, key_targets,
                                         self.window, self.theta, self.block)
            vocab_part = vocab_log_probs[first_mixed:] + math.log1p(-self.lambdah)
            cache_part = p_cache.log() + (math.log(self.lambdah) if self.lambdah > 0 else -math.inf)
            out[first_mixed:] = torch.logaddexp(vocab_part, cache_part.to(vocab_part.dtype))

        self.history_hidden = torch.cat([history_hidden, hidden])[-self.window:]
        self.history_targets = torch.cat([history_targets, targets])[-self.window:]
        return out


@torch.no_grad()
def naive_chunk_log_probs(vocab_probs: Tensor, hidden: Tensor, targets: Tensor,
                          next_word_history: Tensor | None, pointer_history: Tensor | None,
                          window: int = WINDOW, theta: float = THETA,
                          lambdah: float = LAMBDAH) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk of pointer.py's `evaluate` loop, line for line: (log p of each target [T], the histories).

    `vocab_probs` [T, V] is p_vocab; `next_word_history` [M, V] one-hot and `pointer_history` [M, H] are the
    state from the previous chunk (None at the start). The one-hot rows are built with one `one_hot` call per
    chunk rather than pointer.py's NumPy array per token: the same tensor, without a cost that is incidental.
    """
    start_idx = len(next_word_history) if next_word_history is not None else 0
    chunk_one_hot = torch.nn.functional.one_hot(targets, vocab_probs.shape[1]).to(vocab_probs.dtype)
    next_word_history = (chunk_one_hot if next_word_history is None
                         else torch.cat([next_word_history, chunk_one_hot]))
    pointer_history = hidden if pointer_history is None else torch.cat([pointer_history, hidden], dim=0)
    log_probs = []
    for idx, vocab_loss in enumerate(vocab_probs):
        p = vocab_loss
        if start_idx + idx > window:
            valid_next_word = next_word_history[start_idx + idx - window:start_idx + idx]
            valid_pointer_history = pointer_history[start_idx + idx - window:start_idx + idx]
            logits = torch.mv(valid_pointer_history, hidden[idx])
            ptr_attn = torch.softmax(theta * logits, dim=0).view(-1, 1)
            ptr_dist = (ptr_attn.expand_as(valid_next_word) * valid_next_word).sum(0)
            p = lambdah * ptr_dist + (1 - lambdah) * vocab_loss
        log_probs.append(torch.log(p[targets[idx]]))
    return torch.stack(log_probs), next_word_history[-window:], pointer_history[-window:]


def naive_cache_log_probs(vocab_probs: Tensor, hidden: Tensor, targets: Tensor, window: int = WINDOW,
                          theta: float = THETA, lambdah: float = LAMBDAH,
                          chunk_sizes: Sequence[int] | None = None) -> Tensor:
    """pointer.py's cache over a whole stream of N positions, one token at a time: log p of each target, [N].

    `vocab_probs` [N, V], `hidden` [N, H], `targets` [N]. `chunk_sizes` splits the stream as pointer.py's
    bptt chunks do (default: one chunk); it matters only through the first-of-chunk quirk.
    """
    sizes = [len(targets)] if chunk_sizes is None else list(chunk_sizes)
    if sum(sizes) != len(targets) or any(size <= 0 for size in sizes):
        raise ValueError(f"chunk_sizes {sizes} must be positive and add up to the {len(targets)} positions.")
    next_word_history = pointer_history = None
    out, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        chunk, next_word_history, pointer_history = naive_chunk_log_probs(
            vocab_probs[rows], hidden[rows], targets[rows], next_word_history, pointer_history,
            window, theta, lambdah)
        out.append(chunk)
        start += size
    return torch.cat(out)
