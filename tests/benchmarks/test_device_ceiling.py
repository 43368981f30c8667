"""The ceilings benchmark measures what it says on the sizes it says; rates are never asserted beyond being sane."""
from __future__ import annotations

import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` may not put the repo root on sys.path
    sys.path.insert(0, str(REPO))

from benchmarks import device_ceiling  # noqa: E402


def test_copy_and_matmul_are_measured_on_the_asked_sizes_and_reported():
    result = device_ceiling.run(device="cpu", mebibytes=8, n=64, repeats=3)
    copy, matmul = result["copy"], result["matmul"]
    assert copy["buffer_bytes"] == 8 << 20 and matmul["n"] == 64 and matmul["dtype"] == "float32"
    for rate in (copy, matmul):
        assert math.isfinite(rate["min"]) and 0 < rate["min"] <= rate["bytes_per_s" if rate is copy else "flops_per_s"]
        assert rate["repeats"] == 3
    text = device_ceiling.markdown(result)
    assert "copy bandwidth" in text and "8 MiB" in text and "64² × 64² float32" in text
