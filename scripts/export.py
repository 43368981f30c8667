"""Export a trained net for plain PyTorch: a `torch.export` program and its JSON, plus a weights-only file.

    python scripts/export.py --ckpt_path runs/cifar/csv/version_0/checkpoints/last.ckpt [--out DIR]
    python scripts/export.py --ckpt_path .../wikitext2 last.ckpt --seq_len 70

Writes to `--out` (default: `export/` beside the checkpoint):
- `net.pt2`: the net in eval mode as a `torch.export` program, loadable with `torch.export.load(path).module()`
  and nothing else — no Lightning, no code of this repository. The batch size is dynamic. Image nets take a
  float32 [batch, 3, S, S] batch (pixels / 255, normalised with the JSON's mean and std) and return logits. The
  language models take int64 tokens [batch, seq_len] and their state tensors (zeros to start, the shapes in the
  JSON), and return logits [batch, seq_len, vocabulary] then the next state in the same order: feed it back to
  read on. Their sequence length is fixed at export (`--seq_len`; 1 reads token by token, as generation does):
  the recurrences are loops over time, which tracing unrolls, so a dynamic length cannot be exported.
- `net.json`: what a user needs beside the program: the task, class names or the vocabulary, the input layout,
  normalisation and size, the state's shapes, the output, and the net's constructor arguments.
- `weights.pt`: the net's `state_dict` and its constructor arguments (`{"net": {"class_path", "init_args"},
  "state_dict"}`), plain tensors and values (`torch.load(..., weights_only=True)`), for those who build the net
  from this repository's `lightning_modules/nets/`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python scripts/export.py`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.export import Dim  # noqa: E402

MAX_BATCH = 4096


class LanguageModelStep(nn.Module):
    """The language net with a flat state: (tokens, *state tensors) → (logits, *next state tensors)."""

    def __init__(self, net: nn.Module, per_layer: int) -> None:
        super().__init__()
        self.net, self.per_layer = net, per_layer

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = [tuple(state[i:i + self.per_layer]) for i in range(0, len(state), self.per_layer)]
        out = self.net(tokens, hidden)
        return (self.net.decoder(out.output), *[tensor for layer in out.hidden for tensor in layer])


def load_module(path: str | Path) -> tuple[Any, dict]:
    """The LightningModule a cli.py checkpoint saved (rebuilt from its hyperparameters), in eval mode, and the
    checkpoint itself (memory-mapped)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not class_path:
        raise SystemExit(f"scripts/export.py: error: {path} has no saved model class: pass a checkpoint written by "
                         "cli.py.")
    module, _, name = class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    return model_class.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval(), checkpoint


def image_details(checkpoint: dict, num_classes: int) -> dict[str, Any]:
    """Input size, normalisation and class names of an image checkpoint, from its datamodule."""
    from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD, CLASSES
    from datamodules.stanford_cars import IMAGENET_MEAN, IMAGENET_STD

    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if "StanfordCarsDataModule" in checkpoint or "image_size" in data:
        size, mean, std = data.get("image_size", 224), IMAGENET_MEAN, IMAGENET_STD
        classes = (checkpoint.get("StanfordCarsDataModule") or {}).get("classes")
    else:
        size, mean, std = 32, CIFAR10_MEAN, CIFAR10_STD
        classes = (checkpoint.get("CIFAR10DataModule") or {}).get("classes") or list(CLASSES)
    return {"size": size, "mean": list(mean), "std": list(std),
            "classes": list(classes) if classes else [f"class_{i}" for i in range(num_classes)]}


def export(path: str | Path, out: str | Path | None = None, seq_len: int = 1) -> dict[str, Any]:
    """Write net.pt2, net.json and weights.pt for the checkpoint at `path`; returns the JSON's content."""
    from lightning_modules import LanguageModel

    model, checkpoint = load_module(path)
    net = model.net.eval()
    out = Path(out) if out else Path(path).resolve().parent / "export"
    out.mkdir(parents=True, exist_ok=True)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    constructor = (checkpoint.get("hyper_parameters") or {}).get("net")
    info: dict[str, Any] = {"checkpoint": str(path), "torch": torch.__version__, "net": constructor,
                            "files": {"program": "net.pt2", "weights": "weights.pt"},
                            "load": "torch.export.load('net.pt2').module()"}
    with torch.no_grad():
        if isinstance(model, LanguageModel):
            if seq_len <= 0:
                raise SystemExit(f"scripts/export.py: error: --seq_len is {seq_len}; it must be at least 1.")
            vocab = (checkpoint.get("WikiText2DataModule") or {}).get("vocab")
            states = [[t for layer in net(torch.zeros(b, seq_len, dtype=torch.long), None).hidden for t in layer]
                      for b in (2, 3)]  # two batch sizes show which dimension of each state tensor is the batch
            per_layer = len(net(torch.zeros(2, seq_len, dtype=torch.long), None).hidden[0])
            batch_dims = [next((i for i, (a, b) in enumerate(zip(x.shape, y.shape)) if a != b), None)
                          for x, y in zip(*states)]
            program = torch.export.export(
                LanguageModelStep(net, per_layer).eval(), (torch.zeros(2, seq_len, dtype=torch.long), *states[0]),
                dynamic_shapes=({0: batch}, tuple({d: batch} if d is not None else {} for d in batch_dims)))
            info.update(task="language_model", vocab=vocab, eos="<eos>", unk="<unk>", input={
                "tokens": {"shape": ["batch", seq_len], "dtype": "int64"},
                "state": [{"shape": ["batch" if i == d else n for i, n in enumerate(s.shape)], "dtype": "float32",
                           "start": "zeros"} for s, d in zip(states[0], batch_dims)]},
                output="logits [batch, seq_len, vocabulary], then the next state tensors in the input's order")
        else:
            details = image_details(checkpoint, model._num_classes(net))
            example = torch.zeros(2, 3, details["size"], details["size"])
            program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
            info.update(task="image_classification", classes=details["classes"], input={
                "shape": ["batch", 3, details["size"], details["size"]], "dtype": "float32", "channels": "RGB",
                "scale": "pixel values / 255", "mean": details["mean"], "std": details["std"],
                "normalise": "(x / 255 - mean) / std per channel", "resize": "shorter side to size, centre crop"},
                output="logits [batch, classes]; softmax gives probabilities")
    torch.export.save(program, out / "net.pt2")
    torch.save({"net": constructor, "state_dict": {k: v.clone() for k, v in net.state_dict().items()}},
               out / "weights.pt")
    (out / "net.json").write_text(json.dumps(info, indent=1))
    print(f"exported {info['task']} net to {out} (net.pt2, net.json, weights.pt)")
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by cli.py")
    parser.add_argument("--out", type=Path, help="default: export/ beside the checkpoint")
    parser.add_argument("--seq_len", type=int, default=1, help="language models: tokens per call (fixed)")
    options = parser.parse_args(argv)
    return export(options.ckpt_path, options.out, options.seq_len)


if __name__ == "__main__":
    main()
