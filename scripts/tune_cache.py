"""Tune the neural cache (θ, λ, window) of a trained language model on its validation stream, in seconds.

Three ways to name the model (any cli.py override may follow, e.g. --data.data_dir where the data has moved):

    python scripts/tune_cache.py --ckpt_path RUN/checkpoints/last.ckpt
    python scripts/tune_cache.py --ckpt_path RUN/checkpoints/last.ckpt --config RUN/config.yaml
    python scripts/tune_cache.py --config configs/wikitext2_lstm.yaml --ckpt_path last [the fit's overrides]

The checkpoint alone is enough, as for scripts/lm.py and scripts/export.py: its run record holds the config of its
fit, every override included (a checkpoint written before runs were recorded: the config.yaml beside its
checkpoints/ folder). The run's own config.yaml is taken as `cli.py test` takes it. The task's configs with the
fit's overrides are taken as `cli.py` takes them; `--ckpt_path last` then finds this experiment's newest run.
RUN is the run's folder (runs/wikitext2_lstm/csv/version_0). Any of them takes a grid of its own: --thetas 0.1 0.3 1
--lambdas 0.05 0.1279 0.2 --windows 500 2000 3785.

Why: the seed's θ 0.662, λ 0.1279 and window 3785 were searched for Salesforce's model; another model (another
size, a QRNN, a user's) needs its own, and re-running the test per grid point would cost minutes each. So the
model reads the validation stream once (batch size 1, in `eval_bptt` chunks, its state carried, as `test/ppl`
is computed), keeping each position's last-layer raw output and log p_vocab of its target (the cache needs no
more than that); then every grid point is arithmetic on those: per window, one pass of blocked matmuls gives
p_cache at every θ (`cache_target_probs` with a list of θ), and each λ is a `logaddexp`. Which positions are
mixed follows the model's `cache_mixing` (the seed's "all" by default).

It prints the best (θ, λ, window) with its validation perplexity, and writes under the checkpoint's run folder
(`<version>/cache_tuning/`, or `--out`): `grid.csv`, a heat-map per window (`heatmap.png`, θ × λ, best marked),
and `results.json` — the best values, the test perplexity without the cache, with the checkpoint's cache
settings and with the tuned ones, the time per grid point, and the test perplexity over the positions the seed's
`my_validate` evaluates (whole `eval_bptt` chunks only; ours counts every token). With a W&B logger in the
config, the grid, the heat-map and the results go to a W&B run of their own (offline as configured).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python scripts/tune_cache.py`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

THETAS = (0.1, 0.2, 0.3, 0.45, 0.662, 1.0, 1.5)
LAMBDAS = (0.02, 0.05, 0.08, 0.1279, 0.16, 0.2, 0.25, 0.3)


@torch.no_grad()
def read_stream(model, loader) -> dict[str, torch.Tensor]:
    """One pass of the model over an evaluation stream: target log p_vocab [N], raw last-layer output [N, H],
    targets [N]; `chunk` is the loader's chunk length (it decides pointer.py's unmixed positions)."""
    model.eval()
    model.hidden = None
    device = next(model.parameters()).device
    log_probs, hidden, targets, chunk = [], [], [], 0
    for inputs, batch_targets in loader:
        if inputs.shape[0] != 1:
            raise ValueError(f"the cache reads one stream: set data.eval_batch_size 1 (it is {inputs.shape[0]}).")
        inputs, batch_targets = inputs.to(device), batch_targets.to(device)
        target_log_probs, raw_output = model.score(inputs, batch_targets)
        log_probs.append(target_log_probs[0])
        hidden.append(raw_output[0].float())
        targets.append(batch_targets[0])
        chunk = max(chunk, inputs.shape[1])
    model.hidden = None
    return {"log_probs": torch.cat(log_probs), "hidden": torch.cat(hidden), "targets": torch.cat(targets),
            "chunk": chunk}


def mixed_positions(n: int, window: int, chunk: int, mixing: str) -> torch.Tensor:
    """Which of a stream's n positions the cache mixes (`lightning_modules/neural_cache.py`, `mixing`)."""
    index = torch.arange(n)
    if mixing == "all":
        return index > 0
    start = index - index % chunk  # pointer.py: start_idx (history length, at most window) + idx > window
    return start.clamp(max=window) + index % chunk > window


def cached_log_probs(log_probs: torch.Tensor, p_cache: torch.Tensor, mixed: torch.Tensor,
                     lambdah: float) -> torch.Tensor:
    """log((1 − λ) p_vocab + λ p_cache) at the mixed positions, log p_vocab elsewhere (as NeuralCache mixes)."""
    vocab_part = log_probs + math.log1p(-lambdah)
    cache_part = p_cache.log() + (math.log(lambdah) if lambdah > 0 else -math.inf)
    return torch.where(mixed, torch.logaddexp(vocab_part, cache_part.to(vocab_part.dtype)), log_probs)


def perplexity(log_probs: torch.Tensor) -> float:
    return math.exp(-log_probs.double().mean().item())


def search(stream: dict, thetas: list[float], lambdas: list[float], windows: list[int], mixing: str) -> dict:
    """Validation perplexity at every (window, θ, λ); rows in that order, the best, and the seconds it took."""
    from lightning_modules.neural_cache import cache_target_probs

    hidden, targets, log_probs = stream["hidden"], stream["targets"], stream["log_probs"]
    rows, started = [], time.perf_counter()
    for window in windows:
        p_cache = cache_target_probs(hidden, targets, hidden[:0], targets[:0], window, thetas)  # [θ, N]
        mixed = mixed_positions(len(targets), window, stream["chunk"], mixing)
        for theta, p in zip(thetas, p_cache):
            rows += [{"window": window, "theta": theta, "lambda": lambdah,
                      "val_ppl": perplexity(cached_log_probs(log_probs, p, mixed, lambdah))} for lambdah in lambdas]
    seconds = time.perf_counter() - started
    best = min(rows, key=lambda row: row["val_ppl"])
    return {"rows": rows, "best": best, "seconds": seconds, "seconds_per_point": seconds / len(rows),
            "seconds_per_window_pass": seconds / len(windows), "val_ppl_no_cache": perplexity(log_probs),
            "val_tokens": len(targets)}


def test_perplexities(stream: dict, settings: dict[str, dict], mixing: str, seed_chunk: int) -> dict:
    """Test perplexity without the cache and with each named cache setting; and over the positions the seed's
    `my_validate`/`my_cache_pointer` evaluate: whole chunks of `seed_chunk` only (n // chunk of them)."""
    from lightning_modules.neural_cache import cache_target_probs

    hidden, targets, log_probs = stream["hidden"], stream["targets"], stream["log_probs"]
    counted = (len(targets) + 1) // seed_chunk * seed_chunk  # predictions the seed makes from n = N + 1 tokens
    out = {"tokens": len(targets), "seed_counted_tokens": counted, "no_cache": perplexity(log_probs),
           "no_cache_seed_positions": perplexity(log_probs[:counted])}
    for name, s in settings.items():
        p_cache = cache_target_probs(hidden, targets, hidden[:0], targets[:0], s["window"], s["theta"])
        mixed_lp = cached_log_probs(log_probs, p_cache, mixed_positions(len(targets), s["window"], stream["chunk"],
                                                                        mixing), s["lambda"])
        out[name] = {**s, "ppl": perplexity(mixed_lp), "ppl_seed_positions": perplexity(mixed_lp[:counted])}
    return out


def write_grid(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_heatmaps(rows: list[dict], best: dict, path: Path) -> None:
    """Validation perplexity over θ × λ, one panel per window, the best cell outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = sorted({row["window"] for row in rows})
    thetas, lambdas = sorted({row["theta"] for row in rows}), sorted({row["lambda"] for row in rows})
    figure, axes = plt.subplots(1, len(windows), figsize=(4.2 * len(windows), 3.6), squeeze=False)
    values = {(row["window"], row["theta"], row["lambda"]): row["val_ppl"] for row in rows}
    low, high = min(values.values()), max(values.values())
    for axis, window in zip(axes[0], windows):
        grid = [[values[(window, theta, lambdah)] for lambdah in lambdas] for theta in thetas]
        image = axis.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r", vmin=low, vmax=high)
        axis.set_xticks(range(len(lambdas)), [f"{v:g}" for v in lambdas], rotation=45, fontsize=7)
        axis.set_yticks(range(len(thetas)), [f"{v:g}" for v in thetas], fontsize=7)
        axis.set_xlabel("λ")
        axis.set_ylabel("θ")
        axis.set_title(f"window {window}", fontsize=9)
        if window == best["window"]:
            axis.add_patch(plt.Rectangle((lambdas.index(best["lambda"]) - 0.5, thetas.index(best["theta"]) - 0.5), 1,
                                         1, fill=False, edgecolor="red", linewidth=2))
    figure.colorbar(image, ax=axes[0].tolist(), label="validation perplexity")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def grid_edges(best: dict, grid: dict[str, list[float]]) -> list[str]:
    """The settings whose best value is the largest or smallest tried (of more than one): the optimum may lie beyond
    the grid, so the tuned perplexity is only an upper bound on what the cache can do for this model."""
    return [f"{name} {best[name]:g} is the {'largest' if best[name] == max(values) else 'smallest'} tried"
            for name, values in grid.items() if len(set(values)) > 1 and best[name] in (min(values), max(values))]


def main(argv: list[str] | None = None) -> dict:
    ways = "\n\n".join(__doc__.split("\n\n")[1:4])  # the docstring's "three ways" paragraphs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=ways,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True,
                        help="a language model's checkpoint written by cli.py fit; `last` (with --config): this "
                             "experiment's newest")
    parser.add_argument("--thetas", type=float, nargs="+", default=list(THETAS), help="default: %(default)s")
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS), help="default: %(default)s")
    parser.add_argument("--windows", type=int, nargs="+", help="default: the model's cache_window")
    parser.add_argument("--out", type=Path, help="default: <the checkpoint's run folder>/cache_tuning")
    options, cli_args = parser.parse_known_args(argv)

    import cli
    from cli_checks import read_checkpoint, state_problem, stop
    from cli_resume import ResumeProblem, choose_last
    from scripts.saved_run import language_model_problem, run_arguments

    run = cli.main(run_arguments(options.ckpt_path, cli_args), run=False)
    path = options.ckpt_path
    if path == "last":
        try:
            path = choose_last(run.config.trainer.default_root_dir or ".", run.flat_config(run.config))["path"]
        except ResumeProblem as problem:
            stop(str(problem))
    checkpoint, problem = read_checkpoint(path, weights_only=True)
    model, data = run.model, run.datamodule
    if (problem or (problem := language_model_problem(path, checkpoint))
            or (problem := state_problem(path, checkpoint, model, data))):
        stop(problem)
    model.load_state_dict(checkpoint["state_dict"])
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # the one model pass; the grid follows its device
    settings = model.cache_settings
    windows = options.windows or [settings["window"]]

    data.setup("fit")
    data.setup("test")
    started = time.perf_counter()
    validation = read_stream(model, data.val_dataloader())
    read_s = time.perf_counter() - started
    result = search(validation, options.thetas, options.lambdas, windows, settings["mixing"])
    best = result["best"]
    test = read_stream(model, data.test_dataloader())
    chosen = {"checkpoint_cache": {"window": settings["window"], "theta": settings["theta"],
                                   "lambda": settings["lambdah"]},
              "tuned_cache": {"window": best["window"], "theta": best["theta"], "lambda": best["lambda"]}}
    tested = test_perplexities(test, chosen, settings["mixing"], data.eval_bptt)
    summary = {"checkpoint": str(path), "mixing": settings["mixing"], "best": best,
               "val_ppl_no_cache": result["val_ppl_no_cache"], "val_tokens": result["val_tokens"],
               "seconds_reading_validation": read_s, "seconds_grid": result["seconds"],
               "grid_points": len(result["rows"]), "seconds_per_grid_point": result["seconds_per_point"],
               "seconds_per_window_pass": result["seconds_per_window_pass"], "test": tested,
               "on_grid_edge": grid_edges(best, {"theta": options.thetas, "lambda": options.lambdas, "window": windows})}

    out = options.out or Path(path).resolve().parent.parent / "cache_tuning"
    out.mkdir(parents=True, exist_ok=True)
    write_grid(result["rows"], out / "grid.csv")
    plot_heatmaps(result["rows"], best, out / "heatmap.png")
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    log_to_wandb(run, result["rows"], summary, out / "heatmap.png")
    print(f"best on validation ({result['val_tokens']:,} tokens): theta {best['theta']:g}, lambda {best['lambda']:g}, "
          f"window {best['window']}: val ppl {best['val_ppl']:.2f} (no cache {result['val_ppl_no_cache']:.2f}); "
          f"test ppl {tested['tuned_cache']['ppl']:.2f} (no cache {tested['no_cache']:.2f}, the checkpoint's cache "
          f"{tested['checkpoint_cache']['ppl']:.2f}); {len(result['rows'])} grid points in {result['seconds']:.1f} s "
          f"({1e3 * result['seconds_per_point']:.0f} ms each); wrote {out}")
    if summary["on_grid_edge"]:
        print(f"warning: {'; '.join(summary['on_grid_edge'])}: the best may lie beyond the grid; run again with "
              "wider --thetas / --lambdas / --windows.")
    return summary


def log_to_wandb(run, rows: list[dict], summary: dict, heatmap: Path) -> None:
    """The grid, the heat-map and the results to a W&B run of their own, if the config has a W&B logger."""
    from pytorch_lightning.loggers import WandbLogger

    from cli_loggers import finish_own_wandb_run

    for logger in run.trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams({"cache_tuning": {"checkpoint": summary["checkpoint"], "mixing": summary["mixing"]}})
            logger.log_table("cache_tuning/grid", columns=list(rows[0]), data=[list(r.values()) for r in rows])
            logger.log_image("cache_tuning/heatmap", images=[str(heatmap)])
            logger.log_metrics({"cache_tuning/best_val_ppl": summary["best"]["val_ppl"],
                                "cache_tuning/test_ppl_tuned": summary["test"]["tuned_cache"]["ppl"],
                                "cache_tuning/test_ppl_no_cache": summary["test"]["no_cache"]})
            finish_own_wandb_run(started_before=None)  # and wait until an offline run's file is whole


if __name__ == "__main__":
    main()
