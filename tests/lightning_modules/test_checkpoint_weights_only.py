"""Every checkpoint our models write holds only plain types: it loads with `torch.load(..., weights_only=True)`
with nothing allow-listed, whether the model was built in Python or by cli.py (whose hyperparameters are the
parsed config), for CIFAR (WRN), Stanford Cars (ResNet + head, two stages) and WikiText-2 (AWD-LSTM + vocabulary).

What used to break it, fixed where it came from: a `Path` given as a datamodule's `data_dir` (now saved as a str)
and `FinetuneStage` dataclasses in the model's hyperparameters (now saved as dicts, `lightning_modules/hparams.py`;
before, only a process that had imported `optim` and its `add_safe_globals` could read them).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

import cli
from datamodules import CIFAR10DataModule, StanfordCarsDataModule, WikiText2DataModule
from lightning_modules import ImageClassifier, LanguageModel
from lightning_modules.nets import AWDLSTM, ResNetWithHead, WideResNet
from optim import FinetuneStage, OneCycleLR, RNNOneCycleLR
from tests.conftest import TINY_WRN_ARGS, make_cifar_folder
from tests.datamodules.test_wikitext2 import write_corpus
from tests.test_cli_cars import tiny_cars_config
from tests.test_cli_wikitext2 import tiny_config as tiny_wikitext_config

STAGES = [FinetuneStage(epochs=1, lr=1e-2, frozen_groups=2), FinetuneStage(epochs=1, lr=3e-3)]


@contextmanager
def nothing_allow_listed() -> Iterator[None]:
    """Forget the classes this process allow-listed for weights_only loading (optim's FinetuneStage, ...), as a
    fresh process that loads the checkpoint without importing this project would."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.add_safe_globals(saved)


def data_for(task: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    if task == "cifar":
        return make_cifar_folder(tmp_path / "cifar")
    if task == "cars":
        return request.getfixturevalue("cars_root")  # skips without the devkit
    return write_corpus(tmp_path / "wikitext")


def built_in_python(task: str, data_dir: Path) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The models as a user builds them in Python, data_dir given as a Path."""
    torch.manual_seed(0)
    if task == "cifar":
        return (ImageClassifier(WideResNet(num_classes=10, num_groups=3, blocks_per_group=1, widen_factor=1), tta=0),
                CIFAR10DataModule(data_dir, batch_size=8))
    if task == "cars":
        return (ImageClassifier(ResNetWithHead(num_classes=196, arch="resnet18", weights=None), tta=0,
                                optimizer=partial(torch.optim.Adam, lr=1e-2), lr_scheduler=partial(OneCycleLR),
                                stages=STAGES),
                StanfordCarsDataModule(data_dir, batch_size=2, num_workers=0, image_size=32))
    data = WikiText2DataModule(data_dir, batch_size=4, bptt=12, eval_batch_size=1, eval_bptt=40)
    return (LanguageModel(AWDLSTM(data.vocab_size, embedding_size=16, hidden_size=24, num_layers=2), bptt=12,
                          optimizer=partial(torch.optim.Adam, lr=5e-3), lr_scheduler=partial(RNNOneCycleLR)), data)


def fit_in_python(task: str, data_dir: Path, out: Path) -> Path:
    model, data = built_in_python(task, data_dir)
    trainer = pl.Trainer(max_epochs=2 if task == "cars" else 1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                         callbacks=[ModelCheckpoint(dirpath=out, filename="last", enable_version_counter=False)])
    trainer.fit(model, data)
    return out / "last.ckpt"


def fit_with_cli(task: str, data_dir: Path, tmp_path: Path) -> Path:
    """`cli.py fit` with the task's config shrunk, the CSV logger only; its own last.ckpt."""
    root = tmp_path / "run"
    if task == "cifar":
        task_args = ["--config", "configs/cifar.yaml", *TINY_WRN_ARGS, "--data.data_dir", str(data_dir),
                     "--data.download", "false", "--data.batch_size", "8"]
    elif task == "cars":
        task_args = ["--config", "configs/cars.yaml",
                     "--config", str(tiny_cars_config(tmp_path / "tiny.yaml", data_dir, root))]
    else:
        task_args = ["--config", "configs/wikitext2_lstm.yaml",
                     "--config", str(tiny_wikitext_config(tmp_path / "tiny.yaml", data_dir, root))]
    (tmp_path / "csv.yaml").write_text(yaml.safe_dump({"trainer": {
        "max_epochs": 2 if task == "cars" else 1, "default_root_dir": str(root), "enable_progress_bar": False,
        "logger": [{"class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": ".", "name": "csv"}}]}}))
    cli.main(["fit", *task_args, "--config", str(tmp_path / "csv.yaml"), "--test_after_fit", "false"])
    return root / "csv" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.filterwarnings("ignore:trainer.max_epochs .* stops before the end of model.stages")
@pytest.mark.parametrize("made_by", ["python", "cli"])
@pytest.mark.parametrize("task", ["cifar", "cars", "wikitext"])
def test_checkpoints_load_with_weights_only_and_nothing_allow_listed(task, made_by, tmp_path, request):
    data_dir = data_for(task, tmp_path, request)
    if made_by == "python":
        path = fit_in_python(task, data_dir, tmp_path / "checkpoints")
    else:
        path = fit_with_cli(task, data_dir, tmp_path)
    with nothing_allow_listed():
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["data_dir"] == str(data_dir)
    if made_by == "cli":  # the configs' callbacks: their states are in it too
        assert {"RNGStateCheckpoint", "ElapsedTime"} & set(checkpoint["callbacks"])
    if task == "wikitext":
        assert checkpoint["WikiText2DataModule"]["vocab"]  # the datamodule's state: the vocabulary
    if task == "cars":
        assert checkpoint["finetune_stage"] == 1 and len(checkpoint["hyper_parameters"]["stages"]) == 2


def test_stages_saved_as_dicts_rebuild_the_same_stages(cars_root, tmp_path):
    path = fit_in_python("cars", cars_root, tmp_path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["stages"][0] == {
        "epochs": 1, "lr": 1e-2, "frozen_groups": 2, "lr_multipliers": None}
    net = ResNetWithHead(num_classes=196, arch="resnet18", weights=None)
    reloaded = ImageClassifier.load_from_checkpoint(path, net=net, weights_only=True)
    assert reloaded.stages == STAGES and reloaded.active_stage == 1
