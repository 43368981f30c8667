"""The device's physical ceilings, measured: memory copy bandwidth and dense matrix-multiply rate.

Why: a benchmark that says "memory-bound" or "far from the limit" needs the limit measured on the same machine,
in the same run, not read off a datasheet. Other benchmarks import `copy_bandwidth` and `matmul_rate` and report
their achieved bytes/s or FLOP/s as a fraction of these (`qrnn_recurrence.py`, `compile_wrn.py`,
`scripts/gpu_check.py`).

- copy bandwidth: `dst.copy_(src)` of a buffer far larger than the caches (256 MiB on a CPU, 2 GiB on a GPU);
  bytes moved = read + write = 2 × the buffer's size.
- matmul rate: an n × n by n × n product of N(0, 1) data, 2n³ FLOPs; bf16 on a GPU (what autocast uses),
  float32 on a CPU (what CPU runs use).

Each is warmed up once, then timed `repeats` times (each time `inner` operations between two synchronisations,
so a GPU's launch latency does not count); the median is reported, with the range.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # runnable as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.cifar_pipeline import machine

MIB = 1 << 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rates(fn, work: float, device: torch.device, repeats: int, inner: int) -> list[float]:
    """Work units per second of `fn`, one value per repetition of `inner` calls (after one warm-up call)."""
    fn()
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        rates.append(work * inner / (time.perf_counter() - start))
    return rates


def copy_bandwidth(device: torch.device, mebibytes: int | None = None, repeats: int = 10) -> dict:
    """Bytes/s of a device-to-device copy (read + write counted) of a `mebibytes` float32 buffer."""
    mebibytes = mebibytes or (2048 if device.type == "cuda" else 256)
    source = torch.randn(mebibytes * MIB // 4, device=device)
    target = torch.empty_like(source)
    rates = _rates(lambda: target.copy_(source), 2.0 * source.nbytes, device, repeats,
                   inner=10 if device.type == "cuda" else 1)
    return {"buffer_bytes": source.nbytes, "bytes_per_s": statistics.median(rates), "min": min(rates),
            "max": max(rates), "repeats": repeats}


def matmul_rate(device: torch.device, dtype: torch.dtype | None = None, n: int | None = None,
                repeats: int = 10) -> dict:
    """FLOP/s of an n × n matrix product (2n³ FLOPs) on N(0, 1) data."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n = n or (8192 if device.type == "cuda" else 1024)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    out = torch.empty_like(a)
    rates = _rates(lambda: torch.mm(a, b, out=out), 2.0 * n**3, device, repeats,
                   inner=20 if device.type == "cuda" else 1)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": statistics.median(rates),
            "min": min(rates), "max": max(rates), "repeats": repeats}


def run(device: str | None = None, mebibytes: int | None = None, n: int | None = None, repeats: int = 10) -> dict:
    """Both ceilings on `device` (default: the GPU if there is one, else the CPU)."""
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return {"machine": machine(where), "copy": copy_bandwidth(where, mebibytes, repeats),
            "matmul": matmul_rate(where, n=n, repeats=repeats)}


def markdown(result: dict) -> str:
    """The docs/BENCHMARKS.md section for one `run` result."""
    m, copy, mm = result["machine"], result["copy"], result["matmul"]
    where = f"{m['device']} ({m['gpu']})" if m["gpu"] else f"{m['device']} ({m['cpu']}, {m['torch_threads']} threads)"
    return "\n".join([
        "## Device ceilings: copy bandwidth and matmul rate",
        "",
        f"Measured on {where}, torch {m['torch']}; the limits the other sections' achieved rates are compared with.",
        "",
        "| ceiling | median | range | how |",
        "| --- | ---: | ---: | --- |",
        f"| copy bandwidth | {copy['bytes_per_s'] / 1e9:.1f} GB/s | {copy['min'] / 1e9:.1f}–{copy['max'] / 1e9:.1f} "
        f"| `copy_` of {copy['buffer_bytes'] // MIB} MiB, read + write counted, {copy['repeats']} repetitions |",
        f"| matmul rate | {mm['flops_per_s'] / 1e12:.3g} TFLOP/s | {mm['min'] / 1e12:.3g}–{mm['max'] / 1e12:.3g} "
        f"| {mm['n']}² × {mm['n']}² {mm['dtype']}, 2n³ FLOPs, {mm['repeats']} repetitions |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--mebibytes", type=int, help="copy buffer size (default 256 on CPU, 2048 on GPU)")
    parser.add_argument("--n", type=int, help="matrix side (default 1024 on CPU, 8192 on GPU)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(markdown(run(args.device, args.mebibytes, args.n, args.repeats)))


if __name__ == "__main__":
    main()
