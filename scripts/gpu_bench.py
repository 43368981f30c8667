"""The GPU check's benchmarks (`scripts/gpu_check.py` step 3), one after the other in one child process.

Each is a `run()` of a module in `benchmarks/` at the seed's sizes, so the GPU numbers come from the same code
as the CPU ones in docs/BENCHMARKS.md. Every result is written to the result file the moment it exists, and a
benchmark that fails is recorded with its error and does not stop the ones after it. Order: cheapest and most
needed first (the ceilings the others are compared with), the one that compiles last.
"""
from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.run_all import write_atomic


def plan(dry: bool, wiki_tokens: Path | None) -> list[tuple[str, Callable[[], dict]]]:
    """(name, measurement) pairs; `dry`: toy sizes that run on a CPU in seconds."""
    from benchmarks import compile_wrn, device_ceiling, lm_step, neural_cache, qrnn_recurrence

    if dry:
        return [
            ("ceilings", lambda: device_ceiling.run(mebibytes=16, n=128, repeats=2)),
            ("fo_pool", lambda: qrnn_recurrence.run(batch=2, seq_len=8, hidden=16, repeats=1)),
            ("lm_step", lambda: lm_step.run(batch=2, seq_len=6, vocab=50, embedding=8, hidden=16, layers=2,
                                            repeats=1, bf16=True)),
            ("cache", lambda: neural_cache.run_stream(wiki_tokens, tokens=3000, window=100, chunk=500,
                                                      cpu_tokens=1000)),
            # without the compiled side: compiling costs ~20 s on a CPU, and `make test` checks it already
            # (tests/benchmarks/test_compile_wrn.py runs the same Side code with compilation)
            ("wrn_step", lambda: compile_wrn.run(batch=4, warmup=2, repeats=1, steps=1,
                                                 sides=compile_wrn.GPU_SIDES[:3], wrn=dict(num_groups=2, widen_factor=1))),
        ]
    return [
        ("ceilings", lambda: device_ceiling.run()),
        # the seed's QRNN: batch 100, bptt 70, hidden 1550
        ("fo_pool", lambda: qrnn_recurrence.run(batch=100, seq_len=70, hidden=1550, repeats=20)),
        # each net at its seed size (AWD-LSTM 3 × 1150, QRNN 4 × 1550), bs 100, bptt 70, bf16 as a GPU run trains
        ("lm_step", lambda: lm_step.run(batch=100, seq_len=70, hidden=None, layers=None, repeats=10, bf16=True)),
        ("cache", lambda: neural_cache.run_stream(wiki_tokens)),
        ("wrn_step", lambda: compile_wrn.run(batch=128, warmup=3, repeats=5, steps=10, wrn=compile_wrn.WRN_22,
                                             device="cuda", sides=compile_wrn.GPU_SIDES)),
    ]


def child_bench(result_file: Path, dry: bool, wiki_tokens: Path | None) -> None:
    """Run the plan, rewriting `result_file` ({"results": {...}, "errors": {...}}) after each benchmark."""
    done: dict = {"results": {}, "errors": {}}
    for name, measure in plan(dry, wiki_tokens):
        print(f"[gpu_bench] {name} ...", flush=True)
        try:
            done["results"][name] = measure()
        except Exception as error:  # recorded in the report; the next benchmark still runs
            traceback.print_exc()
            done["errors"][name] = f"{type(error).__name__}: {error}"
        write_atomic(result_file, json.dumps(done, default=str))
        print(f"[gpu_bench] {name}: {'failed' if name in done['errors'] else 'done'}", flush=True)
