"""GPU readiness, checked on the CPU: every task's model trains 2 steps and tests under `precision: bf16-mixed`
(the GPU default), and the image models run in channels-last memory format, so dtype and layout bugs surface
here rather than on a lent GPU machine whose minutes are counted."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cli
from tests.conftest import TINY_WRN_ARGS
from tests.datamodules.test_wikitext2 import write_corpus
from tests.test_cli_cars import tiny_cars_config
from tests.test_cli_wikitext2 import tiny_config

BF16 = ["--trainer.precision", "bf16-mixed", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_model_summary", "false"]


def image_run(task: str, tmp_path, cifar_dir, cars_root):
    if task == "wrn":
        return cli.main(["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar_dir),
                         "--data.download", "false", "--data.batch_size", "8", "--trainer.max_epochs", "1",
                         "--trainer.default_root_dir", str(tmp_path), "--model.init_args.channels_last", "true",
                         *BF16], run=False)
    override = tiny_cars_config(tmp_path / "tiny.yaml", cars_root, tmp_path)  # resnet18, stages of 1 + 2 epochs
    return cli.main(["--config", "configs/cars.yaml", "--config", str(override), "--trainer.max_epochs", "2",
                     "--model.init_args.channels_last", "true", *BF16], run=False)


def record_first(module: nn.Module, kind: type[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of the first `kind` submodule at every training call."""
    seen = []
    first = next(m for m in module.modules() if isinstance(m, kind))
    first.register_forward_hook(lambda m, inputs, out: seen.append((inputs[0], out)) if m.training else None)
    return seen


@pytest.mark.parametrize("task", ["wrn", "resnet_head"])
def test_image_models_train_and_test_in_bf16_and_channels_last_on_cpu(task, tmp_path, cifar_dir, request):
    cars_root = request.getfixturevalue("cars_root") if task == "resnet_head" else None
    run = image_run(task, tmp_path, cifar_dir, cars_root)
    seen = record_first(run.model.net, nn.Conv2d)
    run.trainer.fit(run.model, run.datamodule)
    assert run.trainer.global_step == (4 if task == "resnet_head" else 2)  # 2 batches per epoch (+ a 2nd stage)
    assert run.model.active_stage == (1 if task == "resnet_head" else 0)
    assert math.isfinite(run.trainer.callback_metrics["train/loss"])
    conv_in, conv_out = seen[-1]
    assert conv_out.dtype == torch.bfloat16  # autocast ran the convolutions in bf16 ...
    assert conv_in.is_contiguous(memory_format=torch.channels_last)  # ... on channels-last batches
    weights = [m.weight for m in run.model.net.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.dtype == torch.float32 and w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    tested = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
    assert 0 <= tested["test/acc"] <= 1 and 0 <= tested["test/acc_tta"] <= 1


@pytest.mark.parametrize("config", ["configs/wikitext2_lstm.yaml", "configs/wikitext2_qrnn.yaml"])
def test_language_models_train_and_test_with_the_cache_in_bf16(config, tmp_path):
    corpus = write_corpus(tmp_path / "data")
    run = cli.main(["--config", config, "--config", str(tiny_config(tmp_path / "t.yaml", corpus, tmp_path)),
                    "--model.init_args.net.init_args.num_layers", "2", "--trainer.max_epochs", "1", *BF16],
                   run=False)
    decoded = []
    run.model.net.decoder.register_forward_hook(lambda m, inputs, out: decoded.append(out.dtype))
    before = [p.detach().clone() for p in run.model.net.parameters()]
    run.trainer.fit(run.model, run.datamodule)
    assert run.trainer.global_step == 2 and math.isfinite(run.trainer.callback_metrics["train/loss"])
    assert decoded[0] == torch.bfloat16  # the tied decoder ran under autocast
    assert all(p.dtype == torch.float32 for p in run.model.net.parameters())  # fp32 master weights ...
    assert sum(not torch.equal(b, p) for b, p in zip(before, run.model.net.parameters())) > 0  # ... that moved
    tested = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
    assert math.isfinite(tested["test/ppl"]) and math.isfinite(tested["test/ppl_cache"])
    assert tested["test/ppl_cache"] != tested["test/ppl"]  # the cache mixed something in
