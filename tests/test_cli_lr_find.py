"""`cli.py lr_find`: the sweep follows the range and count asked for, leaves the model as it was, keeps a
fine-tuning stage's lr ratios, runs the language models, writes the curve, and refuses bad arguments in one
sentence. (On real CIFAR images the curve falls, then rises: tests/test_cifar_real_data.py.)"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import cli
from cli_lr_find import GroupwiseExponentialLR, fit_command, unbiased
from tests.conftest import TINY_WRN_ARGS
from tests.datamodules.test_wikitext2 import write_corpus
from tests.test_cli_cars import tiny_cars_config
from tests.test_cli_wikitext2 import tiny_config


def cifar_args(cifar_dir, root, *extra: str) -> list[str]:
    return ["--config", "configs/cifar.yaml", "--config", "configs/trainer/csv_only.yaml", *TINY_WRN_ARGS,
            "--data.data_dir", str(cifar_dir), "--data.download", "false", "--data.batch_size", "8",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]


def test_the_sweep_follows_the_range_and_leaves_the_model_as_it_was(cifar_dir, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = cli.main(["lr_find", *cifar_args(cifar_dir, tmp_path), "--min_lr", "1e-4", "--max_lr", "1e-1",
                        "--num_training", "12", "--early_stop_threshold", "null"])
    result = run.lr_find_result
    said = any("still lowest at the end of the range" in str(w.message) for w in caught)
    assert said is (not result["turned_up"])  # a curve that never turned up is flagged
    expected = [1e-4 * 1000 ** (k / 11) for k in range(12)]  # exponential, first and last included
    assert result["lrs"] == pytest.approx(expected, rel=1e-9) and len(result["losses"]) == 12
    assert all(math.isfinite(loss) for loss in result["losses"]) and not result["stopped_early"]
    untouched = cli.main(cifar_args(cifar_dir, tmp_path / "ref"), run=False).model  # the same seed, never trained
    for name, tensor in untouched.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], tensor), name
    assert run.trainer.global_step == 0  # a fit after it starts from step 0 and these weights
    folder = tmp_path / "csv" / "version_0" / "lr_find"
    assert (folder / "lr_find.png").stat().st_size > 0
    assert (folder / "lr_find.csv").read_text().count("\n") == 13
    printed = capsys.readouterr().out
    assert f"suggested max lr {result['suggested_lr']:.3g}, by the lr at the minimum of the smoothed loss" in printed
    assert "train with it: python cli.py fit --config configs/cifar.yaml" in printed
    assert f"--model.init_args.optimizer.init_args.lr {result['suggested_lr']:.3g}" in printed
    assert result["suggested_lr"] == pytest.approx(result["lr_at_min_loss"] / 10)


def test_a_stage_keeps_its_groups_lr_ratios_and_the_stages_come_back(cars_root, tmp_path):
    override = tiny_cars_config(tmp_path / "tiny.yaml", cars_root, tmp_path)  # stage 2: lr/9, lr/3, lr
    run = cli.main(["lr_find", "--config", "configs/cars.yaml", "--config", str(override), "--config",
                    "configs/trainer/csv_only.yaml", "--stage", "2", "--num_training", "4", "--min_lr", "1e-4",
                    "--max_lr", "1e-2"])
    assert run.lr_find_result["stage"] == 2 and len(run.lr_find_result["lrs"]) == 4
    assert [s.epochs for s in run.model.stages] == [1, 2] and run.model.active_stage == 0


def test_groupwise_sweep_keeps_every_groups_ratio_to_the_top_one():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(4)]
    optimizer = torch.optim.Adam([{"params": [p]} for p in params], lr=1.0)
    scheduler = GroupwiseExponentialLR(optimizer, [0.0, 1 / 9, 1 / 3, 1.0], 1e-4, 1e-1, steps=4)
    seen = []
    for _ in range(4):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for k, lrs in enumerate(seen):  # the top group from 1e-4 to 1e-1 in 4 steps, the frozen one stays at 0
        top = 1e-4 * 1000 ** (k / 3)
        assert lrs == pytest.approx([0.0, top / 9, top / 3, top])


def test_language_models_carry_their_state_through_the_sweep(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    run = cli.main(["lr_find", "--config", "configs/wikitext2_qrnn.yaml", "--config",
                    str(tiny_config(tmp_path / "t.yaml", corpus, tmp_path)), "--config", "configs/trainer/csv_only.yaml",
                    "--model.init_args.net.init_args.num_layers", "2", "--num_training", "6"])
    assert len(run.lr_find_result["lrs"]) == 6 and all(map(math.isfinite, run.lr_find_result["losses"]))


@pytest.mark.parametrize("args, said", [
    (["--min_lr", "1", "--max_lr", "1e-3"], "lr_find needs 0 < min_lr < max_lr; got min_lr 1.0 and max_lr 0.001"),
    (["--num_training", "1"], "lr_find's num_training is 1; the sweep needs at least 2 steps"),
    (["--stage", "2"], "lr_find's stage is 2 but the model has 0 fine-tuning stages"),
])
def test_bad_arguments_stop_in_one_sentence(cifar_dir, tmp_path, capsys, args, said):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["lr_find", *cifar_args(cifar_dir, tmp_path), *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"cli.py: error: {said}")


def test_the_smoothing_correction_and_the_fit_line():
    # Lightning divides by 1 − β^(k+2) at sweep step k: a constant loss of 2 is recorded as 2·(1−β^(k+1))/(1−β^(k+2))
    recorded = [2 * (1 - 0.98 ** (k + 1)) / (1 - 0.98 ** (k + 2)) for k in range(5)]
    assert unbiased(recorded) == pytest.approx([2.0] * 5)
    line = fit_command(["lr_find", "--config", "c.yaml", "--min_lr", "1e-5", "--num_training=50", "--x", "1"], 3e-3,
                       None)
    assert line == "python cli.py fit --config c.yaml --x 1 --model.init_args.optimizer.init_args.lr 0.003"
