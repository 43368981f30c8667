"""AWD-LSTM's regularisers behave as named: locked masks shared over time, word-level embedding dropout,
DropConnect on the hidden-to-hidden weights that gradients still reach, tied weights, state carried over."""
from __future__ import annotations

import torch

from lightning_modules.nets.awd_lstm import AWDLSTM, WeightDropLSTM, detach_state, embedding_dropout, locked_dropout


def small(**kwargs) -> AWDLSTM:
    torch.manual_seed(0)
    return AWDLSTM(**{"vocab_size": 50, "embedding_size": 8, "hidden_size": 12, "num_layers": 3, **kwargs})


def test_seed_sizes_and_tied_weights():
    net = AWDLSTM(vocab_size=33278)
    sizes = [(layer.lstm.input_size, layer.lstm.hidden_size) for layer in net.layers]
    assert sizes == [(400, 1150), (1150, 1150), (1150, 400)]
    assert net.decoder.weight is net.encoder.weight and net.decoder.bias is not None
    embedding = 33278 * 400
    lstm = lambda i, h: 4 * h * (i + h) + 2 * 4 * h  # noqa: E731  (weights ih, hh and two biases)
    expected = embedding + lstm(400, 1150) + lstm(1150, 1150) + lstm(1150, 400) + 33278  # + decoder bias
    assert sum(p.numel() for p in net.parameters()) == expected == 33_556_078  # the paper's "33M" for WikiText-2


def test_locked_dropout_shares_one_mask_across_time():
    x = torch.ones(3, 20, 6)
    out = locked_dropout(x, 0.5, training=True)
    assert torch.equal(out, out[:, :1].expand_as(out))  # every time step has the same mask
    assert set(out.unique().tolist()) <= {0.0, 2.0} and (out == 0).any()
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_embedding_dropout_drops_whole_words():
    embedding = torch.nn.Embedding(10, 4)
    tokens = torch.tensor([[1, 1, 2, 2, 3, 3] * 5])
    torch.manual_seed(1)
    out = embedding_dropout(embedding, tokens, 0.5, training=True)
    zero = (out == 0).all(-1)[0]
    for word in (1, 2, 3):  # a word is dropped everywhere or nowhere
        assert zero[tokens[0] == word].all() or not zero[tokens[0] == word].any()
    kept = ~zero
    torch.testing.assert_close(out[0, kept], 2 * embedding.weight[tokens[0, kept]])


def test_weight_drop_masks_hidden_weights_in_training_and_gradients_reach_them():
    layer = WeightDropLSTM(4, 6, weight_drop=0.5)
    x = torch.randn(2, 7, 4)
    layer.eval()
    out_eval, _ = layer(x)
    torch.testing.assert_close(layer(x)[0], out_eval)  # eval: deterministic, no mask
    torch.testing.assert_close(out_eval, layer.lstm(x)[0])
    layer.train()
    torch.manual_seed(0)
    out_train, _ = layer(x)
    assert not torch.allclose(out_train, out_eval)
    out_train.sum().backward()
    grad = layer.lstm.weight_hh_l0.grad
    assert grad is not None and (grad == 0).any() and (grad != 0).any()  # dropped weights get no gradient
    assert [n for n, _ in layer.named_parameters()].count("lstm.weight_hh_l0") == 1  # one real parameter


def test_state_carries_across_batches():
    net = small().eval()
    tokens = torch.randint(50, (2, 30))
    whole = net(tokens).output
    first = net(tokens[:, :13])
    second = net(tokens[:, 13:], detach_state(first.hidden))
    torch.testing.assert_close(torch.cat([first.output, second.output], 1), whole, atol=1e-5, rtol=1e-5)


def test_outputs_and_raw_outputs():
    net = small().train()
    out = net(torch.randint(50, (2, 9)))
    assert out.output.shape == out.raw_output.shape == (2, 9, 8) and len(out.hidden) == 3
    assert (out.output == 0).any() and not (out.raw_output == 0).any()  # output dropout on output only
