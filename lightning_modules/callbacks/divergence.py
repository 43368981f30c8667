"""NaNGuard's divergence rule: a run whose training loss stays far above where it started, while still finite.

The rule: the run has diverged once MORE THAN HALF of its last `window` training losses lie above `factor` × its
first training loss (the loss of the first batch this run trained, before any optimizer step).

Why this rule:
- **Relative to the run's own start.** A run starts near the loss of a uniform guess (CIFAR-10 ln 10 = 2.3,
  Stanford Cars ln 196 = 5.3, WikiText-2 ln 33 278 = 10.4) and a healthy run only goes down from there; a
  multiple of it needs no per-task number.
- **A majority of a window, not every step and not a running average.** A diverging loss bounces: the CIFAR CPU
  config at AdamW lr 50 went 2.29 → 1692 → 184 → 15.9 → 9.6 → 19.5 → 106 → 999 → ... → 1e14 at step 18, which a rule
  of "above the line at every step" would restart on at each dip; a running average is kept high for dozens of steps
  by one huge spike that has already recovered. A majority ignores any spike, and any dip, shorter than half the
  window.
- **Evaluated only where NaNGuard already reads its losses** (its periodic checks and before every checkpoint),
  in plain Python on values already on the host: no per-step device sync.

Its state (the first loss and the window) is plain floats and lists, saved in the checkpoint so that a resumed
run keeps its start and decides exactly as the uninterrupted run would.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any


class DivergenceRule:
    """More than half of the last `window` training losses above `factor` × the first one."""

    def __init__(self, factor: float, window: int) -> None:
        self.factor, self.window = factor, window
        self.first_loss: float | None = None
        self.recent: deque[tuple[int, list[float], float]] = deque(maxlen=window)  # (global step, lrs, loss)

    def line(self) -> float:
        """The loss above which a step counts as diverged. A run whose first loss is ≤ 0 (not a cross-entropy or
        likelihood) has no meaningful multiple of it, so nothing counts: its divergence is not judged."""
        if self.first_loss is None or self.first_loss <= 0:
            return math.inf
        return self.factor * self.first_loss

    def add(self, step: int, lrs: list[float], loss: float) -> bool:
        """Record one finite training loss; True when, with it, the run has diverged by the rule."""
        if self.first_loss is None:
            self.first_loss = loss
        self.recent.append((step, lrs, loss))
        return len(self.recent) == self.window and 2 * self.count_above() > self.window

    def count_above(self) -> int:
        line = self.line()
        return sum(loss > line for *_, loss in self.recent)

    def latest_above(self) -> bool:
        """The last recorded loss is above the line: a checkpoint of this state could be a diverged one."""
        return bool(self.recent) and self.recent[-1][2] > self.line()

    def first_above(self) -> tuple[int, list[float], float]:
        """The earliest (step, lrs, loss) in the window above the line: where the divergence shows first."""
        line = self.line()
        return next(entry for entry in self.recent if entry[2] > line)

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss, "recent": [[step, list(lrs), loss] for step, lrs, loss in self.recent]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_loss = state["first_loss"]
        self.recent = deque(((int(step), list(lrs), float(loss)) for step, lrs, loss in state["recent"]),
                            maxlen=self.window)
