"""`cli.py predict`: images of one's own → a CSV of top-k classes. On real CIFAR test images written as PNG files
it predicts, image by image, what `cli.py test` scores on the same images with the same checkpoint; Stanford Cars
names its 196 classes from the checkpoint alone; bad input stops in one sentence."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

import cli
from datamodules import cifar10_files
from tests.conftest import TINY_WRN_ARGS
from tests.test_cli_cars import tiny_cars_config


SHOWN = 250  # real test images written as PNG files


def cifar_args(data_dir, root, *extra: str) -> list[str]:
    return ["--config", "configs/cifar.yaml", "--config", "configs/trainer/csv_only.yaml", *TINY_WRN_ARGS,
            "--data.data_dir", str(data_dir), "--data.download", "false", "--data.batch_size", "16",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory) -> Path:
    """A tiny WRN trained one epoch on generated images (any weights do: prediction must equal testing)."""
    from tests.conftest import make_cifar_folder

    base = tmp_path_factory.mktemp("predict_ckpt")
    data = make_cifar_folder(base / "data")
    cli.main(["fit", *cifar_args(data, base / "run"), "--trainer.max_epochs", "1", "--test_after_fit", "false"])
    return next((base / "run").glob("csv/version_0/checkpoints/last.ckpt"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_predicting_real_test_images_as_png_matches_testing_them_image_by_image(real_cifar_subset, cifar_checkpoint,
                                                                                tmp_path):
    data = real_cifar_subset
    images, labels = cifar10_files.load_split(data, train=False)
    images, labels = images[:SHOWN], labels[:SHOWN]  # the first 250 real test images: what testing sees below
    classes = cifar10_files.load_label_names(data)
    pngs = tmp_path / "pngs"
    for k, (image, label) in enumerate(zip(images, labels)):
        (pngs / classes[label]).mkdir(parents=True, exist_ok=True)
        write_png(torch.from_numpy(image), str(pngs / classes[label] / f"{k:04d}.png"))

    tested = cli.main(["test", *cifar_args(data, tmp_path / "t"), "--ckpt_path", str(cifar_checkpoint),
                       "--data.eval_batch_size", "50", "--trainer.limit_test_batches", str(SHOWN // 50)])
    test_acc = tested.trainer.callback_metrics["test/acc"].item()
    table = tmp_path / "out" / "predictions.csv"
    cli.main(["predict", *cifar_args(tmp_path / "no_training_data", tmp_path / "p"), "--ckpt_path",
              str(cifar_checkpoint), "--data.predict_dir", str(pngs), "--predictions", str(table), "--top_k", "3"])
    rows = read_csv(table)
    assert len(rows) == SHOWN and list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    hits = [Path(row["path"]).parent.name == row["class_1"] for row in rows]
    assert sum(hits) / len(hits) == pytest.approx(test_acc, abs=1e-6)  # the same accuracy (float32 metric) ...
    model = tested.model.eval()
    by_file = {Path(row["path"]).name: row["class_1"] for row in rows}
    with torch.no_grad():  # ... because every image gets the class testing gives it
        batch = tested.datamodule.on_after_batch_transfer((torch.from_numpy(images), torch.from_numpy(labels)), 0)[0]
        expected = model(batch).argmax(dim=1)
    assert all(by_file[f"{k:04d}.png"] == classes[c] for k, c in enumerate(expected.tolist()))


def test_ckpt_path_last_finds_the_configs_run_as_for_test(cifar_checkpoint, tmp_path):
    """`predict --ckpt_path last`, as the README shows it: the run under default_root_dir whose config matches,
    although the images come from a folder the run never had."""
    folder = tmp_path / "mine"
    folder.mkdir()
    write_png(torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8), str(folder / "a.png"))
    table = tmp_path / "p.csv"
    run_root = cifar_checkpoint.parents[3]
    cli.main(["predict", *cifar_args(tmp_path / "absent", run_root), "--ckpt_path", "last",
              "--data.predict_dir", str(folder), "--predictions", str(table)])
    explicit = tmp_path / "explicit.csv"
    cli.main(["predict", *cifar_args(tmp_path / "absent", tmp_path / "run"), "--ckpt_path", str(cifar_checkpoint),
              "--data.predict_dir", str(folder), "--predictions", str(explicit)])
    assert read_csv(table) == read_csv(explicit) and len(read_csv(table)) == 1


def test_any_size_and_grayscale_images_are_classified_with_the_checkpoints_class_names(cifar_checkpoint, tmp_path):
    folder = tmp_path / "mine"
    (folder / "nested").mkdir(parents=True)
    write_png(torch.randint(0, 255, (1, 32, 32), dtype=torch.uint8), str(folder / "gray.png"))
    write_jpeg(torch.randint(0, 255, (3, 60, 90), dtype=torch.uint8), str(folder / "nested" / "wide.JPG"))
    (folder / "notes.txt").write_text("not an image, not read")
    table = tmp_path / "p.csv"
    cli.main(["predict", *cifar_args(tmp_path / "absent", tmp_path / "run"), "--ckpt_path", str(cifar_checkpoint),
              "--data.predict_dir", str(folder), "--predictions", str(table), "--top_k", "10", "--predict_tta", "true"])
    rows = read_csv(table)
    assert [Path(r["path"]).name for r in rows] == ["gray.png", "wide.JPG"]
    for row in rows:
        assert sorted(row[f"class_{k}"] for k in range(1, 11)) == sorted(cifar10_files_classes())
        assert sum(float(row[f"prob_{k}"]) for k in range(1, 11)) == pytest.approx(1.0, abs=1e-4)


def cifar10_files_classes() -> list[str]:
    from datamodules.cifar10 import CLASSES

    return list(CLASSES)


def test_stanford_cars_names_its_classes_from_the_checkpoint(cars_root, cars_devkit, tmp_path):
    import scipy.io

    override = tiny_cars_config(tmp_path / "tiny.yaml", cars_root, tmp_path)
    run = cli.main(["--config", "configs/cars.yaml", "--config", str(override), "--config",
                    "configs/trainer/csv_only.yaml", "--trainer.limit_val_batches", "1"], run=False)
    run.trainer.validate(run.model, datamodule=run.datamodule, verbose=False)
    checkpoint = tmp_path / "cars.ckpt"
    run.trainer.save_checkpoint(checkpoint)
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, size in enumerate([(3, 40, 60), (3, 90, 50)]):
        write_jpeg(torch.randint(0, 255, size, dtype=torch.uint8), str(folder / f"car{k}.jpg"))
    table = tmp_path / "cars.csv"
    cli.main(["predict", "--config", "configs/cars.yaml", "--config", str(override), "--config",
              "configs/trainer/csv_only.yaml", "--data.data_dir", str(tmp_path / "no_dataset"), "--data.predict_dir",
              str(folder), "--ckpt_path", str(checkpoint), "--predictions", str(table), "--top_k", "2"])
    names = [str(n[0]) for n in scipy.io.loadmat(cars_devkit / "cars_meta.mat")["class_names"][0]]
    rows = read_csv(table)
    assert len(rows) == 2 and all(row["class_1"] in names and row["class_2"] in names for row in rows)


@pytest.mark.parametrize("make, said", [
    (lambda folder: None, "holds no PNG or JPEG images"),
    (lambda folder: (folder / "broken.png").write_bytes(b"not a png"), "broken.png cannot be read as an image"),
])
def test_an_empty_folder_or_an_unreadable_image_stops_in_one_sentence(cifar_checkpoint, tmp_path, capsys, make, said):
    folder = tmp_path / "mine"
    folder.mkdir()
    make(folder)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", *cifar_args(tmp_path / "absent", tmp_path / "run"), "--ckpt_path", str(cifar_checkpoint),
                  "--data.predict_dir", str(folder)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("cli.py: error: data.predict_dir") and said in error and "Traceback" not in error


def test_a_checkpoint_of_another_task_is_refused(tmp_path, capsys):
    other = tmp_path / "lm.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lightning_modules.LanguageModel"}}, other)
    (tmp_path / "mine").mkdir()
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "mine" / "a.png"))
    with pytest.raises(SystemExit):
        cli.main(["predict", *cifar_args(tmp_path / "absent", tmp_path / "run"), "--ckpt_path", str(other),
                  "--data.predict_dir", str(tmp_path / "mine")])
    assert "was saved by a model LanguageModel, but this config builds ImageClassifier" in capsys.readouterr().err
