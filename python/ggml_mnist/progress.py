"""Training progress on stderr: a live bar with loss, accuracy and ETA, or one line per epoch."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class ProgressBar:
    """Draws ``epoch 3/20 [=====>    ] 312/600 loss 0.1234 acc 96.51% ETA 4s`` on a terminal.

    On a non-terminal stream only the end-of-epoch summary lines are written.
    """

    def __init__(self, epochs: int, stream: Optional[TextIO] = None, width: int = 24) -> None:
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._epoch = 0
        self._t0 = 0.0
        self._last_draw = 0.0

    def start_epoch(self, epoch: int) -> None:
        """Note the start of 1-based ``epoch``."""
        self._epoch = epoch
        self._t0 = time.perf_counter()
        self._last_draw = 0.0

    def update(self, ibatch: int, nbatch: int, loss: float, acc: float) -> None:
        """Redraw the bar after batch ``ibatch`` of ``nbatch`` (at most 10 times a second)."""
        if not self.live:
            return
        now = time.perf_counter()
        if ibatch < nbatch and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        elapsed = now - self._t0
        eta = elapsed / ibatch * (nbatch - ibatch) if ibatch else 0.0
        filled = int(self.width * ibatch / max(nbatch, 1))
        bar = "=" * filled + (">" if filled < self.width else "") + " " * max(self.width - filled - 1, 0)
        self.stream.write(
            f"\repoch {self._epoch}/{self.epochs} [{bar}] {ibatch}/{nbatch} "
            f"loss {loss:.4f} acc {100 * acc:6.2f}% ETA {eta:4.0f}s "
        )
        self.stream.flush()

    def end_epoch(self, summary: str) -> None:
        """Replace the bar with the epoch's summary line."""
        prefix = "\r\033[K" if self.live else ""
        self.stream.write(f"{prefix}{summary}\n")
        self.stream.flush()
