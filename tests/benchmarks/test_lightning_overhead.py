"""The Lightning-overhead benchmark runs both sides on the same work (same final weights); timing is never asserted."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` may not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from benchmarks import lightning_overhead  # noqa: E402


def test_both_sides_train_the_same_weights_and_the_report_has_both_workloads():
    result = lightning_overhead.run(images=256, tiny_images=384, repeats=1)
    for workload, steps in (("wrn", 2), ("tiny", 3)):
        w = result[workload]
        assert w["steps"] == steps and all(len(w["seconds"][side]) == 1 for side in ("lightning", "plain"))
        assert w["max_weight_diff"] < 1e-5  # Trainer.fit and the plain loop applied the same updates
        assert w["ratio"] > 0 and w["ratio_range"][0] <= w["ratio"] <= w["ratio_range"][1]
    assert result["ratio"] == result["wrn"]["ratio"] and result["passed"] == (result["ratio"] <= result["target"])
    text = lightning_overhead.markdown(result)
    assert text.startswith("## Lightning overhead") and "| wrn |" in text and "| tiny |" in text


def test_the_sides_differ_when_the_work_differs():
    x, y = lightning_overhead.synthetic_cifar(256)
    torch.manual_seed(0)
    net = lightning_overhead.make_net("tiny")
    plain = lightning_overhead.plain_epoch(copy.deepcopy(net), x, y, torch.device("cpu"))
    other = lightning_overhead.plain_epoch(copy.deepcopy(net), x[:128], y[:128], torch.device("cpu"))
    assert lightning_overhead._max_weight_diff(plain, other) > 1e-4  # the check can fail
