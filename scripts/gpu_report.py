"""docs/results/gpu_bench.md from the GPU check's results (`scripts/gpu_check.py`), and its val/acc plot.

Written after every step of the check, so it must read partial results: a section whose numbers do not exist
yet says so instead of failing.
"""
from __future__ import annotations

from pathlib import Path

from scripts import study_report


def _f(value, pattern: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, pattern)


def _runs(results: dict) -> list[str]:
    lines = ["## The seed's CIFAR-10 run (WRN-22, AdamW + 1cycle), full 50k/10k", ""]
    if not results["runs"]:
        return lines + ["Not run yet.", ""]
    lines += [
        "`configs/cifar.yaml` + `configs/trainer/gpu_fast.yaml` (bf16-mixed, channels-last, `torch.compile`, cuDNN "
        "autotuning; checkpoints and CSV/W&B logging as configured). Time counts from the first training batch, "
        "compilation included; \"compile\" is the first epoch's time beyond the median epoch.",
        "",
        "| run | epochs | s/epoch (median) | compile ≈ s | reached 94% at | best val/acc | test/acc | test/acc_tta "
        "| peak GPU memory | wall s | exit |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in results["runs"].items():
        reached = (f"epoch {run['epoch_reached']}, {run['seconds_to_target'] / 60:.2f} min"
                   if run.get("epoch_reached") else "not reached")
        memory = f"{run['peak_allocated_gib']:.1f} GiB" if run.get("peak_allocated_gib") is not None else "—"
        lines.append(f"| {name} | {run.get('epochs', 0)}/{run['epochs_asked']} | {_f(run.get('median_epoch_s'), '.1f')} "
                     f"| {_f(run.get('compile_s'), '.0f')} | {reached} | {_f(run.get('best_val_acc'), '.4f')} "
                     f"| {_f(run.get('test_acc'), '.4f')} | {_f(run.get('test_acc_tta'), '.4f')} | {memory} "
                     f"| {run['wall_s']:.0f} | {run['returncode']} |")
    return lines + [""]


def _ceilings(b: dict) -> list[str]:
    c = b.get("ceilings")
    if c is None:
        return []
    return ["## Ceilings (measured in the same run)", "",
            f"Copy bandwidth {c['copy']['bytes_per_s'] / 1e9:.0f} GB/s (read + write, "
            f"{c['copy']['buffer_bytes'] >> 20} MiB); matmul {c['matmul']['flops_per_s'] / 1e12:.0f} TFLOP/s "
            f"({c['matmul']['dtype']}, {c['matmul']['n']}²).", ""]


def _wrn(b: dict) -> list[str]:
    w, c = b.get("wrn_step"), b.get("ceilings")
    if w is None:
        return []
    peak = c["matmul"]["flops_per_s"] if c else None
    lines = ["## WRN training step", "",
             f"Batch {w['batch']}, {w['step_flops'] / 1e9:.1f} GFLOP per step (forward + backward, FlopCounterMode); "
             f"speed-ups against `{w['baseline']}` (float32), paired per round; {w['repeats']} rounds of "
             f"{w['steps']} steps.", "",
             "| side | ms/step | images/s | speed-up | TFLOP/s | of matmul rate | first step s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for side in w["sides"]:
        rate = w["flops_per_s"][side]
        lines.append(f"| {side} | {w['ms'][side]:.2f} | {w['images_per_s'][side]:,.0f} | {w['speedup'][side]:.2f}× "
                     f"| {rate / 1e12:.1f} | {_f(peak and rate / peak, '.0%')} | {w['first_step_s'][side]:.1f} |")
    return lines + [""]


def _fo_pool(b: dict) -> list[str]:
    q = b.get("fo_pool")
    if q is None:
        return []
    lines = ["## QRNN fo_pool, forward + backward", "",
             f"[B, T, H] = [{q['batch']}, {q['seq_len']}, {q['hidden']}] float32; {q['essential_bytes'] / 1e6:.0f} MB "
             f"must move; copy bandwidth {q['copy_bytes_per_s'] / 1e9:.0f} GB/s in the same run; "
             f"`auto` picks {q['auto_method']}.", "",
             "| side | ms | speed-up vs loop | GB/s | of copy bandwidth |", "| --- | ---: | ---: | ---: | ---: |"]
    for side, ms in q["ms"].items():
        lines.append(f"| {side} | {ms:.3f} | {q['speedup'][side]:.1f}× | {q['bytes_per_s'][side] / 1e9:.0f} "
                     f"| {q['bandwidth_fraction'][side]:.0%} |")
    lines += [f"| {side} | not run: {why} | | | |" for side, why in q.get("not_run", {}).items()]
    if q.get("interpreted"):
        lines += ["", "The triton side ran through Triton's interpreter (a CPU check that it runs, not a speed)."]
    return lines + [""]


def _side_name(side: str) -> str:
    return "AWD-LSTM" if side == "awd_lstm" else f"QRNN ({side.split('_', 1)[1]})"


def _lm(b: dict) -> list[str]:
    m = b.get("lm_step")
    if m is None:
        return []
    lines = ["## Language-model training step", "",
             f"[batch, bptt] = [{m['batch']}, {m['seq_len']}], vocabulary {m['vocab']:,}, {m['dtype']}; "
             f"{_side_name(m['qrnn_side'])} / AWD-LSTM = **{m['ratio']:.2f}×** (paired median, target ≤ "
             f"{m['target']}; the fo-pool method `auto` takes here).", "",
             "| net | layers × hidden | ms/step | recurrent net fwd+bwd ms |", "| --- | ---: | ---: | ---: |"]
    for side, (hidden, layers) in m["sizes"].items():
        phases = m["phase_ms"][side]
        lines.append(f"| {_side_name(side)} | {layers} × {hidden} | {m['ms'][side]:.1f} "
                     f"| {phases['net_forward'] + phases['net_backward']:.1f} |")
    lines += [f"| {_side_name(side)} | not run: {why} | | |" for side, why in m.get("not_run", {}).items()]
    return lines + [""]


def _cache(b: dict) -> list[str]:
    c = b.get("cache")
    if c is None:
        return []
    text = "the WikiText-2 test stream" if c["real_text"] else "a synthetic stream"
    gpu = c["us_per_token"].get("cuda")
    return ["## Neural cache", "",
            f"{text} ({c['tokens']:,} tokens), window {c['window']}, chunks of {c['chunk']}: "
            + (f"{c['seconds']['cuda']:.2f} s on the GPU ({gpu:.2f} µs/token), "
               f"{c['gpu_speedup']:.0f}× the CPU's {c['us_per_token']['cpu']:.1f} µs/token over the first "
               f"{c['cpu_tokens']:,} tokens (max difference {c['max_abs_diff_cpu_gpu']:.1e})."
               if gpu is not None else f"{c['us_per_token']['cpu']:.1f} µs/token on the CPU (no GPU)."), ""]


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    device = env.get("gpu") or "no GPU"
    lines = [f"# GPU check{' (dry run: CPU, toy sizes — not a measurement)' if results['dry_run'] else ''}", "",
             f"Generated by `{results['command']}` (`scripts/gpu_check.py`) on {results['date']}; do not edit by hand.",
             "", f"Device: {device}" + (f", {env['gpu_memory_gib']} GiB, driver/clock/power: {env.get('nvidia_smi')}"
                                          if env.get("gpu") else "")
             + f"; {env.get('cpus')} CPU cores. Python {env.get('python')}, torch {env.get('torch')} (CUDA "
             f"{env.get('cuda')}, cuDNN {env.get('cudnn')}), Lightning {env.get('pytorch_lightning')}, torchvision "
             f"{env.get('torchvision')}, jsonargparse {env.get('jsonargparse')}, wandb {env.get('wandb')}.", ""]
    lines += _runs(results)
    b = results["benchmarks"]
    for section in (_ceilings, _wrn, _fo_pool, _lm, _cache):
        lines += section(b)
    if results["skipped"] or results["errors"]:
        lines += ["## Not measured", ""] + [f"- {k}: skipped, {v}" for k, v in results["skipped"].items()]
        lines += [f"- {k}: {v}" for k, v in results["errors"].items()] + [""]
    return "\n".join(lines)


def plot(results: dict, runs_dir: Path, path: Path) -> bool:
    """val/acc against wall time for every run that logged both; False if none did."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    drawn = False
    for name in results["runs"]:
        rows = study_report.read_metrics(runs_dir / name)
        acc, elapsed = study_report.per_epoch(rows, "val/acc"), study_report.per_epoch(rows, "time/elapsed_s")
        if acc and len(acc) == len(elapsed):
            axes.plot([t / 60 for t in elapsed], acc, marker=".", label=name)
            drawn = True
    if drawn:
        axes.axhline(0.94, color="grey", linestyle="--", linewidth=1, label="94%")
        axes.set_xlabel("wall time (min)")
        axes.set_ylabel("val/acc")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    plt.close(figure)
    return drawn
