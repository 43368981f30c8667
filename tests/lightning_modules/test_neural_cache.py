"""The vectorised neural cache computes exactly what the seed's `my_cache_pointer` (its default) and Salesforce's
pointer.py (`mixing="after_window"`) compute with their per-token loops, chunk by chunk."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.neural_cache import NeuralCache, cache_target_probs, naive_cache_log_probs

VOCAB, HIDDEN = 11, 16  # a small vocabulary, so a target often occurs in the window and the cache matters


def stream(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """p_vocab (softmax of random logits) [n, V], hidden [n, H], targets [n] from a small vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, VOCAB, generator=generator, dtype=dtype), dim=1)
    hidden = torch.randn(n, HIDDEN, generator=generator, dtype=dtype)
    targets = torch.randint(0, VOCAB, (n,), generator=generator)
    return probs, hidden, targets


def target_log_probs(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return probs.gather(1, targets[:, None]).squeeze(1).log()


def feed(cache: NeuralCache, probs: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor,
         sizes: list[int]) -> torch.Tensor:
    """Run the stream through `cache` in chunks of `sizes`, as LanguageModel's test steps do."""
    out, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        out.append(cache.log_probs(target_log_probs(probs[rows], targets[rows]), hidden[rows], targets[rows]))
        start += size
    return torch.cat(out)


def seed_cache_pointer(vocab_probs: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor, window: int,
                       theta: float, lambd: float, chunk_sizes: list[int]) -> torch.Tensor:
    """The seed's `my_cache_pointer` (sgugger/Adam-experiments, lm_val_fns.py), transcribed line for line, on a
    stream already run through the model: per chunk p_vocab [T, V], the last layer's raw output [T, H] and the
    targets; log p of every target, [N]. `scale` is the seed's default 1; its mean over the stream is left to the
    caller. One-hot history rows and a per-token loop, as the seed wrote them."""
    targ_history, hid_history, out, first = None, None, [], 0
    for size in chunk_sizes:
        p_vocab, hiddens, chunk_targets = (t[first:first + size] for t in (vocab_probs, hidden, targets))
        first += size
        start = 0 if targ_history is None else targ_history.size(0)
        one_hot = torch.nn.functional.one_hot(chunk_targets, VOCAB).to(p_vocab.dtype)
        targ_history = one_hot if targ_history is None else torch.cat([targ_history, one_hot])
        hid_history = hiddens if hid_history is None else torch.cat([hid_history, hiddens])
        for i, pv in enumerate(p_vocab):
            p = pv
            if start + i > 0:
                lo = 0 if start + i <= window else start + i - window
                targ_cache, hid_cache = targ_history[lo:start + i], hid_history[lo:start + i]
                all_dot_prods = torch.mv(theta * hid_cache, hiddens[i])
                exp_dot_prods = torch.softmax(all_dot_prods, dim=0).unsqueeze(1)
                p_cache = (exp_dot_prods.expand_as(targ_cache) * targ_cache).sum(0).squeeze()
                p = (1 - lambd) * pv + lambd * p_cache
            out.append(torch.log(p[chunk_targets[i]]))
        targ_history = targ_history[-window:]
        hid_history = hid_history[-window:]
    return torch.stack(out)


@pytest.mark.parametrize("window, sizes", [
    (7, [3, 5, 40, 1, 100, 2, 149]),  # window far shorter than the stream; chunks below, at and above it
    (50, [20, 20, 20, 7, 130, 1, 50, 52]),  # the window fills across three chunks
    (50, [300]),  # one chunk
    (500, [64, 64, 64, 108]),  # window longer than the whole stream: every position sees all its predecessors
])
@pytest.mark.parametrize("block", [4, 1024])  # many blocks per chunk, and one
def test_default_is_the_seeds_my_cache_pointer(window, sizes, block):
    probs, hidden, targets = stream(sum(sizes), seed=3)
    theta, lambd = 0.662, 0.3
    expected = seed_cache_pointer(probs, hidden, targets, window, theta, lambd, sizes)
    got = feed(NeuralCache(window, theta, lambd, block=block), probs, hidden, targets, sizes)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    mixed = got != target_log_probs(probs, targets)
    assert not mixed[0] and mixed[1:].all()  # every position but the stream's first, from the second token on
    assert (got != feed(NeuralCache(window, theta, lambd, mixing="after_window"), probs, hidden, targets, sizes)).any()


@pytest.mark.parametrize("window, sizes", [
    (7, [3, 5, 40, 1, 100, 2, 149]),  # chunks below, at and far above the window, one of a single token
    (50, [20, 20, 20, 7, 130, 1, 50, 52]),  # the window is filled across three chunks
    (50, [300]),  # one chunk: pointer.py's rule is then exactly "global index > window"
])
@pytest.mark.parametrize("block", [4, 1024])  # many blocks per chunk, and one
def test_matches_pointer_py_loop(window, sizes, block):
    probs, hidden, targets = stream(sum(sizes))
    theta, lambdah = 0.662, 0.3
    expected = naive_cache_log_probs(probs, hidden, targets, window, theta, lambdah, chunk_sizes=sizes)
    cache = NeuralCache(window, theta, lambdah, block=block, mixing="after_window")
    got = feed(cache, probs, hidden, targets, sizes)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert len(cache) == window and cache.history_hidden.dtype == torch.float64
    mixed = got != target_log_probs(probs, targets)
    assert mixed.sum() > 0.9 * (len(targets) - window)  # the comparison is not vacuous


def test_pointer_py_leaves_the_first_positions_and_later_chunk_starts_unmixed():
    """pointer.py: global index ≤ window is p_vocab exactly; so is index 0 of every chunk once the history is full."""
    window, sizes = 7, [4, 6, 9, 9, 9]
    probs, hidden, targets = stream(sum(sizes), seed=1)
    got = feed(NeuralCache(window, 0.662, 0.2, mixing="after_window"), probs, hidden, targets, sizes)
    vocab = target_log_probs(probs, targets)
    assert torch.equal(got[:window + 1], vocab[:window + 1])
    chunk_starts = [10, 19, 28]  # history is full (7 positions) when each of these chunks arrives
    assert torch.equal(got[chunk_starts], vocab[chunk_starts])
    rest = [j for j in range(window + 1, len(targets)) if j not in chunk_starts]
    assert (got[rest] != vocab[rest]).all()


def test_cache_probs_are_a_distribution_over_the_window():
    generator = torch.Generator().manual_seed(2)
    history = torch.randn(30, HIDDEN, generator=generator, dtype=torch.float64)
    history_targets = torch.randint(0, VOCAB, (30,), generator=generator)
    query = torch.randn(1, HIDDEN, generator=generator, dtype=torch.float64)
    per_word = torch.cat([cache_target_probs(query, torch.tensor([w]), history, history_targets, 20, 0.662)
                          for w in range(VOCAB)])
    assert (per_word >= 0).all()
    torch.testing.assert_close(per_word.sum(), torch.tensor(1.0, dtype=torch.float64))
    absent = sorted(set(range(VOCAB)) - set(history_targets[-20:].tolist()))
    assert absent and (per_word[absent] == 0).all()  # only the last `window` history rows count

    probs, hidden, targets = stream(200, seed=3)
    p = cache_target_probs(hidden[100:], targets[100:], hidden[:100], targets[:100], window=25, theta=0.662,
                           block=16)
    assert ((p >= 0) & (p <= 1 + 1e-12)).all() and (p > 0).any()


@pytest.mark.parametrize("history, block", [(0, 3), (6, 5), (40, 64)])
def test_cache_probs_match_a_direct_softmax_per_query(history, block):
    """Including queries with fewer than `window` predecessors, which softmax over those they have."""
    window, theta = 12, 0.662
    _, hidden, targets = stream(history + 30, seed=8)
    got = cache_target_probs(hidden[history:], targets[history:], hidden[:history], targets[:history],
                             window, theta, block)
    expected = torch.zeros(30, dtype=torch.float64)
    for j in range(history, history + 30):
        keys = range(max(0, j - window), j)
        if keys:
            attention = torch.softmax(theta * hidden[list(keys)] @ hidden[j], dim=0)
            expected[j - history] = attention[targets[list(keys)] == targets[j]].sum()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_cache_prob_is_one_when_every_predecessor_had_the_target():
    _, hidden, _ = stream(40, seed=4)
    same = torch.full((40,), 3)
    p = cache_target_probs(hidden[10:], same[10:], hidden[:10], same[:10], window=15, theta=0.662, block=8)
    torch.testing.assert_close(p, torch.ones(30, dtype=torch.float64))
    first = cache_target_probs(hidden, same, hidden[:0], same[:0], window=15, theta=0.662, block=8)
    assert first[0] == 0  # no predecessor: well-defined, no cache mass
    torch.testing.assert_close(first[1:], torch.ones(39, dtype=torch.float64))


def test_lambda_zero_is_the_vocabulary_model():
    probs, hidden, targets = stream(120, seed=5)
    got = feed(NeuralCache(10, 0.662, 0.0), probs, hidden, targets, [50, 70])
    assert torch.equal(got, target_log_probs(probs, targets))


def test_reset_forgets_the_history():
    probs, hidden, targets = stream(60, seed=6)
    cache = NeuralCache(8, 0.662, 0.3)
    feed(cache, probs, hidden, targets, [30])
    assert len(cache) == 8
    cache.reset()
    assert len(cache) == 0 and cache.history_hidden is None
    again = feed(cache, probs[30:], hidden[30:], targets[30:], [30])
    fresh = feed(NeuralCache(8, 0.662, 0.3), probs[30:], hidden[30:], targets[30:], [30])
    assert torch.equal(again, fresh)


def test_float32_history_follows_the_inputs_and_stays_close_to_float64():
    probs, hidden, targets = stream(90, seed=7)
    cache = NeuralCache(20, 0.662, 0.1279)
    got = feed(cache, probs.float(), hidden.float(), targets, [45, 45])
    assert got.dtype == cache.history_hidden.dtype == torch.float32
    expected = feed(NeuralCache(20, 0.662, 0.1279), probs, hidden, targets, [45, 45])
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


def test_mixing_is_exact_for_tiny_vocabulary_probabilities():
    """log p stays finite and right where p_vocab underflows exp: the cache carries the mass."""
    cache = NeuralCache(window=2, theta=1.0, lambdah=0.5)
    hidden = torch.zeros(4, 2, dtype=torch.float64)
    targets = torch.tensor([1, 1, 1, 1])
    out = cache.log_probs(torch.tensor([0.0, 0.0, 0.0, -2000.0], dtype=torch.float64), hidden, targets)
    assert out[3].item() == pytest.approx(math.log(0.5))  # λ · p_cache(=1); p_vocab = e^−2000 ≈ 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="lambdah"):
        NeuralCache(lambdah=1.5)
    with pytest.raises(ValueError, match="window"):
        NeuralCache(window=0)
    with pytest.raises(ValueError, match="mixing is 'pointer'"):
        NeuralCache(mixing="pointer")
    with pytest.raises(ValueError, match=r"hidden \[T, H\]"):
        NeuralCache().log_probs(torch.zeros(3), torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="add up"):
        naive_cache_log_probs(*stream(10), chunk_sizes=[4, 4])
