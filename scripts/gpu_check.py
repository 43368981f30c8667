"""The GPU check: the seed's CIFAR-10 run and the GPU benchmarks, in one command with a fixed time budget.

Started by `scripts/gpu_check.sh`, which first installs the carried wheels and converts the carried CIFAR-10
images (docs/GPU_CHECK.md says how to prepare the carry). Steps, most important first; every result is written
to `--out` (results.json, gpu_bench.md) the moment it exists, so a run killed at its limit returns what it had:

  1. environment: versions, the GPU, the driver;
  2. the seed's run: configs/cifar.yaml + configs/trainer/gpu_fast.yaml, 30 epochs on the full 50k/10k;
  3. benchmarks (`child-bench`): copy bandwidth and bf16 matmul rate, WRN-22 step (fp32, bf16, +channels-last,
     +compile), QRNN fo_pool by each method (sequential, chunked, Triton kernels) against the copy bandwidth, the
     QRNN LM step (each method) against the cuDNN AWD-LSTM step, the neural cache over the WikiText-2 test stream;
  4. the 18-epoch + TTA run, only if the time left covers it (estimated from step 2's epochs);
  5. the val/acc-against-time plot.

Each run and the benchmarks run as child processes of this one: a crash or a hang in one cannot take the others
down, and a child still running at its deadline is sent SIGTERM (PreemptionCheckpoint saves and the run stops).
`--dry-run` does all of it on the CPU at toy sizes, in about a minute: a test in `make test` runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python scripts/gpu_check.py`
    sys.path.insert(0, str(REPO))

from benchmarks.run_all import write_atomic  # noqa: E402
from scripts import gpu_report, study_report  # noqa: E402
from scripts.time_to_accuracy import summarize  # noqa: E402

TARGET = 0.94
BUDGET_S = 480  # the whole command, set-up included: the lent machine's 15 minutes hold its start and one try
BENCH_RESERVE_S = 120  # kept free for the benchmarks while the 30-epoch run trains
STARTUP_S = 45  # a fit child's start (imports, data) plus its final test with TTA, beyond max_time
SEED_RUN, SHORT_RUN = "wrn22_30ep", "wrn22_18ep_tta"
SELF = [sys.executable, "-u", __file__]  # children: `child-fit` and `child-bench` of this script


def fit_args(name: str, epochs: int, data_dir: Path, runs: Path, max_time_s: float, dry: bool) -> list[str]:
    """`cli.py fit` arguments of one run: the seed's config with the fast GPU settings (CPU toy sizes if `dry`)."""
    args = ["fit", "--config", "configs/cifar.yaml", "--config", "configs/trainer/gpu_fast.yaml",
            "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(runs / name),
            "--data.data_dir", str(data_dir), "--data.download", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.max_time", time.strftime("00:%H:%M:%S", time.gmtime(max(60, int(max_time_s))))]
    if importlib_missing("wandb"):
        args += ["--config", "configs/trainer/csv_only.yaml"]
    if dry:  # same config, CPU toy sizes: WRN-10-1, no compilation (tested elsewhere), bf16 autocast kept
        args += ["--trainer.accelerator", "cpu", "--model.init_args.compile", "false",
                 "--model.init_args.net.init_args.widen_factor", "1",
                 "--model.init_args.net.init_args.blocks_per_group", "1", "--data.batch_size", "32",
                 "--trainer.log_every_n_steps", "1"]
    return args


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


class Check:
    """The run's state: what was measured so far, the deadline, and where the results go."""

    def __init__(self, out: Path, data_dir: Path, wiki_tokens: Path | None, budget_s: float, started: float,
                 dry: bool):
        self.out, self.data_dir, self.wiki_tokens, self.dry = out, data_dir, wiki_tokens, dry
        self.runs = REPO / "runs" / ("gpu_check_dry" if dry else "gpu_check")
        self.deadline = started + budget_s
        self.results: dict = {"dry_run": dry, "budget_s": budget_s, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                              time.gmtime()), "command": "bash scripts/gpu_check.sh" + (" --dry-run" * dry),
                              "runs": {}, "benchmarks": {}, "skipped": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        """results.json and gpu_bench.md, atomically: a kill at any moment leaves whole files."""
        write_atomic(self.out / "results.json", json.dumps(self.results, indent=1, default=str))
        write_atomic(self.out / "gpu_bench.md", gpu_report.markdown(self.results))

    def say(self, text: str) -> None:
        print(f"[gpu_check {time.strftime('%H:%M:%S')}, {self.left():.0f} s left] {text}", flush=True)

    def environment(self) -> None:
        import torch

        env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count(), "gpu": None}
        for package in ("pytorch_lightning", "torchvision", "torchmetrics", "jsonargparse", "wandb"):
            try:
                env[package] = __import__(package).__version__
            except ImportError as error:
                env[package] = f"missing ({error})"
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       bf16=torch.cuda.is_bf16_supported())
            if shutil.which("nvidia-smi"):
                query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                        "--format=csv,noheader"], capture_output=True, text=True)
                env["nvidia_smi"] = query.stdout.strip()
        self.results["environment"] = env
        self.say("environment: " + json.dumps(env))
        self.save()

    def child(self, command: list[str], timeout: float, watch: Path | None = None, env: dict | None = None) -> int:
        """Run `command` with its output in ours; SIGTERM at `timeout`, then kill if it is still there 60 s later.

        `watch`: a run folder whose metrics.csv is read every few seconds, to print each new epoch's val/acc.
        `env`: variables added to ours for the child.
        """
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})})
        end, shown = time.time() + timeout, None
        while process.poll() is None:
            if time.time() > end:
                self.say(f"time is up for {' '.join(command[-2:])}: SIGTERM (a fit saves last.ckpt and stops)")
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                break
            time.sleep(min(5.0, max(0.1, end - time.time())))
            if watch is not None and (rows := study_report.read_metrics(watch)):
                acc, elapsed = study_report.per_epoch(rows, "val/acc"), study_report.per_epoch(rows, "time/elapsed_s")
                if acc and elapsed and len(acc) != shown:
                    shown = len(acc)
                    self.say(f"{watch.name}: epoch {len(acc)} val/acc {acc[-1]:.4f} at {elapsed[-1]:.0f} s")
        return process.wait()

    def fit(self, name: str, epochs: int, allowance: float) -> None:
        """One CIFAR run in a child process, then its summary: time to 94%, epochs, compile, memory, accuracy."""
        run_dir, result_file = self.runs / name, self.runs / f"{name}.json"
        shutil.rmtree(run_dir, ignore_errors=True)
        result_file.unlink(missing_ok=True)
        args = fit_args(name, epochs, self.data_dir, self.runs, allowance - STARTUP_S, self.dry)
        self.say(f"{name}: python cli.py {' '.join(args)}")
        started = time.time()
        code = self.child([*SELF, "child-fit", str(result_file), *args], allowance, watch=run_dir)
        run = {"returncode": code, "wall_s": time.time() - started, "epochs_asked": epochs, "cli_args": args}
        if result_file.exists():
            run.update(json.loads(result_file.read_text()))
        rows = study_report.read_metrics(run_dir)
        if rows:
            run.update(summarize(run_dir, TARGET))
            epoch_s = study_report.per_epoch(rows, "time/epoch_s")
            run["epoch_s"] = epoch_s
            if len(epoch_s) > 1:
                run["median_epoch_s"] = statistics.median(epoch_s[1:])
                run["compile_s"] = max(0.0, epoch_s[0] - run["median_epoch_s"])  # the first epoch's extra time
            run["best_val_acc"] = max(study_report.per_epoch(rows, "val/acc"), default=None)
            metrics = sorted(run_dir.glob("csv/version_*/metrics.csv"))
            shutil.copyfile(metrics[-1], self.out / f"metrics_{name}.csv")
        if code != 0:
            self.results["errors"][name] = f"cli.py fit exited with {code}; see gpu_check.log"
        self.results["runs"][name] = run
        self.say(f"{name}: exit {code}, " + ", ".join(f"{k} {run.get(k)}" for k in (
            "epochs", "seconds_to_target", "best_val_acc", "test_acc", "test_acc_tta", "median_epoch_s")))
        self.save()

    def bench(self, allowance: float) -> None:
        result_file = self.runs / "benchmarks.json"
        result_file.unlink(missing_ok=True)
        argv = (["--dry-run"] if self.dry else []) + (["--wiki-tokens", str(self.wiki_tokens)] if self.wiki_tokens
                                                       else []) + ["child-bench", str(result_file)]
        # the dry run takes the Triton fo-pool path too, through Triton's interpreter: on the CPU only that runs it
        code = self.child([*SELF, *argv], allowance, env={"TRITON_INTERPRET": "1"} if self.dry else None)
        done = json.loads(result_file.read_text()) if result_file.exists() else {}
        self.results["benchmarks"] = done.get("results", {})
        self.results["errors"].update(done.get("errors", {}))
        if code != 0:
            self.results["errors"]["benchmarks"] = f"the benchmark process exited with {code}"
        self.save()

    def short_run_fits(self) -> float | None:
        """Seconds the 18-epoch run needs, estimated from the 30-epoch one; None if nothing to estimate from."""
        seed = self.results["runs"].get(SEED_RUN, {})
        if "median_epoch_s" not in seed:
            return None
        overhead = seed["wall_s"] - sum(seed["epoch_s"]) + seed.get("compile_s", 0)
        return overhead + 18 * seed["median_epoch_s"] + 30


def child_fit(result_file: Path, cli_args: list[str]) -> None:
    """One `cli.py` run in this process; then the GPU memory it peaked at, for the parent."""
    import torch

    import cli

    cli.main(cli_args)
    cuda = torch.cuda.is_available()
    write_atomic(result_file, json.dumps({
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all", choices=["all", "child-fit", "child-bench"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check" / "out")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="holds cifar-10-batches-py/")
    parser.add_argument("--wiki-tokens", type=Path, help="wiki.test.tokens for the cache benchmark (else synthetic)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="whole command, from --started")
    parser.add_argument("--started", type=float, help="epoch seconds the command started (default: now)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check the script end to end")
    args = parser.parse_args(argv)
    if args.command == "child-fit":
        return child_fit(Path(args.rest[0]), args.rest[1:])
    if args.command == "child-bench":
        from scripts.gpu_bench import child_bench

        return child_bench(Path(args.rest[0]), args.dry_run, args.wiki_tokens)

    check = Check(args.out, args.data_dir.resolve(), args.wiki_tokens, args.budget_s, args.started or time.time(),
                  args.dry_run)
    check.environment()
    check.fit(SEED_RUN, 1 if args.dry_run else 30, check.left() - BENCH_RESERVE_S)
    check.bench(check.left() - 20)
    needed = check.short_run_fits()  # the dry run's single epoch gives nothing to plan with: skipped, as reported
    if needed is not None and needed < check.left() - 20:
        check.fit(SHORT_RUN, 18, check.left() - 20)
    else:
        check.results["skipped"][SHORT_RUN] = (f"needs about {needed:.0f} s, {check.left():.0f} s left"
                                               if needed else "no epoch time from the 30-epoch run to plan with")
        check.say(f"{SHORT_RUN} skipped: {check.results['skipped'][SHORT_RUN]}")
    gpu_report.plot(check.results, check.runs, check.out / "curves.png")
    check.save()
    check.say(f"done: {check.out / 'gpu_bench.md'}")


if __name__ == "__main__":
    main()
