"""scripts/export.py: each of the four nets, exported from a cli.py checkpoint, loads back as a torch.export program
without Lightning or this repository's code and gives the checkpoint net's outputs at any batch size; the
weights-only file rebuilds the same net from its constructor arguments."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

import cli
from scripts import export
from tests.conftest import TINY_WRN_ARGS
from tests.datamodules.test_wikitext2 import write_corpus
from tests.test_cli_cars import tiny_cars_config
from tests.test_cli_wikitext2 import tiny_config


def checkpoint_of(args: list[str], path) -> str:
    """A checkpoint of the model `args` build, written after one validation batch (untrained weights do)."""
    run = cli.main([*args, "--config", "configs/trainer/csv_only.yaml", "--trainer.limit_val_batches", "1",
                    "--trainer.enable_progress_bar", "false"], run=False)
    run.trainer.validate(run.model, datamodule=run.datamodule, verbose=False)
    run.trainer.save_checkpoint(path)
    return str(path)


def build(task: str, tmp_path, request) -> str:
    if task == "wrn":
        cifar = request.getfixturevalue("cifar_dir")
        return checkpoint_of(["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(cifar),
                              "--data.download", "false", "--trainer.default_root_dir", str(tmp_path)],
                             tmp_path / "wrn.ckpt")
    if task == "resnet_head":
        override = tiny_cars_config(tmp_path / "tiny.yaml", request.getfixturevalue("cars_root"), tmp_path)
        return checkpoint_of(["--config", "configs/cars.yaml", "--config", str(override)], tmp_path / "cars.ckpt")
    corpus = write_corpus(tmp_path / "data")
    config = "configs/wikitext2_lstm.yaml" if task == "awd_lstm" else "configs/wikitext2_qrnn.yaml"
    return checkpoint_of(["--config", config, "--config", str(tiny_config(tmp_path / "t.yaml", corpus, tmp_path)),
                          "--model.init_args.net.init_args.num_layers", "2"], tmp_path / f"{task}.ckpt")


def inputs(info: dict, batch: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(batch)
    if info["task"] == "image_classification":
        return (torch.randn([batch if d == "batch" else d for d in info["input"]["shape"]], generator=generator),)
    tokens = torch.randint(0, len(info["vocab"]), (batch, info["input"]["tokens"]["shape"][1]), generator=generator)
    state = [torch.randn([batch if d == "batch" else d for d in s["shape"]], generator=generator) * 0.1
             for s in info["input"]["state"]]
    return (tokens, *state)


@pytest.mark.parametrize("task", ["wrn", "resnet_head", "awd_lstm", "qrnn"])
def test_the_exported_program_and_the_weights_file_reproduce_the_checkpoints_net(task, tmp_path, request):
    checkpoint = build(task, tmp_path, request)
    info = export.main(["--ckpt_path", checkpoint, "--out", str(tmp_path / "out"), "--seq_len", "3"])
    saved = json.loads((tmp_path / "out" / "net.json").read_text())
    assert saved == json.loads(json.dumps(info))
    program = torch.export.load(str(tmp_path / "out" / "net.pt2")).module()
    model, _ = export.load_module(checkpoint)
    reference = model.net if info["task"] == "image_classification" else export.LanguageModelStep(
        model.net, 2)  # both nets carry two tensors per layer
    weights = torch.load(tmp_path / "out" / "weights.pt", weights_only=True)
    module, _, name = weights["net"]["class_path"].rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**weights["net"]["init_args"])
    rebuilt.load_state_dict(weights["state_dict"])
    rebuilt = rebuilt.eval() if info["task"] == "image_classification" else export.LanguageModelStep(
        rebuilt.eval(), 2)
    with torch.no_grad():
        for batch in (1, 3):  # the batch size is dynamic
            example = inputs(info, batch)
            expected = reference(*example)
            for got in (program(*example), rebuilt(*example)):
                for a, b in zip(got if isinstance(got, tuple) else (got,),
                                expected if isinstance(expected, tuple) else (expected,)):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if info["task"] == "image_classification":
        assert len(info["classes"]) == model._num_classes(model.net) and len(info["input"]["mean"]) == 3
    else:
        assert info["vocab"][:1] and info["input"]["tokens"]["shape"] == ["batch", 3]


@pytest.mark.slow
def test_the_program_loads_and_runs_where_only_torch_is(tmp_path, request):
    checkpoint = build("qrnn", tmp_path, request)
    info = export.main(["--ckpt_path", checkpoint, "--out", str(tmp_path / "out")])
    example = inputs(info, 2)
    model, _ = export.load_module(checkpoint)
    with torch.no_grad():
        torch.save({"inputs": example, "expected": export.LanguageModelStep(model.net, 2).eval()(*example)},
                   tmp_path / "io.pt")
    script = ("import sys, torch; p = torch.export.load('out/net.pt2').module(); io = torch.load('io.pt'); "
              "got = p(*io['inputs']); assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, io['expected']));"
              " assert not any(m.split('.')[0] in ('pytorch_lightning', 'lightning', 'lightning_modules', 'cli') "
              "for m in sys.modules), 'imported more than torch'; print('ok')")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
