"""scripts/lm.py with a checkpoint written by cli.py: scoring the real WikiText-2 test file gives what `cli.py test`
gives (with and without the cache), streamed; generation is deterministic per seed and reads the prompt as WikiText."""
from __future__ import annotations

import pytest

import cli
from scripts import lm
from tests.conftest import SHARED_DATA
from tests.datamodules.test_wikitext2 import write_corpus
from tests.test_cli_wikitext2 import tiny_config


def fit_tiny(data_dir, root, *extra: str):
    base = ["--config", "configs/wikitext2_lstm.yaml", "--config", "configs/trainer/csv_only.yaml",
            "--config", str(tiny_config(root.parent / "t.yaml", data_dir, root)), *extra]
    return base, cli.main(["fit", *base, "--trainer.max_epochs", "1", "--test_after_fit", "false"])


@pytest.mark.slow
def test_scoring_the_real_test_file_equals_cli_test_with_and_without_the_cache(tmp_path):
    if not (SHARED_DATA / "wikitext-2" / "wiki.test.tokens").is_file():
        pytest.skip(f"real WikiText-2 not available: {SHARED_DATA / 'wikitext-2'} is absent (it ships in ../shared)")
    # The real files, cut to their first 200 lines (about 12k tokens) so that a CPU LSTM reads them in seconds.
    folder = tmp_path / "real" / "wikitext-2"
    folder.mkdir(parents=True)
    for name in ("wiki.valid.tokens", "wiki.test.tokens"):
        lines = (SHARED_DATA / "wikitext-2" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:200]), encoding="utf-8")
    real = ["--data.init_args.data_dir", str(folder.parent), "--data.init_args.train_file", "wiki.valid.tokens",
            "--data.init_args.val_tokens", "2000", "--data.init_args.eval_bptt", "500",
            "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1",
            "--model.init_args.cache_window", "300"]
    base, _ = fit_tiny(folder.parent, tmp_path / "run", *real)
    checkpoint = next((tmp_path / "run").glob("csv/version_0/checkpoints/last.ckpt"))
    tested = cli.main(["test", *base, *real, "--ckpt_path", str(checkpoint)]).trainer.callback_metrics
    scored = lm.main(["score", "--ckpt_path", str(checkpoint), "--file", str(folder / "wiki.test.tokens")])
    assert scored["tokens"] == len(lm.files.read_tokens(folder / "wiki.test.tokens")) - 1  # every prediction
    assert scored["ppl"] == pytest.approx(tested["test/ppl"].item(), rel=1e-5)
    assert scored["ppl_cache"] == pytest.approx(tested["test/ppl_cache"].item(), rel=1e-5)


def test_generation_is_deterministic_per_seed_and_reads_the_prompt_as_wikitext(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    fit_tiny(corpus, tmp_path / "run")
    checkpoint = str(next((tmp_path / "run").glob("csv/version_0/checkpoints/last.ckpt")))
    model, vocab, _ = lm.load(checkpoint)
    prompt = " ".join(vocab[1:4])
    with pytest.warns(UserWarning, match="not in the model's vocabulary, read as <unk>: unheardofword"):
        first = lm.generate(model, vocab, prompt + " unheardofword", tokens=30, temperature=0.9, top_k=5, seed=1)
    again = lm.main(["generate", "--ckpt_path", checkpoint, "--prompt", prompt + " unheardofword", "--tokens", "30",
                     "--temperature", "0.9", "--top_k", "5", "--seed", "1"])
    other = lm.generate(model, vocab, prompt, tokens=30, temperature=0.9, top_k=5, seed=2)
    assert first == again and first.startswith(prompt + " unheardofword") and other != first
    words = first.split()
    assert len(words) + first.count("\n") >= 4 + 30 - first.count("\n")  # the prompt, then 30 sampled words
    assert "<eos>" not in first and all(word in vocab or word == "unheardofword" for word in words)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        lm.generate(model, vocab, prompt, tokens=3, temperature=0)
