"""Stage timing hooks: the codec reports where its time goes without a copy of its pipeline.

``Codec.encode``, ``Codec.decompress`` and friends take ``timer``: any callable that maps a
stage name to a context manager. ``StageTimer`` is the one the bench uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

Timer = Callable[[str], AbstractContextManager]

#: The stages the codec reports, in pipeline order.
ANALYSIS, QUANTIZATION, PRIOR, ENTROPY_CODING, SYNTHESIS, ENHANCEMENT, RESTORATION = (
    "analysis",
    "quantization",
    "prior",
    "entropy coding",
    "synthesis",
    "enhancement",
    "restoration",
)


def no_timer(stage: str) -> AbstractContextManager:
    """The default timer: measures nothing."""
    return nullcontext()


class StageTimer:
    """Wall-clock seconds per stage, summed over calls (and over the threads that run windows of
    an image side by side, and the processes that decode maps side by side: ``merge``); waits
    for the GPU at each boundary."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed

    def merge(self, seconds: dict[str, float]) -> None:
        """Add seconds measured elsewhere (by another process's ``StageTimer``)."""
        with self._lock:
            for stage, elapsed in seconds.items():
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed


def merge(timer: Timer, seconds: dict[str, float]) -> None:
    """Add another process's ``StageTimer.seconds`` to ``timer`` where it is a ``StageTimer``."""
    if isinstance(timer, StageTimer):
        timer.merge(seconds)


def child_timer(timer: Timer) -> Timer:
    """What a forked process times with for ``timer``: its own ``StageTimer`` where ``timer`` is
    one (its seconds go back to the parent for ``merge``), else ``timer`` itself."""
    return StageTimer(timer.device) if isinstance(timer, StageTimer) else timer
