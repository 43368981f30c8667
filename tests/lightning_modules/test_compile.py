"""`compile: true` (lightning_modules/compile.py): every net computes what it computes eagerly, keeps its keys.

Nets are tiny so compilation stays short; the WRN goes through inductor, like every net here (the default).
Dropout is set to 0 where outputs are compared in training mode: compiled code draws its random numbers
differently, so only dropout-free training can be compared value for value.
"""
from __future__ import annotations

import copy
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from datamodules import CIFAR10DataModule, WikiText2DataModule
from lightning_modules import ImageClassifier, LanguageModel
from lightning_modules.compile import compile_net
from lightning_modules.nets import AWDLSTM, QRNNLanguageNet, ResNetWithHead, WideResNet
from lightning_modules.nets.awd_lstm import detach_state
from optim import RNNOneCycleLR
from tests.datamodules.test_wikitext2 import write_corpus

VOCAB = 30
NO_DROPOUT = dict(dropout_input=0.0, dropout_output=0.0, dropout_hidden=0.0, dropout_embedding=0.0, weight_drop=0.0)
RELATIVE = 1e-5  # float32; measured at the largest value of each tensor, since sums run in another order


def assert_close(actual: torch.Tensor, expected: torch.Tensor, relative: float = RELATIVE, what: str = "",
                 floor: float = 0.0) -> None:
    """Every element within `relative` × the tensor's largest magnitude (plus an elementwise `relative`), and never
    closer than `floor` is asked for."""
    scale = expected.abs().max().item() if expected.is_floating_point() and expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=relative, atol=max(relative * scale, floor),
                               msg=lambda m: f"{what} {m}")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """All `nn.Module.compile` calls share one recompile budget per process: give each test an empty cache."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def tiny_wrn() -> WideResNet:
    return WideResNet(num_groups=2, blocks_per_group=1, widen_factor=1)


def image_net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_wrn() if name == "wrn" else ResNetWithHead(num_classes=5, arch="resnet18", weights=None,
                                                              dropout=(0.0, 0.0))


def language_net(name: str, **dropout) -> torch.nn.Module:
    torch.manual_seed(0)
    net_class = AWDLSTM if name == "awd_lstm" else QRNNLanguageNet
    return net_class(VOCAB, embedding_size=8, hidden_size=12, num_layers=3, **dropout)


def graphs_compiled() -> int:
    """Graphs compiled since the test began; fails if dynamo gave up on a frame for too many recompilations."""
    assert not [reason for reason in counters["unimplemented"] if "recompile limit" in reason.lower()]
    return counters["stats"]["unique_graphs"]


def assert_same_grads(compiled: torch.nn.Module, eager: torch.nn.Module) -> None:
    pairs = [(a.grad, b.grad) for a, b in zip(compiled.parameters(), eager.parameters())]
    assert sum(b is not None for _, b in pairs) >= 5
    for a, b in pairs:
        assert (a is None) == (b is None)
        if b is not None:
            # 1e-4: BatchNorm weight/bias gradients are sums over batch × pixels that largely cancel
            assert_close(a, b, relative=1e-4, what="gradient")


@pytest.fixture
def backend(request):
    """Default backend for this test; inductor unless parametrized otherwise, reset afterwards."""
    torch.compiler.set_default_backend(getattr(request, "param", "inductor"))
    yield torch.compiler.get_default_backend()
    torch.compiler.set_default_backend(None)


# The ResNet-18 through inductor takes over a minute to compile on 2 cores: it is traced and differentiated by
# dynamo and AOTAutograd as with inductor, whose kernels for convolutions and BatchNorm the WRN covers.
@pytest.mark.parametrize("name, backend", [("wrn", "inductor"), ("resnet_head", "aot_eager")],
                         indirect=["backend"])
def test_image_nets_give_eager_outputs_and_gradients(name, backend):
    eager = image_net(name)
    compiled = compile_net(copy.deepcopy(eager))
    images = torch.randn(16, 3, 32, 32)
    for mode in ("eval", "train"):  # train: batch statistics, and the running stats they update
        getattr(eager, mode)(), getattr(compiled, mode)()
        out_compiled, out_eager = compiled(images), eager(images)
        assert_close(out_compiled, out_eager, what=mode)
    out_compiled.square().sum().backward()
    out_eager.square().sum().backward()
    assert_same_grads(compiled, eager)
    for key, value in eager.state_dict().items():  # running statistics updated alike
        assert_close(compiled.state_dict()[key], value, what=key)
    assert graphs_compiled() >= 2  # really compiled, once per mode; not a silent eager fallback


@pytest.mark.parametrize("name", ["awd_lstm", "qrnn"])
def test_language_nets_give_eager_outputs_and_gradients_for_every_length(name):
    """Hidden state carried over five batches of different lengths, in eval mode, then in training mode."""
    eager = language_net(name, **NO_DROPOUT)
    compiled = compile_net(copy.deepcopy(eager), dynamic=True)
    stream = torch.randint(VOCAB, (4, 40), generator=torch.Generator().manual_seed(0))  # 4 rows of one text
    for mode in ("eval", "train"):
        getattr(eager, mode)(), getattr(compiled, mode)()
        hidden_compiled = hidden_eager = None
        for index, (start, length) in enumerate(((0, 5), (5, 7), (12, 9), (21, 4), (25, 13))):
            if index == 2:  # from here on only the length changes
                graphs_before_new_lengths = graphs_compiled()
            tokens = stream[:, start:start + length]  # a view, as the datamodule's batches
            out_compiled, out_eager = compiled(tokens, hidden_compiled), eager(tokens, hidden_eager)
            for a, b in zip(out_compiled[:2], out_eager[:2]):  # output and raw output
                assert_close(a, b, what=f"{mode}, length {length}")
            hidden_compiled, hidden_eager = out_compiled.hidden, out_eager.hidden
            if mode == "train" and index == 1:  # gradients through two batches of carried state
                out_compiled.output.square().sum().backward()
                out_eager.output.square().sum().backward()
                assert_same_grads(compiled, eager)
            hidden_compiled, hidden_eager = detach_state(hidden_compiled), detach_state(hidden_eager)
        assert graphs_compiled() == graphs_before_new_lengths  # no recompilation for a new length
    assert graphs_compiled() >= 2
    assert not [reason for reason in counters["graph_break"] if "`out=` tensor" in reason]  # fo_pool not traced


@pytest.mark.parametrize("backend", ["aot_eager"], indirect=True)  # keys and idempotence are dynamo's, not inductor's
def test_state_dict_keys_unchanged_so_checkpoints_load_both_ways(backend):
    eager, compiled = tiny_wrn(), compile_net(tiny_wrn())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled(torch.randn(2, 3, 32, 32))  # compiled for real, then saved
    eager.load_state_dict(compiled.state_dict())  # strict: the same keys, no `_orig_mod.` prefix
    compiled.load_state_dict(tiny_wrn().state_dict())
    assert compile_net(compiled) is compiled and compiled._compiled_call_impl is not None  # idempotent
    assert all(key.startswith("_orig_mod.") for key in torch.compile(tiny_wrn()).state_dict())  # why in place


# SGD rather than Adam in the trainer tests: its step is linear in the gradient, so float rounding stays rounding.
# Adam's first steps are ±lr wherever a gradient is near 0, however it was rounded.
SGD = partial(torch.optim.SGD, lr=0.1, momentum=0.9)


def trainer() -> pl.Trainer:
    return pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0)


def fit_twice(make_model, make_data) -> tuple[pl.LightningModule, pl.LightningModule]:
    """The same model and data trained for two steps, eagerly and compiled, from the same seed."""
    models = []
    for compile in (False, True):
        model = make_model(compile)
        pl.seed_everything(0)  # same shuffling and augmentation for both
        trainer().fit(model, make_data())
        models.append(model)
    return models[0], models[1]


def assert_trained_alike(eager: pl.LightningModule, compiled: pl.LightningModule, initial: dict) -> None:
    """Compiled for real, the same keys, and the two steps changed every tensor by the same amount.

    The changes are compared, not the weights: they are much smaller than the weights, so a wrong gradient
    would hide under a tolerance relative to the weights. 5e-3 of the largest change: BatchNorm bias gradients
    cancel over the batch and keep ~3e-4 of rounding, and a few convolution weights of the WRN were seen ~3e-3
    apart after two momentum steps (fused kernels round otherwise); a wrong gradient is off by the change itself.
    """
    assert compiled.net._compiled_call_impl is not None and eager.net._compiled_call_impl is None
    assert graphs_compiled() >= 1
    assert list(compiled.state_dict()) == list(eager.state_dict()) == [f"net.{key}" for key in initial]
    moved = 0
    for (key, a), b in zip(compiled.state_dict().items(), eager.state_dict().values()):
        start = initial[key.removeprefix("net.")]
        if not b.is_floating_point():
            assert torch.equal(a, b), key
            continue
        # a change is known only to the spacing of float32 around the weight itself (1 ulp of 1.0 is 1.2e-7), and
        # fused kernels round differently by a few of those; a wrong gradient is off by the change's own size
        ulps = 8 * torch.finfo(start.dtype).eps * start.abs().max().item()
        assert_close(a - start, b - start, relative=5e-3, what=key, floor=ulps)
        moved += not torch.equal(b, start)
    assert moved >= len(initial) // 2


def test_image_classifier_trains_the_same_compiled(cifar_dir):
    torch.manual_seed(0)
    initial = tiny_wrn().state_dict()

    def make_model(compile: bool) -> ImageClassifier:
        net = tiny_wrn()
        net.load_state_dict(initial)
        return ImageClassifier(net, optimizer=SGD, tta=0, compile=compile)

    eager, compiled = fit_twice(make_model, lambda: CIFAR10DataModule(str(cifar_dir), batch_size=16))
    assert_trained_alike(eager, compiled, initial)


@pytest.mark.parametrize("name", ["awd_lstm", "qrnn"])
def test_language_model_trains_the_same_compiled(name, tmp_path):
    corpus = write_corpus(tmp_path / "data")
    make_data = partial(WikiText2DataModule, str(corpus), batch_size=4, bptt=12, eval_batch_size=1, eval_bptt=40)
    vocab = make_data().vocab_size
    torch.manual_seed(0)
    initial = (AWDLSTM if name == "awd_lstm" else QRNNLanguageNet)(vocab, 8, 12, 2, **NO_DROPOUT).state_dict()

    def make_model(compile: bool) -> LanguageModel:
        net = (AWDLSTM if name == "awd_lstm" else QRNNLanguageNet)(vocab, 8, 12, 2, **NO_DROPOUT)
        net.load_state_dict(initial)
        return LanguageModel(net, optimizer=SGD, lr_scheduler=partial(RNNOneCycleLR),
                             bptt=12, cache=False, compile=compile)

    eager, compiled = fit_twice(make_model, make_data)
    assert_trained_alike(eager, compiled, initial)
