"""Time of one QRNN language-model training step against one AWD-LSTM step of the same size.

Why: the QRNN's reason to exist is speed — its matrix products run over all time steps at once and only an
elementwise recurrence is sequential, where an LSTM multiplies by its hidden-to-hidden matrix once per step.
Issue 7 asks for a QRNN step in at most 0.7× the AWD-LSTM's.

Sides: `AWDLSTM` and `QRNNLanguageNet` (`lightning_modules/nets/`), the QRNN once per fo-pool method it can run
here (`qrnn_sequential`, `qrnn_chunked`, `qrnn_triton`: `pool_method`; the triton side needs CUDA, or Triton's
interpreter, as in `qrnn_recurrence.py`), all built with the same sizes — embedding 400,
3 layers of hidden 1150 (the last one 400 wide, for the tied decoder), the WikiText-2 vocabulary of 33,278,
QRNN windows 2/1/1 — and everything else from their seed configs (`configs/wikitext2_lstm.yaml`,
`configs/wikitext2_qrnn.yaml`): dropouts, weight drop (0.5 on the LSTM's hidden-to-hidden matrices, 0.1 on
the QRNN's Linear), AR/TAR weights, Adam's settings and gradient clipping at 0.12.

One step is what Lightning runs per training batch: `LanguageModel.training_step` itself (net forward from the
carried, detached state; tied decoder; cross-entropy; AR and TAR), zero_grad, backward, `clip_grad_norm_`,
`Adam.step`. Lightning's loop around it (hooks, logging, progress bar) is left out: the same on both sides.
The step is split by timestamps taken inside it (a forward hook on the net, a gradient hook on its output):
net forward, head forward (decoder, softmax, AR/TAR), head backward, net backward, update (clip + Adam).

Fairness: same tokens, batch, float32 and device for all; one untimed warm-up step each, from the same random
state (so the QRNN sides' first losses agree: the methods compute the same thing); repetitions rotate which side
runs first; medians are reported and the ratio — the QRNN with the method `auto` picks here, against the LSTM —
is paired per repetition.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # runnable as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from benchmarks.cifar_pipeline import machine
from benchmarks.qrnn_recurrence import POOL_METHODS, unavailable
from lightning_modules.language_model import LanguageModel
from lightning_modules.nets.fo_pool import choose_method

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.7
CONFIGS = {"awd_lstm": REPO / "configs/wikitext2_lstm.yaml", "qrnn": REPO / "configs/wikitext2_qrnn.yaml"}
SIDES = ("awd_lstm", *(f"qrnn_{method}" for method in POOL_METHODS))
NAMES = {"awd_lstm": "AWD-LSTM", **{f"qrnn_{method}": f"QRNN ({method})" for method in POOL_METHODS}}
PHASES = ("net_forward", "head_forward", "head_backward", "net_backward", "update")


class BareLanguageModel(LanguageModel):
    """`LanguageModel` whose `training_step` runs outside a Trainer: nothing is logged and there is no
    scheduler, so the per-batch lr scaling is skipped (it would be ×1 anyway: every batch is `bptt` long)."""

    def log(self, *args, **kwargs) -> None:
        pass

    def lr_schedulers(self) -> None:
        return None


def _load(class_path: str):
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def kind(side: str) -> str:
    """The net a side trains: "awd_lstm" or "qrnn" (whatever its fo-pool method)."""
    return side.split("_")[0] if side.startswith("qrnn") else side


def build(side: str, vocab: int, embedding: int, hidden: int | None, layers: int | None) -> dict:
    """The side's module, Adam and clip value from its seed config, with the sizes replaced by the given ones
    (hidden/layers None: the config's own, e.g. the QRNN's 4 layers of 1550) and a QRNN side's fo-pool method."""
    config = yaml.safe_load(CONFIGS[kind(side)].read_text())
    model_args = config["model"]["init_args"]
    net_config, optimizer_config = model_args["net"], model_args["optimizer"]
    sizes = dict(vocab_size=vocab, embedding_size=embedding,
                 hidden_size=hidden or net_config["init_args"]["hidden_size"],
                 num_layers=layers or net_config["init_args"]["num_layers"])
    torch.manual_seed(0)
    method = {"pool_method": side.split("_", 1)[1]} if kind(side) == "qrnn" else {}
    net = _load(net_config["class_path"])(**{**net_config["init_args"], **sizes, **method})
    module = BareLanguageModel(net, alpha=model_args["alpha"], beta=model_args["beta"], cache=False)
    optimizer_args = {k: tuple(v) if isinstance(v, list) else v for k, v in optimizer_config["init_args"].items()}
    optimizer = _load(optimizer_config["class_path"])(module.net.parameters(), **optimizer_args)
    return {"module": module.train(), "optimizer": optimizer, "clip": config["trainer"]["gradient_clip_val"],
            "sizes": sizes}


def _step(side: dict, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
          bf16: bool = False) -> tuple[float, dict]:
    """One training step; returns its loss and the seconds of each phase (they sum to the whole step).
    `bf16`: the forward under bf16 autocast, as Lightning's `precision: bf16-mixed` runs it."""
    module, optimizer = side["module"], side["optimizer"]
    marks = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def at_net_output(net, inputs, out) -> None:
        sync()
        marks["net_forward"] = time.perf_counter()
        out.raw_output.register_hook(at_net_output_grad)

    def at_net_output_grad(grad: torch.Tensor) -> None:  # every gradient of the head has reached the net
        sync()
        marks["head_backward"] = time.perf_counter()

    optimizer.zero_grad(set_to_none=True)
    handle = module.net.register_forward_hook(at_net_output)
    sync()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = module.training_step(batch, 0)
    sync()
    marks["head_forward"] = time.perf_counter()
    loss.backward()
    sync()
    marks["net_backward"] = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(module.net.parameters(), side["clip"])
    optimizer.step()
    sync()
    marks["update"] = time.perf_counter()
    handle.remove()
    ends = [start] + [marks[phase] for phase in PHASES]
    return loss.item(), {phase: ends[i + 1] - ends[i] for i, phase in enumerate(PHASES)}


def matmul_macs(vocab: int, embedding: int, hidden: int, layers: int) -> dict:
    """Multiply-accumulates per token of each side's matrix products (forward; backward is twice that)."""
    sizes = [embedding] + [hidden] * (layers - 1) + [embedding]
    lstm = sum(4 * sizes[i + 1] * (sizes[i] + sizes[i + 1]) for i in range(layers))
    qrnn = sum(3 * sizes[i + 1] * (2 if i == 0 else 1) * sizes[i] for i in range(layers))
    return {"awd_lstm": lstm, "qrnn": qrnn, "decoder": embedding * vocab}


def run(batch: int = 20, seq_len: int = 70, vocab: int = 33278, embedding: int = 400, hidden: int | None = 1150,
        layers: int | None = 3, repeats: int = 5, threads: int | None = None, bf16: bool = False) -> dict:
    """Warm up both sides with one step, then time `repeats` alternating rounds of one step each.

    `hidden`, `layers`: both sides' sizes; None gives each side its seed config's own (AWD-LSTM 3 × 1150,
    QRNN 4 × 1550). `threads`: torch CPU threads for the run (None keeps torch's default). On a busy CPU, fewer
    threads than cores avoids waiting at every op for a descheduled worker thread, a wait that hits the LSTM's
    many small per-step ops hardest. `bf16`: forward under bf16 autocast (a GPU run's default precision).
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(batch, seq_len, vocab, embedding, hidden, layers, repeats, bf16)
    finally:  # other benchmarks may run in the same process
        torch.set_num_threads(previous_threads)


def _measure(batch: int, seq_len: int, vocab: int, embedding: int, hidden: int | None, layers: int | None,
             repeats: int, bf16: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=generator).to(device)
    data = (tokens[:, :-1], tokens[:, 1:])  # next-token targets, as the datamodule makes them
    not_run = {f"qrnn_{method}": why for method, why in unavailable(device).items()}
    names = tuple(name for name in SIDES if name not in not_run)
    qrnn = f"qrnn_{choose_method('auto', device)}"  # the claimed side: what a run here takes
    sides = {name: build(name, vocab, embedding, hidden, layers) for name in names}
    start_weights = {}
    for name, side in sides.items():
        side["module"].to(device)
        start_weights[name] = [p.detach().clone() for p in side["module"].net.parameters()]

    losses = {}
    for name, side in sides.items():  # warm-up, each from the same random state (dropout masks)
        torch.manual_seed(1)
        losses[name] = [_step(side, data, device, bf16)[0]]
    seconds = {name: [] for name in names}
    phases = {name: {phase: [] for phase in PHASES} for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            loss, split = _step(sides[name], data, device, bf16)
            losses[name].append(loss)
            seconds[name].append(sum(split.values()))
            for phase, secs in split.items():
                phases[name][phase].append(secs)

    updated = {name: sum(not torch.equal(before, after)
                         for before, after in zip(start_weights[name], side["module"].net.parameters()))
               for name, side in sides.items()}
    ratios = [q / lstm for q, lstm in zip(seconds[qrnn], seconds["awd_lstm"])]
    ratio = statistics.median(ratios)
    own = {name: (side["sizes"]["hidden_size"], side["sizes"]["num_layers"]) for name, side in sides.items()}
    macs = {name: matmul_macs(vocab, embedding, *own[name])[kind(name)] for name in names}
    macs["decoder"] = embedding * vocab
    return {
        "batch": batch, "seq_len": seq_len, "vocab": vocab, "embedding": embedding, "hidden": hidden,
        "layers": layers, "sizes": own, "repeats": repeats, "dtype": "bf16-mixed" if bf16 else "float32",
        "machine": machine(device), "sides": names, "not_run": not_run, "qrnn_side": qrnn,
        "clip": {name: side["clip"] for name, side in sides.items()},
        "params": {name: sum(p.numel() for p in side["module"].net.parameters()) for name, side in sides.items()},
        "param_tensors": {name: len(start_weights[name]) for name in names},
        "params_updated": updated,  # parameter tensors that the steps changed
        "losses": losses,  # the training objective (cross-entropy + AR + TAR) of every step, warm-up first
        "seconds": seconds, "ms": {name: 1e3 * statistics.median(s) for name, s in seconds.items()},
        "phase_ms": {name: {phase: 1e3 * statistics.median(s) for phase, s in split.items()}
                     for name, split in phases.items()},
        "matmul_macs": macs,
        "ratios": ratios, "ratio": ratio, "target": TARGET_RATIO, "passed": ratio <= TARGET_RATIO,
    }


def markdown(result: dict) -> str:
    """The docs/BENCHMARKS.md section for one `run` result."""
    m = result["machine"]
    where = f"{m['device']} ({m['gpu']})" if m["gpu"] else m["device"]
    macs, qrnn = result["matmul_macs"], result["qrnn_side"]
    lines = [
        "## QRNN vs AWD-LSTM language-model training step",
        "",
        f"One training step on [batch, time] = [{result['batch']}, {result['seq_len']}] tokens, vocabulary "
        f"{result['vocab']:,}, both nets with embedding {result['embedding']} and {result['layers']} layers of "
        f"hidden {result['hidden']} (QRNN windows 2/1/1), tied decoder, {result['dtype']}; everything else from the "
        "seed configs (`configs/wikitext2_lstm.yaml`, `configs/wikitext2_qrnn.yaml`): dropouts, weight drop, "
        f"AR/TAR, Adam, gradient clipping at {result['clip'][qrnn]}. The QRNN runs once per fo-pool method this "
        "device runs (`pool_method`; same weights and first batch, so their first losses agree). "
        "A step is `LanguageModel.training_step` "
        "(forward from the carried state, decoder, cross-entropy, AR/TAR) + backward + clip + `Adam.step`, "
        "without Lightning's loop around it. All sides get the same tokens; one untimed warm-up step each; "
        f"{result['repeats']} repetitions rotating which side goes first; medians; ratio paired per repetition. "
        "The default batch of 20 keeps the run to 1–2 minutes on 2 cores (the seed trains with 100).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, device {where}, torch {m['torch']}, Python {m['python']}, "
        f"{m['torch_threads']} torch threads; 1-minute load average {m['load_1min']} at start.",
        "",
        "| side | parameters | matmul MACs/token | ms/step (median) | min | max | recurrent net fwd+bwd "
        "| decoder + softmax + AR/TAR fwd+bwd | clip + Adam |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in result["sides"]:
        ms, p = [1e3 * s for s in result["seconds"][name]], result["phase_ms"][name]
        net, head, update = (p["net_forward"] + p["net_backward"], p["head_forward"] + p["head_backward"],
                             p["update"])
        total = net + head + update
        lines.append(
            f"| {NAMES[name]} | {result['params'][name] / 1e6:.1f} M | {(macs[name] + macs['decoder']) / 1e6:.1f} M "
            f"| {result['ms'][name]:.1f} | {min(ms):.1f} | {max(ms):.1f} | {net:.1f} ms ({net / total:.0%}) "
            f"| {head:.1f} ms ({head / total:.0%}) | {update:.1f} ms ({update / total:.0%}) |")
    lines += [f"| {NAMES[name]} | not run: {why} | | | | | | | |" for name, why in result["not_run"].items()]
    verdict = "PASS" if result["passed"] else "FAIL"
    flops_ratio = (macs[qrnn] + macs["decoder"]) / (macs["awd_lstm"] + macs["decoder"])
    q = result["phase_ms"][qrnn]
    floor = (q["head_forward"] + q["head_backward"] + q["update"]) / result["ms"]["awd_lstm"]
    lines += [
        "",
        "The phases are medians of timestamps taken inside each step (a forward hook on the net, a gradient hook "
        "on its output), so a row's three shares add up to the step. \"Recurrent net\" includes the embedding and "
        "its dropout; the decoder's weight is the embedding's (tied), so both sides pay the same "
        f"{result['vocab']:,}-word "
        "softmax and the same update of its matrix.",
        "",
        f"Median {NAMES[qrnn]} / AWD-LSTM step time (the method `auto` takes here): **{result['ratio']:.2f}×** "
        f"(range {min(result['ratios']):.2f}–"
        f"{max(result['ratios']):.2f}×); target ≤ {result['target']}×: **{verdict}**. For reference, the ratio of "
        f"matmul work per token (layers + decoder) is {flops_ratio:.2f}; with recurrent layers that cost "
        f"nothing, the QRNN step would still be {floor:.2f}× the AWD-LSTM's (its own decoder, softmax and update).",
        "",
    ]
    if m["torch_threads"] > 1 and (m["load_1min"] or 0) >= 1:
        lines += [
            "Caution: the CPU was busy (load above). With several torch threads each parallel op waits for "
            "descheduled worker threads, which costs the LSTM's 70 sequential steps per layer far more than the "
            "QRNN: rerun idle, or with `--threads 1`, before trusting the ratio.",
            "",
        ]
    lines += [
        "What the profile showed (torch.profiler, QRNN step, batch 20, 1 thread, this 2-core Xeon while busy; "
        "3.7 s per profiled step): the tied decoder and its 33,278-way log-softmax, forward and backward, took "
        "54%; elementwise work on the 33,278×400 embedding matrix (embedding dropout, the tied gradient's sum, "
        "Adam) 12%; the QRNN layers' matrix products 20%; their weight-drop masks (`bernoulli_`, 134 ms) 4%; gate "
        "activations and the other [B, T, H] elementwise ops 2%; `fo_pool` itself, both directions, 13 ms (0.3%). "
        "The AWD-LSTM runs as oneDNN's fused LSTM layer (no Python loop over time), "
        "so it is a fair baseline. Nothing QRNN-specific was worth fixing, so `qrnn.py` is unchanged: matrix "
        "products are about three quarters of the QRNN layers' time, the weight-drop masks most of the rest "
        "(PyTorch's CPU `bernoulli_`, as slow per element for the LSTM's masks), and the step is bounded by the "
        "shared decoder. One shared inefficiency was found, "
        "outside the QRNN: `embedding_dropout` computes `weight * mask / (1 - p)`, two full passes over the "
        "embedding matrix forward and two backward, where `weight * (mask / (1 - p))` needs one each (about "
        "80 ms per step here, on both sides). Measured once at the seed's batch of 100 (1 thread, 2 "
        "repetitions): 0.58× (range 0.52–0.64×), the decoder then 68% of the QRNN step.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20, help="sequences per batch (the seed trains with 100)")
    parser.add_argument("--seq-len", type=int, default=70, help="bptt length")
    parser.add_argument("--hidden", type=int, default=1150, help="the AWD-LSTM's hidden size, used by both")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    print(markdown(run(batch=args.batch, seq_len=args.seq_len, hidden=args.hidden, layers=args.layers,
                       repeats=args.repeats, threads=args.threads)))


if __name__ == "__main__":
    main()
