"""Muon + AdamW in one optimizer (optim/muon.py): which parameters each side takes, and the reference's update."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from muon import SingleDeviceMuonWithAuxAdam
from torch import nn

from lightning_modules.nets import AWDLSTM, QRNNLanguageNet, ResNetWithHead, WideResNet
from optim import (MuonWithAuxAdamW, apply_lr_multipliers, build_optimizer, describe_split, hidden_matrix_names,
                   param_groups, split_hidden_matrices)


def test_wide_resnet_convs_go_to_muon_and_norms_and_classifier_to_adamw():
    net = WideResNet(num_classes=10, num_groups=3, blocks_per_group=1, widen_factor=1)
    hidden = set(hidden_matrix_names(net))
    convs = {f"{name}.weight" for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert hidden == convs
    assert "head.4.weight" not in hidden  # the classifier
    assert describe_split(net).startswith(f"Muon takes {len(convs)} tensors")


@pytest.mark.parametrize("net_class", [AWDLSTM, QRNNLanguageNet])
def test_language_nets_give_muon_the_recurrent_matrices_and_adamw_the_tied_embedding(net_class):
    net = net_class(vocab_size=50, embedding_size=8, hidden_size=16, num_layers=2)
    hidden = set(hidden_matrix_names(net))
    matrices = {name for name, p in net.named_parameters() if p.ndim == 2 and not name.startswith(("encoder", "decoder"))}
    assert hidden == matrices and hidden
    assert net.decoder.weight is net.encoder.weight  # tied: excluded by identity


def test_resnet_head_keeps_the_last_linear_for_adamw_and_gives_the_hidden_one_to_muon():
    net = ResNetWithHead(num_classes=5, arch="resnet18", weights=None)
    linears = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    hidden = set(hidden_matrix_names(net))
    assert f"{linears[-1]}.weight" not in hidden
    assert all(f"{name}.weight" in hidden for name in linears[:-1])


def test_a_step_on_matrices_equals_the_reference_optimizer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3))
    reference_net = nn.Sequential(*(nn.Linear(m.in_features, m.out_features) for m in net))
    reference_net.load_state_dict(net.state_dict())
    ours = MuonWithAuxAdamW(split_hidden_matrices([{"params": list(net.parameters())}], net), lr=0.05,
                            weight_decay=0.01, adamw_lr=1e-2, adamw_eps=1e-10, adamw_weight_decay=0.1)
    hidden = [reference_net[0].weight, reference_net[1].weight]
    rest = [p for p in reference_net.parameters() if all(p is not h for h in hidden)]
    reference = SingleDeviceMuonWithAuxAdam([
        dict(params=hidden, use_muon=True, lr=0.05, momentum=0.95, weight_decay=0.01),
        dict(params=rest, use_muon=False, lr=1e-2, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.1)])
    x = torch.randn(16, 6)
    for _ in range(3):
        for model, optimizer in ((net, ours), (reference_net, reference)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for mine, theirs in zip(net.parameters(), reference_net.parameters()):
        assert torch.equal(mine, theirs)


def test_a_conv_filter_is_updated_as_the_reference_updates_its_matrix_view():
    """The PyPI reference fails on a 4-D weight; ours applies the 2-D update reshaped — the same numbers as the
    reference on the filter viewed as a matrix."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    initial = conv.weight.detach().clone()
    matrix = nn.Parameter(conv.weight.detach().reshape(4, -1).clone())
    grad = torch.randn_like(conv.weight)
    conv.weight.grad, matrix.grad = grad.clone(), grad.reshape(4, -1).clone()
    MuonWithAuxAdamW([{"params": [conv.weight], "use_muon": True}], lr=0.02).step()
    SingleDeviceMuonWithAuxAdam([dict(params=[matrix], use_muon=True, lr=0.02)]).step()
    assert torch.equal(conv.weight.detach().reshape(4, -1), matrix.detach())
    channels_last = nn.Conv2d(3, 4, 3, bias=False).to(memory_format=torch.channels_last)  # --channels_last true
    channels_last.weight.data.copy_(initial)
    channels_last.weight.grad = grad.clone().to(memory_format=torch.channels_last)
    MuonWithAuxAdamW([{"params": [channels_last.weight], "use_muon": True}], lr=0.02).step()
    assert torch.equal(channels_last.weight.detach(), conv.weight.detach())
    with pytest.raises(RuntimeError, match="must match"):  # the reference on the 4-D filter itself
        conv.weight.grad = grad.clone()
        SingleDeviceMuonWithAuxAdam([dict(params=[conv.weight], use_muon=True, lr=0.02)]).step()


def test_groups_keep_their_multiplier_and_each_side_its_lr_and_closure_is_called():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    groups = param_groups([net[0], net[1]], lr_multipliers=[0.5, 1.0])
    optimizer = apply_lr_multipliers(build_optimizer(partial(MuonWithAuxAdamW, lr=0.02, adamw_lr=1e-3), groups, net))
    lrs = sorted((g["use_muon"], g["lr_multiplier"], g["lr"]) for g in optimizer.param_groups)
    assert lrs == [(False, 0.5, pytest.approx(5e-4)), (False, 1.0, pytest.approx(1e-3)), (True, 0.5, pytest.approx(0.01))]
    calls = []

    def closure():
        calls.append(1)
        loss = net(torch.ones(1, 4)).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure) is not None and calls == [1]


def test_other_optimizers_get_the_groups_unsplit_and_a_plain_list_is_refused_in_one_sentence():
    net = nn.Linear(4, 2)
    adamw = build_optimizer(partial(torch.optim.AdamW, lr=1e-3), [{"params": list(net.parameters())}], net)
    assert len(adamw.param_groups) == 1 and "use_muon" not in adamw.param_groups[0]
    with pytest.raises(ValueError, match="needs param groups split into Muon and AdamW parts"):
        MuonWithAuxAdamW(list(net.parameters()))
