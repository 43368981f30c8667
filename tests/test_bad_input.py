"""Bad input through `cli.py fit`, in process: one sentence on stderr that names the field or file and the fix,
exit status 2, no traceback, and nothing written under `trainer.default_root_dir` (the run never started).

docs/RELIABILITY.md lists every case with the test that holds it; the datamodules' own tests check the same
sentences at the file level (tests/datamodules/).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

import cli
from cli_checks import read_checkpoint, state_problem
from lightning_modules import ImageClassifier
from lightning_modules.nets import WideResNet
from tests.conftest import TINY_WRN_ARGS
from tests.datamodules.test_wikitext2 import write_corpus
from tests.test_cli_wikitext2 import tiny_config


def assert_refused(capsys, root: Path, message: str, *args: str, config: str = "configs/cifar.yaml") -> None:
    """Runs `cli.py fit`; it must stop with exit 2 and one `cli.py: error:` sentence matching `message`, no
    traceback, and leave `root` empty or absent."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fit", "--config", config, *(TINY_WRN_ARGS if "cifar" in config else []),
                  "--trainer.enable_progress_bar", "false",
                  "--trainer.default_root_dir", str(root), *args])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "Traceback" not in err
    sentence = err.strip().splitlines()[-1]
    assert sentence.startswith("cli.py: error: "), err
    assert re.search(message, sentence.removeprefix("cli.py: error: ")), sentence
    assert not root.exists() or not any(root.iterdir()), f"the refused run wrote {list(root.rglob('*'))}"


def yaml_file(tmp_path: Path, content: dict) -> str:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


@pytest.fixture
def data_args(cifar_dir) -> list[str]:
    return ["--data.init_args.data_dir", str(cifar_dir), "--data.init_args.download", "false",
            "--data.init_args.batch_size", "16"]


# --- config typos and wrong types: the field as written, and what it probably meant ------------------------

@pytest.mark.parametrize("args, message", [
    (["--trainer.max_epocs", "3"], r"^--trainer.max_epocs is not an option; did you mean --trainer.max_epochs\?"),
    (["--model.init_args.optimizer.init_args.weight_decy", "0.1"],
     r"^model.init_args.optimizer.init_args.weight_decy is not an argument of torch.optim.AdamW; did you mean "
     r"weight_decay\?$"),
    (["--trainer.max_epochs", "abc"], r"^trainer.max_epochs is 'abc', not a valid value \(expected int\)"),
    (["--model.init_args.optimizer.init_args.lr", "fast"],
     r"^model.init_args.optimizer.init_args.lr is 'fast', not a valid value \(expected float"),
], ids=["cli option", "optimizer argument", "int field", "float field"])
def test_command_line_typos_and_wrong_types_name_the_field(capsys, tmp_path, data_args, args, message):
    assert_refused(capsys, tmp_path / "run", message, *data_args, *args)


@pytest.mark.parametrize("content, message", [
    ({"trainer": {"max_epoch": 3}},
     r"^trainer.max_epoch in the config is not an option; did you mean trainer.max_epochs\?"),
    ({"model": {"init_args": {"ttta": 4}}},
     r"^model.init_args.ttta is not an argument of lightning_modules.ImageClassifier; did you mean tta\?"),
    ({"model": {"init_args": {"net": {"init_args": {"widen": 4}}}}},
     r"^model.init_args.net.init_args.widen is not an argument of lightning_modules.nets.WideResNet; did you "
     r"mean widen_factor\?"),
    ({"data": {"init_args": {"batchsize": 4}}},
     r"^data.init_args.batchsize is not an argument of datamodules.CIFAR10DataModule; did you mean batch_size\?"),
], ids=["trainer key", "model key", "net key", "data key"])
def test_config_file_typos_name_the_key_and_suggest_the_right_one(capsys, tmp_path, data_args, content, message):
    assert_refused(capsys, tmp_path / "run", message, *data_args, "--config", yaml_file(tmp_path, content))


# --- config files that cannot be read: the file as given, where, and what is wrong ---------------------------

@pytest.mark.parametrize("text, message", [
    ("trainer:\n  max_epochs: 3\n   devices: 1\n",
     r"^--config my_overrides.yaml is not valid YAML: line 3, column 11: mapping values are not allowed here "
     r"\(usually a key indented deeper than the keys beside it, .*\); fix that line\.$"),
    ("trainer:\n\tmax_epochs: 3\n",
     r"^--config my_overrides.yaml is not valid YAML: line 2, column 1: .*\(YAML indents with spaces, not tabs\)"),
    ("model:\n  init_args:\n    tta: [1, 2\n",
     r"^--config my_overrides.yaml is not valid YAML: line 4, column 1: expected ',' or '\]'.* \(a \[ list \] not "
     r"closed\)"),
    ("", r"^--config my_overrides.yaml is empty \(nothing but blank lines or comments\): write the settings it "
         r"should change in it, or leave it off the command line\.$"),
    ("# max_epochs: 3\n\n", r"^--config my_overrides.yaml is empty"),
    ("- trainer\n- model\n", r"^--config my_overrides.yaml holds a list \(.*\), not settings: a config is a mapping"),
], ids=["wrong indent", "tab", "unclosed list", "empty", "comments only", "a list"])
def test_a_config_file_that_cannot_be_read_is_named(capsys, tmp_path, monkeypatch, data_args, text, message):
    """The second of two configs broken: the sentence names it as given on the command line (jsonargparse alone
    said `... in "<unicode string>", line 3, column 11`, or `Unexpected config: ` for an empty file)."""
    (tmp_path / "my_overrides.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # named as a user names a file of their own: relative to where they stand
    assert_refused(capsys, tmp_path / "run", message, *data_args, "--config", "my_overrides.yaml",
                   config="cifar.yaml")


def test_a_config_folder_is_named(capsys, tmp_path, data_args):
    assert_refused(capsys, tmp_path / "run", r"^--config .*configs/optim is a folder, not a config file",
                   *data_args, "--config", str(Path(cli.__file__).parent / "configs" / "optim"))


@pytest.mark.parametrize("class_path, message", [
    ("torch.optim.AdamWW", r"^model.init_args.optimizer.class_path torch.optim.AdamWW does not exist: torch.optim "
                           r"has no AdamWW; did you mean torch.optim.AdamW\?"),
    ("my_optimizers.Lion", r"^model.init_args.optimizer.class_path my_optimizers.Lion cannot be imported: there is "
                           r"no module named my_optimizers"),
], ids=["misspelt class", "missing module"])
def test_unknown_optimizer_class_path(capsys, tmp_path, data_args, class_path, message):
    assert_refused(capsys, tmp_path / "run", message, *data_args, "--model.init_args.optimizer.class_path", class_path)


# --- values torch would reject only inside fit, or that make no run ----------------------------------------

OPTIMIZER = "--model.init_args.optimizer.init_args."


@pytest.mark.parametrize("args, message", [
    ([OPTIMIZER + "lr", "0"], r"^model.init_args.optimizer.init_args.lr is 0.0; a learning rate must be > 0"),
    ([OPTIMIZER + "lr=-3e-3"], r"^model.init_args.optimizer.init_args.lr is -0.003; a learning rate must be > 0"),
    ([OPTIMIZER + "weight_decay=-0.1"],
     r"^model.init_args.optimizer.init_args.weight_decay is -0.1; weight decay must be >= 0"),
    ([OPTIMIZER + "betas", "[0.95, 1.0]"],
     r"^model.init_args.optimizer.init_args.betas\[1\] is 1.0; Adam's betas must lie in \[0, 1\)"),
    ([OPTIMIZER + "betas", "[-0.1, 0.99]"], r"^model.init_args.optimizer.init_args.betas\[0\] is -0.1;"),
    (["--config", "configs/optim/sgd.yaml", OPTIMIZER + "momentum", "1.5"],
     r"^model.init_args.optimizer.init_args.momentum is 1.5; momentum must lie in \[0, 1\)"),
    (["--model.init_args.lr_scheduler.init_args.pct_start", "1.5"],
     r"^model.init_args.lr_scheduler.init_args.pct_start is 1.5; it is the warm-up's share of the steps, in \(0, 1\)"),
    (["--trainer.max_epochs", "0"], r"^trainer.max_epochs is 0; train for at least 1 epoch"),
    (["--trainer.max_epochs=-1"], r"^trainer.max_epochs is -1 \(endless\) .* the 1cycle schedule needs a finite"),
    (["--trainer.max_steps", "0"], r"^trainer.max_steps is 0; use a positive number of steps"),
], ids=["lr 0", "lr < 0", "weight decay < 0", "beta2 = 1", "beta1 < 0", "momentum > 1", "pct_start > 1",
        "max_epochs 0", "endless epochs", "max_steps 0"])
def test_bad_values_are_refused_before_the_run_starts(capsys, tmp_path, data_args, args, message):
    assert_refused(capsys, tmp_path / "run", message, *data_args, *args)


def test_invalid_wandb_project_name(capsys, tmp_path, data_args):
    loggers = {"trainer": {"logger": [{"class_path": "pytorch_lightning.loggers.WandbLogger",
                                       "init_args": {"project": "cifar/adamw", "offline": True}}]}}
    assert_refused(capsys, tmp_path / "run", r"^trainer.logger WandbLogger init_args.project: Invalid project name "
                   r"'cifar/adamw': .*found '/'; use letters, digits", *data_args,
                   "--config", yaml_file(tmp_path, loggers))


def test_run_folder_without_write_permission(capsys, tmp_path, data_args):
    # /sys refuses new files even to root (CI runs as root, where chmod alone would not stop a write).
    assert_refused(capsys, Path("/sys/superconvergence-run"), r"^trainer.default_root_dir /sys/superconvergence-run "
                   r"cannot be written \(Permission denied in /sys\): choose a folder you can write to", *data_args)


def test_run_folder_under_a_file(capsys, tmp_path, data_args):
    (tmp_path / "notes.txt").write_text("not a folder")
    assert_refused(capsys, tmp_path / "notes.txt" / "run", r"notes.txt is a file, not a folder", *data_args)


# --- data: read once before Lightning creates the run's folders --------------------------------------------

def test_missing_data_directory(capsys, tmp_path):
    assert_refused(capsys, tmp_path / "run", r"CIFAR-10 folder .*/nowhere/cifar-10-batches-py does not exist: set "
                   r"`data.data_dir` to the folder that contains", "--data.init_args.data_dir", str(tmp_path / "nowhere"),
                   "--data.init_args.download", "false")


def test_data_dir_pointing_inside_the_cifar_folder(capsys, tmp_path, cifar_dir):
    inside = cifar_dir / "cifar-10-batches-py"
    assert_refused(capsys, tmp_path / "run", rf"^data.data_dir {inside} is the 'cifar-10-batches-py' folder itself: "
                   rf"set data.data_dir to the folder that contains it, {cifar_dir}\.$",
                   "--data.init_args.data_dir", str(inside), "--data.init_args.download", "false")


def test_archive_not_extracted(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    assert_refused(capsys, tmp_path / "run", r"cifar-10-python.tar.gz is not extracted: set `data.download: true`",
                   "--data.init_args.data_dir", str(tmp_path / "data"), "--data.init_args.download", "false")


def test_truncated_pickle_stops_before_the_run_folder_exists(capsys, tmp_path, cifar_dir, data_args):
    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:300])
    assert_refused(capsys, tmp_path / "run", r"data_batch_4 is corrupt or truncated", *data_args)


def test_batch_size_larger_than_the_dataset(capsys, tmp_path, data_args):
    assert_refused(capsys, tmp_path / "run", r"^data.batch_size 500 is larger than the 80 training images; lower it",
                   *data_args, "--data.init_args.batch_size", "500")


def test_non_utf8_wikitext_file(capsys, tmp_path):
    corpus = write_corpus(tmp_path / "data")
    (corpus / "wikitext-2" / "wiki.train.tokens").write_bytes(b"caf\xe9 au lait\n")
    config = tiny_config(tmp_path / "tiny.yaml", corpus, tmp_path / "run")
    assert_refused(capsys, tmp_path / "run", r"wiki.train.tokens is not UTF-8 text", "--config", str(config),
                   config="configs/wikitext2_lstm.yaml")


# --- checkpoints: read (weights only) and matched against the model before the run starts -----------------

def tiny_classifier(widen_factor: int = 1) -> ImageClassifier:
    return ImageClassifier(net=WideResNet(num_classes=10, widen_factor=widen_factor, blocks_per_group=1))


def test_missing_checkpoint(capsys, tmp_path, data_args):
    assert_refused(capsys, tmp_path / "run", r"^ckpt_path .*/gone.ckpt does not exist: pass the path of a .ckpt",
                   *data_args, "--ckpt_path", str(tmp_path / "gone.ckpt"))


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint"])
def test_unreadable_checkpoint(capsys, tmp_path, data_args, damage):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": tiny_classifier().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000] if damage == "truncated" else b"epoch 3, loss 0.2\n")
    assert_refused(capsys, tmp_path / "run", r"^ckpt_path .*last.ckpt cannot be read as a checkpoint \(.*\): it is "
                   r"truncated or not a .ckpt file", *data_args, "--ckpt_path", str(path))


def test_checkpoint_of_another_net(capsys, tmp_path, data_args):
    path = tmp_path / "lstm.ckpt"  # what cli.py saves for a language model: its class paths in hyper_parameters
    torch.save({"state_dict": {"net.encoder.weight": torch.zeros(3, 2)},
                "hyper_parameters": {"_class_path": "lightning_modules.ImageClassifier",
                                     "net": {"class_path": "lightning_modules.nets.AWDLSTM"}}}, path)
    assert_refused(capsys, tmp_path / "run", r"^ckpt_path .*lstm.ckpt was saved by a net AWDLSTM, but this config "
                   r"builds WideResNet: pass a checkpoint of this model, or run with the config it was trained with",
                   *data_args, "--ckpt_path", str(path))


def test_checkpoint_with_other_tensor_shapes(capsys, tmp_path, data_args):
    path = tmp_path / "wide.ckpt"  # no hyperparameters to compare: the tensors tell
    torch.save({"state_dict": tiny_classifier(widen_factor=2).state_dict()}, path)
    assert_refused(capsys, tmp_path / "run", r"^ckpt_path .*wide.ckpt does not fit this run's model \(\d+ tensors "
                   r"differ, e.g. net\..*\): pass a checkpoint of this model", *data_args, "--ckpt_path", str(path))


class Pickled:
    """Stands for anything in a checkpoint that is not a tensor or a plain value."""


def test_checkpoint_with_arbitrary_objects_needs_weights_only_false(capsys, tmp_path, data_args):
    path = tmp_path / "pickled.ckpt"
    model = tiny_classifier()
    torch.save({"state_dict": model.state_dict(), "extra": Pickled()}, path)
    assert_refused(capsys, tmp_path / "run", r"^ckpt_path .*pickled.ckpt holds Python objects other than tensors "
                   r"and plain values \(tests.test_bad_input.Pickled\); load it only if you trust its source, with "
                   r"--weights_only false", *data_args, "--ckpt_path", str(path))
    checkpoint, problem = read_checkpoint(path, weights_only=False)  # the user's explicit choice is honoured
    assert problem is None and state_problem(path, checkpoint, model) is None


def test_resuming_a_language_model_with_another_vocabulary(capsys, tmp_path):
    corpus = write_corpus(tmp_path / "data")
    config = str(tiny_config(tmp_path / "tiny.yaml", corpus, tmp_path / "run"))
    built = cli.main(["--config", "configs/wikitext2_lstm.yaml", "--config", config], run=False)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": built.model.state_dict(),
                "WikiText2DataModule": {"vocab": list(reversed(built.datamodule.vocab))}}, path)
    assert_refused(capsys, tmp_path / "run", r"^ckpt_path .*last.ckpt: the checkpoint's vocabulary \(\d+ words\) "
                   r"differs from the one built from .*wiki.train.tokens .*; resume with the train_file it was trained "
                   r"on", "--config", config, "--ckpt_path", str(path), config="configs/wikitext2_lstm.yaml")


def test_resume_from_last_with_no_run_yet(capsys, tmp_path, data_args):
    assert_refused(capsys, tmp_path / "run", r"^--ckpt_path last: no last.ckpt under trainer.default_root_dir=.*/run; "
                   r"pass the checkpoint's path, or drop --ckpt_path to start a new run.", *data_args,
                   "--ckpt_path", "last")
