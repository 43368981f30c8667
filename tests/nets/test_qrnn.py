"""The QRNN layer's contract: the step-by-step reference, shapes, carried state, weight drop, gradients, pool methods."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.nets import qrnn
from lightning_modules.nets.qrnn import QRNNLayer


def reference_layer(layer: QRNNLayer, x: torch.Tensor, c: torch.Tensor, prev_x: torch.Tensor) -> torch.Tensor:
    """The QRNN written out one step at a time from the layer's own Linear: [Z | F | O] over concat(x_t, x_{t-1})."""
    outputs = []
    for t in range(x.shape[1]):
        source = torch.cat([x[:, t], prev_x], 1) if layer.window == 2 else x[:, t]
        z, f, o = layer.linear(source).chunk(3, dim=1)
        c = torch.sigmoid(f) * torch.tanh(z) + (1 - torch.sigmoid(f)) * c
        outputs.append(torch.sigmoid(o) * c)
        prev_x = x[:, t]
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("window", [1, 2])
def test_layer_matches_step_by_step_reference(window):
    torch.manual_seed(0)
    layer = QRNNLayer(5, 7, window=window).eval()
    x, c0, prev_x = torch.randn(3, 6, 5), torch.randn(3, 7), torch.randn(3, 5)
    h, (c_last, last_x) = layer(x, (c0, prev_x if window == 2 else x.new_zeros(3, 0)))
    expected = reference_layer(layer, x, c0, prev_x)
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window,output_gate", [(1, True), (2, True), (1, False), (2, False)])
def test_layer_shapes(window, output_gate):
    layer = QRNNLayer(5, 7, window=window, output_gate=output_gate)
    assert layer.linear.weight.shape == ((3 if output_gate else 2) * 7, window * 5)
    h, (c_last, prev_x) = layer(torch.randn(4, 6, 5))
    assert h.shape == (4, 6, 7) and c_last.shape == (4, 7)
    assert prev_x.shape == ((4, 5) if window == 2 else (4, 0))
    if not output_gate:  # h = c, so the last output is the carried state
        torch.testing.assert_close(h[:, -1], c_last)


@pytest.mark.parametrize("window", [1, 2])
def test_two_halves_with_carried_state_equal_the_whole(window):
    torch.manual_seed(0)
    layer = QRNNLayer(5, 7, window=window, weight_drop=0.5).eval()
    x = torch.randn(3, 11, 5)
    whole, (c_whole, _) = layer(x)
    first, state = layer(x[:, :4])
    second, (c_second, _) = layer(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    torch.testing.assert_close(c_second, c_whole)
    if window == 2:  # the previous batch's last input matters: dropping it changes the first step
        torch.testing.assert_close(state[1], x[:, 3])
        restarted, _ = layer(x[:, 4:], (state[0], torch.zeros_like(state[1])))
        assert not torch.allclose(restarted[:, 0], whole[:, 4])
        expected = reference_layer(layer, x[:, 4:5], state[0], torch.zeros(3, 5))
        torch.testing.assert_close(restarted[:, :1], expected)


def test_weight_drop_only_in_training_with_one_mask_for_the_whole_call():
    torch.manual_seed(0)
    layer = QRNNLayer(5, 7, window=2, weight_drop=0.5)
    x = torch.randn(3, 8, 5)
    weight = layer.linear.weight.detach().clone()

    layer.eval()
    plain = QRNNLayer(5, 7, window=2).eval()
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x)[0], layer(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(layer(x)[0], plain(x)[0], rtol=0, atol=0)

    layer.train()
    torch.manual_seed(1)
    dropped_out, _ = layer(x)
    assert not torch.allclose(dropped_out, layer(x)[0])  # a fresh mask per call
    torch.manual_seed(1)
    dropped_weight = F.dropout(weight, 0.5, training=True)  # the mask that call drew
    with torch.no_grad():
        plain.linear.weight.copy_(dropped_weight)
    # One fixed dropped matrix for every sample and step reproduces the training output exactly.
    torch.testing.assert_close(dropped_out, plain(x)[0])
    torch.testing.assert_close(layer.linear.weight.detach(), weight, rtol=0, atol=0)  # the parameter is untouched

    layer.zero_grad()
    torch.manual_seed(1)
    layer(x)[0].square().sum().backward()
    grad = layer.linear.weight.grad
    assert (grad[dropped_weight == 0] == 0).all()  # dropped connections get no gradient...
    assert (grad[dropped_weight != 0] != 0).float().mean() > 0.9  # ...the kept ones do
    assert layer.linear.bias.grad.abs().sum() > 0


def test_gradient_reaches_the_weights_and_through_the_returned_state():
    torch.manual_seed(0)
    layer = QRNNLayer(5, 7, window=2)
    x = torch.randn(3, 6, 5, requires_grad=True)
    h, (c_last, prev_x) = layer(x)
    assert c_last.requires_grad and prev_x.requires_grad  # not detached: the caller decides
    h.sum().backward(retain_graph=True)
    assert layer.linear.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    x.grad = None
    h2, _ = layer(torch.randn(3, 6, 5), (c_last, prev_x))  # a second batch fed the undetached state...
    h2[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0  # ...reaches the first batch's input through c_last and prev_x


def test_pool_method_is_checked_shown_and_used(monkeypatch):
    with pytest.raises(ValueError, match="pool_method must be one of auto, sequential, chunked, triton; got 'scan'"):
        QRNNLayer(5, 7, pool_method="scan")
    layer = QRNNLayer(5, 7, pool_method="chunked")
    assert "pool_method='chunked'" in repr(layer)
    asked = []
    real = qrnn.fo_pool
    monkeypatch.setattr(qrnn, "fo_pool", lambda *args, method: asked.append(method) or real(*args, method=method))
    layer(torch.randn(2, 3, 5))
    net = qrnn.QRNNLanguageNet(vocab_size=11, embedding_size=4, hidden_size=6, num_layers=2, pool_method="sequential")
    net(torch.randint(11, (2, 3)))
    assert asked == ["chunked", "sequential", "sequential"]  # the layer's own, then each of the net's two layers
