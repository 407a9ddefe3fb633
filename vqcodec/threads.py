"""torch's CPU thread count: set for the process, or lowered to one for a block of work and restored
after it. The one place that sets it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Within the block, torch runs on one CPU thread (process-wide); the caller's count after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def use_threads(threads: int) -> None:
    """torch's CPU threads for this process (the priors' products and the VQ-VAE's windows)."""
    torch.set_num_threads(threads)
